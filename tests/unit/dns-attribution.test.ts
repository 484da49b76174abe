import { describe, expect, it } from "vitest";
import { DnsAttribution, normalizeHostname, type DnsAttributionOptions } from "../../src/network/dns-attribution.js";

const MIN = 60_000;
const S = 1000;

function setup(opts: DnsAttributionOptions = {}) {
  const clock = { t: 1_000_000 };
  const cache = new DnsAttribution({ now: () => clock.t, ...opts });
  return { clock, cache };
}

describe("DnsAttribution: recording and lookup", () => {
  it("attributes accepted answers to the queried name", () => {
    const { cache } = setup();
    cache.record("api.example.com", [
      { ip: "203.0.113.10", ttlSeconds: 300 },
      { ip: "2001:db8::10", ttlSeconds: 300 },
    ]);
    expect(cache.hostnamesFor("203.0.113.10")).toEqual(["api.example.com"]);
    expect(cache.hostnamesFor("2001:db8::10")).toEqual(["api.example.com"]);
    expect(cache.hostnamesFor("203.0.113.11")).toEqual([]);
    expect(cache.size).toBe(2);
  });

  it("collects every name sharing an address, sorted and deduplicated", () => {
    const { cache } = setup();
    cache.record("b.example.com", [{ ip: "203.0.113.10", ttlSeconds: 60 }]);
    cache.record("a.example.com", [{ ip: "203.0.113.10", ttlSeconds: 60 }]);
    cache.record("B.EXAMPLE.COM.", [{ ip: "203.0.113.10", ttlSeconds: 60 }]);
    expect(cache.hostnamesFor("203.0.113.10")).toEqual(["a.example.com", "b.example.com"]);
    expect(cache.size).toBe(2);
  });

  it("attributes CNAME chains: the queried name and each alias", () => {
    const { cache } = setup();
    cache.record("api.github.com", [{ ip: "198.51.100.7", ttlSeconds: 60 }], ["github.map.fastly.net.", "API.GITHUB.COM"]);
    expect(cache.hostnamesFor("198.51.100.7")).toEqual(["api.github.com", "github.map.fastly.net"]);
    expect(cache.size).toBe(2);
  });

  it("normalises addresses: any spelling finds the entry", () => {
    const { cache } = setup();
    cache.record("v6.example.com", [{ ip: "2001:0DB8:0:0:0:0:0:1", ttlSeconds: 60 }]);
    expect(cache.hostnamesFor("2001:db8::1")).toEqual(["v6.example.com"]);
    expect(cache.hostnamesFor("2001:DB8::0:1")).toEqual(["v6.example.com"]);
  });

  it("folds IPv4-mapped addresses into IPv4 (the wire shows IPv4), but not NAT64", () => {
    const { cache } = setup();
    cache.record("mapped.example.com", [{ ip: "::ffff:203.0.113.5", ttlSeconds: 60 }]);
    cache.record("plain.example.com", [{ ip: "203.0.113.5", ttlSeconds: 60 }]);
    cache.record("nat64.example.com", [{ ip: "64:ff9b::203.0.113.5", ttlSeconds: 60 }]);
    const both = ["mapped.example.com", "plain.example.com"];
    expect(cache.hostnamesFor("203.0.113.5")).toEqual(both);
    expect(cache.hostnamesFor("::ffff:203.0.113.5")).toEqual(both);
    expect(cache.hostnamesFor("::ffff:cb00:7105")).toEqual(both);
    expect(cache.hostnamesFor("64:ff9b::cb00:7105")).toEqual(["nat64.example.com"]);
    expect(cache.hostnamesFor("::203.0.113.5")).toEqual([]); // IPv4-compatible is a different address
  });

  it("returns [] for malformed lookups instead of throwing", () => {
    const { cache } = setup();
    cache.record("x.example.com", [{ ip: "127.0.0.1", ttlSeconds: 60 }]);
    for (const bad of ["127.1", "2130706433", "0x7f.1", "", "x.example.com", undefined as never]) {
      expect(cache.hostnamesFor(bad)).toEqual([]);
    }
  });

  it("clear() forgets everything", () => {
    const { cache } = setup();
    cache.record("x.example.com", [{ ip: "203.0.113.1", ttlSeconds: 60 }]);
    cache.clear();
    expect(cache.size).toBe(0);
    expect(cache.hostnamesFor("203.0.113.1")).toEqual([]);
  });
});

