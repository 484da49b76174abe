import { describe, expect, it } from "vitest";
import {
  classify,
  Endpoint,
  ipFromBytes,
  parseHostPort,
  parseIp,
  unmapIpv4,
  type IpCategory,
} from "../../src/network/endpoint.js";

describe("parseIp", () => {
  it.each([
    ["0.0.0.0", 4, "0.0.0.0"],
    ["1.2.3.4", 4, "1.2.3.4"],
    ["255.255.255.255", 4, "255.255.255.255"],
    ["::", 6, "::"],
    ["::1", 6, "::1"],
    ["1::", 6, "1::"],
    ["0:0:0:0:0:0:0:1", 6, "::1"],
    ["2001:DB8::1", 6, "2001:db8::1"],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", 6, "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", 6, "2001:db8::1:0:0:1"], // first of equal runs
    ["2001:db8:0:1:0:0:0:1", 6, "2001:db8:0:1::1"], // longest run
    ["2001:db8:0:1:1:1:1:1", 6, "2001:db8:0:1:1:1:1:1"], // single zero group not compressed
    ["2001:db8::1:1:1:1:1", 6, "2001:db8:0:1:1:1:1:1"],
    ["1:2:3:4:5:6:7::", 6, "1:2:3:4:5:6:7:0"], // "::" may stand for one group
    ["::2:3:4:5:6:7:8", 6, "0:2:3:4:5:6:7:8"],
    ["fe80::abcd:ef01", 6, "fe80::abcd:ef01"],
    ["::ffff:1.2.3.4", 6, "::ffff:1.2.3.4"],
    ["::FFFF:0102:0304", 6, "::ffff:1.2.3.4"],
    ["0:0:0:0:0:ffff:7f00:1", 6, "::ffff:127.0.0.1"],
    ["::1.2.3.4", 6, "::102:304"], // IPv4-compatible: only mapped uses mixed notation
    ["64:ff9b::192.0.2.33", 6, "64:ff9b::c000:221"],
    ["1:2:3:4:5:6:1.2.3.4", 6, "1:2:3:4:5:6:102:304"],
    ["ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ])("parses %s", (text, family, canonical) => {
    const ip = parseIp(text)!;
    expect(ip).toBeDefined();
    expect(ip.family).toBe(family);
    expect(ip.bytes.length).toBe(family === 4 ? 4 : 16);
    expect(ip.text).toBe(canonical);
    expect(parseIp(ip.text)!.bytes).toEqual(ip.bytes); // canonical text round-trips
  });

  it("returns bytes in network order", () => {
    expect(Array.from(parseIp("192.0.2.1")!.bytes)).toEqual([192, 0, 2, 1]);
    expect(Array.from(parseIp("2001:db8::ff")!.bytes)).toEqual([0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 0xff]);
  });

  // inet_aton shorthands must not parse: a policy saying "127.1" fails loudly rather
  // than meaning 127.0.0.1. Guest flows are classified from binary wire addresses,
  // so no spelling can move a real destination out of its class either way.
  it.each([
    "",
    "127.1",
    "127.0.1",
    "0x7f.1",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "01.2.3.4",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "1.2.3.256",
    "1.2.3.4.5",
    "1.2.3.",
    ".1.2.3",
    "1..2.3",
    "1.2.3.-4",
    "1.2.3.+4",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.4\n",
    "١.٢.٣.٤", // Arabic-Indic digits
    "１.2.3.4", // full-width digit
    "localhost",
    "example.com",
    ":::",
    ":",
    "::1::",
    "1::2::3",
    ":1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "12345::",
    "g::1",
    "fe80::1%eth0",
    "fe80::1%25eth0",
    "[::1]",
    "::ffff:1.2.3",
    "::ffff:1.2.3.256",
    "::ffff:01.2.3.4",
    "1.2.3.4::",
    "::1.2.3.4:5",
    "1:2:3:4:5:6:7:1.2.3.4",
    "::ffff:0x7f.1",
    "0".repeat(46),
  ])("rejects %j", (text) => {
    expect(parseIp(text)).toBeUndefined();
  });

  it("rejects non-strings without throwing", () => {
    expect(parseIp(undefined as never)).toBeUndefined();
    expect(parseIp(0x7f000001 as never)).toBeUndefined();
  });
});

describe("ipFromBytes and unmapIpv4", () => {
  it("wraps wire addresses and copies them", () => {
    const raw = new Uint8Array([127, 0, 0, 1]);
    const ip = ipFromBytes(raw);
    raw[0] = 8;
    expect(ip.text).toBe("127.0.0.1");
    const v6 = ipFromBytes(new Uint8Array([0xfe, 0x80, ...Array(13).fill(0), 1]));
    expect(v6).toMatchObject({ family: 6, text: "fe80::1" });
    expect(() => ipFromBytes(new Uint8Array(5))).toThrow(TypeError);
  });

  it("unmaps only IPv4-mapped addresses", () => {
    expect(unmapIpv4(parseIp("::ffff:10.1.2.3")!).text).toBe("10.1.2.3");
    expect(unmapIpv4(parseIp("::10.1.2.3")!).text).toBe("::a01:203");
    expect(unmapIpv4(parseIp("64:ff9b::10.1.2.3")!).text).toBe("64:ff9b::a01:203");
    expect(unmapIpv4(parseIp("10.1.2.3")!).text).toBe("10.1.2.3");
  });
});

describe("parseHostPort", () => {
  it.each([
    ["203.0.113.10:5432", "203.0.113.10", 5432],
    ["[2001:db8::1]:443", "2001:db8::1", 443],
    ["[2001:DB8:0::1]:1", "2001:db8::1", 1],
    ["[::ffff:198.51.100.7]:65535", "::ffff:198.51.100.7", 65535],
  ])("parses %s", (text, ip, port) => {
    const hp = parseHostPort(text)!;
    expect(hp.ip.text).toBe(ip);
    expect(hp.port).toBe(port);
  });

  it.each([
    "203.0.113.10",
    "203.0.113.10:",
    "203.0.113.10:0",
    "203.0.113.10:65536",
    "203.0.113.10:0443",
    "203.0.113.10:44a",
    "203.0.113.10:+443",
    "203.0.113.10: 443",
    "2001:db8::1:443", // IPv6 needs brackets
    "[2001:db8::1]",
    "[2001:db8::1]443",
    "[2001:db8::1:443",
    "[203.0.113.10]:443", // brackets are for IPv6 only
    "[fe80::1%eth0]:443",
    "example.com:443",
    "127.1:80",
    ":443",
  ])("rejects %j", (text) => {
    expect(parseHostPort(text)).toBeUndefined();
  });
});

type Predicate =
  | "isLoopback"
  | "isPrivate"
  | "isLinkLocal"
  | "isMulticast"
  | "isBroadcast"
  | "isDocumentation"
  | "isReserved"
  | "isPublicInternet";

const PREDICATE: Record<IpCategory, Predicate> = {
  unspecified: "isReserved",
  loopback: "isLoopback",
  private: "isPrivate",
  "link-local": "isLinkLocal",
  multicast: "isMulticast",
  broadcast: "isBroadcast",
  documentation: "isDocumentation",
  reserved: "isReserved",
  public: "isPublicInternet",
};
const PREDICATES = [...new Set(Object.values(PREDICATE))];

// [address, category, protected]
const CASES: [string, IpCategory, boolean][] = [
  // IPv4
  ["0.0.0.0", "unspecified", true],
  ["0.1.2.3", "reserved", true],
  ["0.255.255.255", "reserved", true],
  ["1.1.1.1", "public", false],
  ["8.8.8.8", "public", false],
  ["9.255.255.255", "public", false],
  ["10.0.0.0", "private", true],
  ["10.255.255.255", "private", true],
  ["11.0.0.0", "public", false],
  ["100.63.255.255", "public", false],
  ["100.64.0.0", "private", true],
  ["100.127.255.255", "private", true],
  ["100.128.0.0", "public", false],
  ["126.255.255.255", "public", false],
  ["127.0.0.1", "loopback", true],
  ["127.255.255.254", "loopback", true],
  ["128.0.0.0", "public", false],
  ["169.253.255.255", "public", false],
  ["169.254.0.1", "link-local", true],
  ["169.254.169.254", "link-local", true],
  ["169.255.0.0", "public", false],
  ["172.15.255.255", "public", false],
  ["172.16.0.0", "private", true],
  ["172.31.255.255", "private", true],
  ["172.32.0.0", "public", false],
  ["192.0.0.1", "reserved", false],
  ["192.0.0.8", "reserved", false],
  ["192.0.0.9", "public", false],
  ["192.0.0.10", "public", false],
  ["192.0.0.170", "reserved", false],
  ["192.0.1.0", "public", false],
  ["192.0.2.0", "documentation", false],
  ["192.0.2.255", "documentation", false],
  ["192.88.99.1", "reserved", false],
  ["192.167.255.255", "public", false],
  ["192.168.0.1", "private", true],
  ["192.168.255.255", "private", true],
  ["192.169.0.0", "public", false],
  ["198.17.255.255", "public", false],
  ["198.18.0.1", "reserved", false],
  ["198.19.255.255", "reserved", false],
  ["198.20.0.0", "public", false],
  ["198.51.100.7", "documentation", false],
  ["203.0.113.10", "documentation", false],
  ["203.0.114.0", "public", false],
  ["223.255.255.255", "public", false],
  ["224.0.0.1", "multicast", true],
  ["239.255.255.250", "multicast", true],
  ["240.0.0.1", "reserved", false],
  ["255.255.255.254", "reserved", false],
  ["255.255.255.255", "broadcast", true],
  // IPv6
  ["::", "unspecified", true],
  ["::1", "loopback", true],
  ["::2", "reserved", true], // IPv4-compatible 0.0.0.2
  ["100::1", "reserved", false],
  ["100::1:0:0:0:0", "reserved", false], // outside 100::/64 but still not global unicast
  ["2001::1", "reserved", false], // Teredo
  ["2001:1::1", "public", false],
  ["2001:1::2", "public", false],
  ["2001:1::4", "reserved", false],
  ["2001:2::1", "reserved", false], // benchmarking
  ["2001:3::1", "public", false],
  ["2001:4:112::1", "public", false],
  ["2001:10::1", "reserved", false], // deprecated ORCHID
  ["2001:20::1", "public", false],
  ["2001:1ff::1", "reserved", false],
  ["2001:200::1", "public", false],
  ["2001:db8::1", "documentation", false],
  ["2001:db9::1", "public", false],
  ["2001:4860:4860::8888", "public", false],
  ["2606:4700:4700::1111", "public", false],
  ["3fff::1", "documentation", false],
  ["3fff:fff:ffff::1", "documentation", false],
  ["3fff:1000::1", "public", false],
  ["4000::1", "reserved", false],
  ["5f00::1", "reserved", false],
  ["fbff::1", "reserved", false],
  ["fc00::1", "private", true],
  ["fd12:3456::1", "private", true],
  ["fe80::1", "link-local", true],
  ["febf:ffff::1", "link-local", true],
  ["fec0::1", "reserved", true],
  ["ff02::1", "multicast", true],
  ["ff0e::101", "multicast", true],
  ["64:ff9b:1::1", "reserved", true],
  // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 take the embedded address's class.
  ["::ffff:0.0.0.0", "unspecified", true],
  ["::ffff:127.0.0.1", "loopback", true],
  ["::ffff:7f00:1", "loopback", true],
  ["::ffff:10.0.0.1", "private", true],
  ["::ffff:100.64.0.1", "private", true],
  ["::ffff:172.16.0.1", "private", true],
  ["::ffff:192.168.1.1", "private", true],
  ["::ffff:169.254.169.254", "link-local", true],
  ["::ffff:224.0.0.1", "multicast", true],
  ["::ffff:255.255.255.255", "broadcast", true],
  ["::ffff:203.0.113.10", "documentation", false],
  ["::ffff:240.0.0.1", "reserved", false],
  ["::ffff:8.8.8.8", "public", false],
  ["::127.0.0.1", "loopback", true],
  ["::10.0.0.1", "private", true],
  ["::8.8.8.8", "public", false],
  ["64:ff9b::127.0.0.1", "loopback", true],
  ["64:ff9b::169.254.169.254", "link-local", true],
  ["64:ff9b::192.168.0.1", "private", true],
  ["64:ff9b::8.8.8.8", "public", false],
  ["2002:7f00:1::1", "loopback", true],
  ["2002:a9fe:a9fe::", "link-local", true],
  ["2002:c000:0201::1", "documentation", false],
  ["2002:808:808::1", "public", false],
  ["::ffff:0:7f00:1", "reserved", false], // SIIT (not embedded by us): unassigned ::/8 space
];

describe("classification", () => {
  it.each(CASES)("%s is %s (protected: %s)", (ip, category, isProtected) => {
    expect(classify(ip)).toBe(category);
    const ep = new Endpoint(ip, 443);
    expect(ep.category).toBe(category);
    expect(ep.isProtected()).toBe(isProtected);
    // Exactly one predicate holds, the one for its category.
    for (const p of PREDICATES) expect([p, ep[p]()]).toEqual([p, p === PREDICATE[category]]);
  });

  it("classifies wire bytes the same as text", () => {
    for (const [ip, category] of CASES) {
      const bytes = parseIp(ip)!.bytes;
      expect(classify(bytes)).toBe(category);
      expect(new Endpoint(bytes, 1).category).toBe(category);
    }
  });

  it("rejects malformed addresses instead of guessing", () => {
    expect(() => classify("127.1")).toThrow(TypeError);
    expect(() => classify("2130706433")).toThrow(/not an IP address/);
    expect(() => new Endpoint("0x7f.1", 80)).toThrow(TypeError);
  });
});

describe("Endpoint", () => {
  it("exposes canonical ip, port and family", () => {
    const ep = new Endpoint("2001:DB8:0:0::1", 8080);
    expect([ep.ip, ep.port, ep.family]).toEqual(["2001:db8::1", 8080, 6]);
    expect(String(ep)).toBe("[2001:db8::1]:8080");
    expect(String(new Endpoint("203.0.113.10", 5432))).toBe("203.0.113.10:5432");
    // Mapped addresses keep their wire spelling; only the class follows the IPv4 address.
    expect(new Endpoint("::ffff:127.0.0.1", 1).ip).toBe("::ffff:127.0.0.1");
    expect(new Endpoint(parseHostPort("[::1]:22")!.ip, 22).isLoopback()).toBe(true);
  });

  it.each([-1, 65536, 1.5, NaN])("rejects port %s", (port) => {
    expect(() => new Endpoint("203.0.113.10", port)).toThrow(RangeError);
  });

  it("accepts port 0 (a source port on the wire can be anything)", () => {
    expect(new Endpoint("203.0.113.10", 0).port).toBe(0);
  });
});