describe("DnsAttribution: validation", () => {
  it.each([
    ["127.1"],
    ["2130706433"],
    ["0x7f.1"],
    ["fe80::1%eth0"],
    ["[::1]"],
    ["example.com"],
  ])("rejects answer address %j", (ip) => {
    const { cache } = setup();
    expect(() => cache.record("x.example.com", [{ ip, ttlSeconds: 60 }])).toThrow(TypeError);
  });

  it.each([-1, NaN, Infinity, "60" as never])("rejects TTL %j", (ttlSeconds) => {
    const { cache } = setup();
    expect(() => cache.record("x.example.com", [{ ip: "203.0.113.1", ttlSeconds }])).toThrow(TypeError);
  });

  it("validates the whole answer before storing any of it", () => {
    const { cache } = setup();
    expect(() =>
      cache.record("x.example.com", [
        { ip: "203.0.113.1", ttlSeconds: 60 },
        { ip: "nope", ttlSeconds: 60 },
      ]),
    ).toThrow(TypeError);
    expect(() => cache.record("x.example.com", [{ ip: "203.0.113.1", ttlSeconds: 60 }], ["bad name"])).toThrow(TypeError);
    expect(cache.size).toBe(0);
  });

  it.each([
    [{ minRetentionMs: -1 }],
    [{ maxRetentionMs: 1.5 }],
    [{ maxEntries: 0 }],
    [{ minRetentionMs: 10, maxRetentionMs: 5 }],
  ])("rejects options %j", (opts) => {
    expect(() => new DnsAttribution(opts)).toThrow(RangeError);
  });
});

describe("normalizeHostname", () => {
  it.each([
    ["Example.COM", "example.com"],
    ["example.com.", "example.com"],
    ["localhost", "localhost"],
    ["_dmarc.example.com", "_dmarc.example.com"],
    ["xn--bcher-kva.example", "xn--bcher-kva.example"],
    [`${"a".repeat(63)}.com`, `${"a".repeat(63)}.com`],
    [Array(4).fill("a".repeat(62)).join(".") + ".", Array(4).fill("a".repeat(62)).join(".")], // 251 chars
  ])("%s -> %s", (input, out) => {
    expect(normalizeHostname(input)).toBe(out);
  });

  it.each([
    "",
    ".",
    "example.com..",
    ".example.com",
    "a..b",
    "a b.com",
    "exa*mple.com",
    "\u212Aexample.com", // Kelvin sign lower-cases to ASCII "k": must be rejected, not folded
    "bücher.example",
    `${"a".repeat(64)}.com`,
    Array(5).fill("a".repeat(50)).join("."), // 254 chars
    "example.com\0",
  ])("rejects %j", (name) => {
    expect(() => normalizeHostname(name)).toThrow(TypeError);
  });
});

describe("DnsAttribution: retention", () => {
  it("keeps short-TTL answers for minRetention, long ones for their TTL", () => {
    const { clock, cache } = setup({ minRetentionMs: MIN, maxRetentionMs: 3_600 * S });
    cache.record("short.example.com", [{ ip: "203.0.113.1", ttlSeconds: 5 }]);
    cache.record("zero.example.com", [{ ip: "203.0.113.2", ttlSeconds: 0 }]);
    cache.record("long.example.com", [{ ip: "203.0.113.3", ttlSeconds: 600 }]);
    clock.t += MIN - 1;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["short.example.com"]);
    expect(cache.hostnamesFor("203.0.113.2")).toEqual(["zero.example.com"]);
    clock.t += 1;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual([]);
    expect(cache.hostnamesFor("203.0.113.2")).toEqual([]);
    expect(cache.hostnamesFor("203.0.113.3")).toEqual(["long.example.com"]);
    clock.t += 600 * S - MIN - 1;
    expect(cache.hostnamesFor("203.0.113.3")).toEqual(["long.example.com"]);
    clock.t += 1;
    expect(cache.hostnamesFor("203.0.113.3")).toEqual([]);
    expect(cache.size).toBe(0);
  });

  it("caps long TTLs at maxRetention", () => {
    const { clock, cache } = setup({ minRetentionMs: MIN, maxRetentionMs: 3_600 * S });
    cache.record("week.example.com", [{ ip: "203.0.113.1", ttlSeconds: 7 * 86_400 }]);
    clock.t += 3_600 * S - 1;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["week.example.com"]);
    clock.t += 1;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual([]);
  });

  it("treats a TTL with the top bit set as zero (RFC 2181)", () => {
    const { clock, cache } = setup({ minRetentionMs: MIN, maxRetentionMs: 3_600 * S });
    cache.record("odd.example.com", [{ ip: "203.0.113.1", ttlSeconds: 0x80000000 }]);
    clock.t += MIN;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual([]);
  });

  it("uses 5 min / 1 h defaults", () => {
    const { clock, cache } = setup();
    cache.record("a.example.com", [{ ip: "203.0.113.1", ttlSeconds: 1 }]);
    cache.record("b.example.com", [{ ip: "203.0.113.2", ttlSeconds: 86_400 }]);
    clock.t += 5 * 60 * S - 1;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["a.example.com"]);
    clock.t += 1;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual([]);
    clock.t += 55 * 60 * S - 1;
    expect(cache.hostnamesFor("203.0.113.2")).toEqual(["b.example.com"]);
    clock.t += 1;
    expect(cache.hostnamesFor("203.0.113.2")).toEqual([]);
  });

  it("a repeated answer extends but never shortens attribution", () => {
    const { clock, cache } = setup({ minRetentionMs: MIN, maxRetentionMs: 3_600 * S });
    cache.record("x.example.com", [{ ip: "203.0.113.1", ttlSeconds: 600 }]);
    clock.t += 100 * S;
    cache.record("x.example.com", [{ ip: "203.0.113.1", ttlSeconds: 0 }]); // would expire at +160 s
    clock.t += 400 * S;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["x.example.com"]); // +500 s: original still holds
    cache.record("x.example.com", [{ ip: "203.0.113.1", ttlSeconds: 600 }]); // now until +1100 s
    clock.t += 599 * S;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["x.example.com"]);
    clock.t += S;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual([]);
  });

  it("expires names for one address independently", () => {
    const { clock, cache } = setup({ minRetentionMs: MIN, maxRetentionMs: 3_600 * S });
    cache.record("short.example.com", [{ ip: "203.0.113.1", ttlSeconds: 0 }]);
    cache.record("long.example.com", [{ ip: "203.0.113.1", ttlSeconds: 600 }]);
    clock.t += MIN;
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["long.example.com"]);
    expect(cache.size).toBe(1);
  });
});

describe("DnsAttribution: LRU bound", () => {
  it("evicts the least recently used pair when full", () => {
    const { cache } = setup({ maxEntries: 3 });
    cache.record("a.example.com", [{ ip: "203.0.113.1", ttlSeconds: 60 }]);
    cache.record("b.example.com", [{ ip: "203.0.113.2", ttlSeconds: 60 }]);
    cache.record("c.example.com", [{ ip: "203.0.113.3", ttlSeconds: 60 }]);
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["a.example.com"]); // a is now most recent
    cache.record("d.example.com", [{ ip: "203.0.113.4", ttlSeconds: 60 }]);
    expect(cache.size).toBe(3);
    expect(cache.hostnamesFor("203.0.113.2")).toEqual([]); // b was least recently used
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["a.example.com"]);
    expect(cache.hostnamesFor("203.0.113.3")).toEqual(["c.example.com"]);
    expect(cache.hostnamesFor("203.0.113.4")).toEqual(["d.example.com"]);
  });

  it("re-recording refreshes recency", () => {
    const { cache } = setup({ maxEntries: 2 });
    cache.record("a.example.com", [{ ip: "203.0.113.1", ttlSeconds: 60 }]);
    cache.record("b.example.com", [{ ip: "203.0.113.2", ttlSeconds: 60 }]);
    cache.record("a.example.com", [{ ip: "203.0.113.1", ttlSeconds: 60 }]);
    cache.record("c.example.com", [{ ip: "203.0.113.3", ttlSeconds: 60 }]);
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["a.example.com"]);
    expect(cache.hostnamesFor("203.0.113.2")).toEqual([]);
  });

  it("drops expired pairs before evicting live ones", () => {
    const { clock, cache } = setup({ maxEntries: 2, minRetentionMs: MIN, maxRetentionMs: 3_600 * S });
    cache.record("live.example.com", [{ ip: "203.0.113.1", ttlSeconds: 600 }]);
    cache.record("dying.example.com", [{ ip: "203.0.113.2", ttlSeconds: 0 }]);
    clock.t += MIN;
    cache.record("new.example.com", [{ ip: "203.0.113.3", ttlSeconds: 600 }]);
    expect(cache.hostnamesFor("203.0.113.1")).toEqual(["live.example.com"]);
    expect(cache.hostnamesFor("203.0.113.3")).toEqual(["new.example.com"]);
  });

  it("bounds pairs, not addresses: one address cannot collect unbounded names", () => {
    const { cache } = setup({ maxEntries: 100 });
    for (let i = 0; i < 1000; i++) cache.record(`r${i}.wildcard.example`, [{ ip: "203.0.113.9", ttlSeconds: 60 }]);
    expect(cache.size).toBe(100);
    const names = cache.hostnamesFor("203.0.113.9");
    expect(names).toHaveLength(100);
    expect(names).toContain("r999.wildcard.example");
    expect(names).not.toContain("r899.wildcard.example");
  });

  it("stays bounded under a flood of distinct answers", () => {
    const { cache } = setup({ maxEntries: 64 });
    for (let i = 0; i < 5000; i++) {
      cache.record(`h${i}.example.com`, [{ ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, ttlSeconds: 60 }]);
    }
    expect(cache.size).toBe(64);
    expect(cache.hostnamesFor("10.0.19.135")).toEqual(["h4999.example.com"]);
    expect(cache.hostnamesFor("10.0.0.0")).toEqual([]);
  });
});
