/**
 * The network end to end, inside network namespaces this test creates: the
 * lane's Node process runs in a "host" namespace, the DNS/TCP/UDP/HTTP servers
 * in an "internet" namespace on documentation addresses, routed over a veth.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADDR, createNetns, INTERNET, type Netns } from "./netns.js";

let ns: Netns;
let dnsLog: string[];

async function runScenario(name: string): Promise<any> {
  const { child, lines } = await ns.startNode(ns.host, "net-lane.mjs", [name], (l) => l.startsWith("{"));
  child.kill();
  return JSON.parse(lines.find((l) => l.startsWith("{"))!);
}

const queried = (name: string) => dnsLog.map((l) => JSON.parse(l)).filter((e) => e.dns === name);

describe("network policy, end to end in network namespaces", () => {
  beforeAll(async () => {
    ns = createNetns();
    const inet = await ns.startNode(ns.inet, "net-internet.mjs", [JSON.stringify(INTERNET)], (l) => l.includes('"ready"'));
    dnsLog = inet.lines; // keeps filling as the server logs queries
  });
  afterAll(() => ns?.cleanup());

  it("allows granted flows, denies the rest with RST / REFUSED, and reports policy failures", async () => {
    const r = await runScenario("policy");
    const p = r.probe;
    // Granted: DNS through the policy's resolver, TCP and UDP echo.
    expect(p.resolve_allowed).toEqual(["203.0.113.10"]);
    expect(p.dns_tcp_allowed).toEqual({ rcode: 0, answers: 1 });
    expect(p.tcp_allowed).toBe("ping-tcp_allowed");
    expect(p.udp_allowed).toBe("ping-udp_allowed");
    // The guest's choice of resolver does not matter: the policy's resolver answered.
    expect(p.dns_own_resolver).toEqual({ rcode: 0, answers: 1 });
    expect(queried("udp.test").length).toBeGreaterThan(0);
    // Denied names are REFUSED and never leave the host.
    expect(p.dns_denied).toEqual({ rcode: 5, answers: 0 });
    expect(p.dns_tcp_denied).toEqual({ rcode: 5, answers: 0 });
    expect(queried("denied.test")).toEqual([]);
    // Literal forms reach the same destination and are classified by it.
    expect(p.tcp_decimal).toBe("ping-tcp_decimal");
    expect(p.tcp_hex).toBe("ping-tcp_hex");
    expect(p.tcp_mapped).toBe("ping-tcp_mapped");
    // Not granted, throwing, hanging: an immediate RST (ECONNREFUSED), never a hang.
    expect(p.tcp_other_port).toBe("refused");
    expect(p.tcp_throwing).toBe("refused");
    expect(p.tcp_hanging).toBe("refused");
    expect(p.udp_other_port).toBe("timeout");
    // Private ranges, the gateway and the host's own address: denied before the callback, whatever it grants.
    for (const k of ["tcp_private", "tcp_private_hex", "tcp_private_mapped", "tcp_gateway", "tcp_host_addr"]) {
      expect([k, p[k]]).toEqual([k, "refused"]);
    }
    expect(r.classified.map((c: any) => c.ip)).not.toContain("10.99.0.1");
    expect(r.classified.find((c: any) => c.ip === "203.0.113.10" && c.port === 8)).toMatchObject({ doc: true, pub: false, priv: false });
    // IPv6: a v6 literal is a policy question like any other (asked with the v6 endpoint, not granted: RST).
    expect(p.tcp_ipv6).toBe("refused");
    expect(r.classified.find((c: any) => c.ip === "2001:db8::1" && c.port === 7)).toMatchObject({ doc: true, pub: false, priv: false });
    // ... and granted, it is spliced over a real IPv6 socket to the v6 echo server.
    expect(p.tcp6_allowed).toBe("ping-tcp6_allowed");
    // Protected IPv6 forms (ULA, NAT64 and 6to4 of a private v4, the stack's v6 gateway, the host's own v6
    // address, v4-mapped private): refused before the policy, the callback never saw them.
    for (const k of ["tcp6_ula", "tcp6_nat64_private", "tcp6_6to4_private", "tcp6_gateway", "tcp6_host_addr", "tcp6_loopback"]) {
      expect([k, p[k]]).toEqual([k, "refused"]);
    }
    const asked = r.classified.map((c: any) => c.ip);
    for (const ip of ["fd00::1", "64:ff9b::a63:1", "2002:a63:1::", "fd53:5342::2", "2001:db8:ffff::1", "::1", "10.99.0.1"]) expect(asked).not.toContain(ip);
    for (const dst of ["[fd00::1]:7", "[64:ff9b::a63:1]:7", "[2002:a63:1::]:7"]) {
      expect([dst, r.events.some((e: any) => e.type === "stack" && e.kind === "protected" && e.dst === dst)]).toEqual([dst, true]);
    }
    // A name with only an AAAA record: attributed from the answer, reached over IPv6 (the server saw a v6 client).
    expect(r.http.v6only).toMatch(/^hello from 2001:db8::20:80 host=v6only\.test/);
    const v6Requests = dnsLog.map((l) => JSON.parse(l)).filter((e) => e.http === "v6only.test");
    expect(v6Requests.length).toBeGreaterThan(0);
    expect(v6Requests.every((e) => e.family === "IPv6" && e.from === ADDR.hostSide6)).toBe(true);
    expect(r.classified.find((c: any) => c.ip === "2001:db8::20" && c.port === 80)?.hostnames).toContain("v6only.test");
    // HTTP by trusted hostname: the DNS answer attributes the address; a Host header does not.
    expect(r.http.allowed).toMatch(/^hello from 203\.0\.113\.10:80/);
    expect(r.http.other).toBe("failed");
    expect(r.http.forgedHost).toBe("failed");
    expect(r.classified.find((c: any) => c.ip === "203.0.113.10" && c.port === 80)?.hostnames).toContain("allowed.test");
    // Failures reach the audit hook.
    const kinds = r.events.map((e: any) => e.type);
    expect(r.events.find((e: any) => e.type === "policy-error")?.message).toMatch(/exploded on purpose/);
    expect(kinds).toContain("policy-timeout");
    expect(r.events.some((e: any) => e.type === "stack" && e.kind === "protected" && e.dst === "10.99.0.1:7")).toBe(true);
    expect(r.events.some((e: any) => e.type === "decision" && e.protocol === "dns" && e.verdict === "deny" && e.dns?.name === "denied.test")).toBe(true);
  });

  it("keeps the host unreachable: allowProtected covering its address, an address added after boot, DNS to it", async () => {
    const r = await runScenario("host");
    expect(r.probe.tcp_host_addr).toBe("refused");
    expect(r.probe.tcp_new_addr).toBe("refused");
    expect(r.probe.dns_host_addr).toEqual({ rcode: 5, answers: 0 });
    // Nothing on the host heard from the guest.
    expect(r.hostLog).toEqual([]);
    // allowProtected does open the rest of the range (not the host): refused there only by the absent listener, after the policy.
    expect(r.events.some((e: any) => e.type === "decision" && e.dst === "10.77.0.2:7" && e.verdict === "accept")).toBe(true);
    for (const dst of ["198.51.100.1:7", "10.77.0.1:7"]) {
      expect([dst, r.events.some((e: any) => e.type === "decision" && e.dst === dst)]).toEqual([dst, false]);
      expect([dst, r.events.some((e: any) => e.type === "stack" && e.dst === dst)]).toEqual([dst, true]);
    }
    // The refusal says so, without pointing at allowProtected (it cannot open the host).
    const refusal = r.events.find((e: any) => e.type === "stack" && e.dst === "198.51.100.1:7");
    expect(refusal.message).toMatch(/own address, which no policy can open/);
    expect(refusal.message).not.toMatch(/allowProtected/);
  }, 600_000);

  it("a policy that only allows DNS leaks nothing else", async () => {
    const r = await runScenario("dns-only");
    expect(r.probe).toEqual({
      resolve_allowed: ["203.0.113.10"],
      tcp_echo: "refused",
      tcp_http: "refused",
      udp_echo: "timeout",
      udp_direct_dns: "timeout",
      resolve_self: ["127.0.1.1"],
    });
    // The lane's own name resolved locally: no question left the guest for it.
    expect(queried("dns-only-lane")).toEqual([]);
  });

  it("no network option: no NIC, no egress, no DNS", async () => {
    const r = await runScenario("none");
    expect(r.devices).not.toMatch(/eth0/);
    expect(r.probe.resolve_allowed).toBe("gaierror");
    expect(r.probe.tcp_echo).toMatch(/^oserror:|refused/);
  });

  it("routes middleware-accepted HTTP to the interceptor socket, and forwardPort reaches a guest server", async () => {
    const r = await runScenario("intercept");
    expect(r.curl.trim()).toBe("intercepted by test");
    expect(r.seen).toHaveLength(1);
    expect(r.seen[0]).toMatchObject({ hostname: "allowed.test", dst: "203.0.113.10:80", hasMiddleware: true, requestLine: "GET / HTTP/1.1" });
    expect(r.forward.host).toBe("127.0.0.1");
    expect(r.forward.port).toBeGreaterThan(0);
    expect(r.forward.listing).toBe(true);
  });
});

describe("flow churn in network namespaces", () => {
  let fns: Netns;
  beforeAll(() => {
    fns = createNetns();
  });
  afterAll(() => fns?.cleanup());

  it("2,000 parallel connects: maxFlows bounds the upstream's open sockets, the connect rate is limited, helper memory returns to idle", async () => {
    const up = await fns.startNode(fns.inet, "net-flow-upstream.mjs", [ADDR.tcp, "9"], (l) => l.includes('"ready"'));
    const { child, lines } = await fns.startNode(fns.host, "net-lane.mjs", ["flows"], (l) => l.startsWith("{"));
    child.kill();
    const r = JSON.parse(lines.find((l) => l.startsWith("{"))!);
    // The guest's sockets are closed by now; give the upstream's log a beat to show it.
    await new Promise((res) => setTimeout(res, 1000));
    const log = up.lines.filter((l) => l.startsWith('{"open"')).map((l) => JSON.parse(l));
    up.child.kill();
    const last = log.at(-1);
    console.log(JSON.stringify({ burst: r.burst, rss: r.rss, upstream: { max: last.max, accepted: last.accepted, open: last.open, perSecond: last.perSecond.filter((n: number) => n > 0) }, events: r.eventCounts, rateEvent: r.rateEvents[0] }));
    // The upstream's own count: never more than maxFlows sockets at once, all closed again.
    expect(last.max).toBeGreaterThan(0);
    expect(last.max).toBeLessThanOrEqual(256);
    expect(last.open).toBe(0);
    // The guest's view at the end of the hold: at most maxFlows connections open. (Over
    // the whole burst a few more may have completed their handshake: a half-open flow
    // evicted while the guest's ACK was in flight is connected, then reset, in the guest.)
    expect(r.burst.connected).toBeGreaterThan(0);
    expect(r.burst.open).toBeGreaterThan(0);
    expect(r.burst.open).toBeLessThanOrEqual(256);
    // Connects reach it no faster than the limit: per second at most burst + rate, in
    // total at most burst + rate per second of the burst (a second of slack).
    const { perSecond, burst } = r.limits;
    const seconds = last.perSecond.map((n: number, i: number) => [n, i]).filter(([n]: number[]) => n > 0).map(([, i]: number[]) => i);
    const span = seconds.at(-1) - seconds[0] + 1;
    for (const n of last.perSecond) expect(n).toBeLessThanOrEqual(burst + perSecond);
    expect(last.accepted).toBeLessThanOrEqual(burst + perSecond * (span + 1));
    // The dropped SYNs were reported, coalesced (not one event per SYN).
    expect(r.rateEventCount).toBeGreaterThan(0);
    expect(r.rateEventCount).toBeLessThan(60);
    expect(r.rateEvents[0]).toMatch(/new connections dropped before the policy: more than 50 per second \(burst 100\)/);
    // Helper memory back within 10 MiB of idle after the flows closed.
    expect(r.rss.after - r.rss.idle).toBeLessThanOrEqual(10);
  }, 600_000);
});

describe("frame fuzzer against the running helper", () => {
  let fns: Netns;
  beforeAll(async () => {
    fns = createNetns();
    await fns.startNode(fns.inet, "net-internet.mjs", [JSON.stringify(INTERNET)], (l) => l.includes('"ready"'));
  });
  afterAll(() => fns?.cleanup());

  it(`random and mutated frames for ${Number(process.env.NET_FUZZ_SECONDS ?? 60)} s leave the helper alive and serving`, async () => {
    const seconds = Number(process.env.NET_FUZZ_SECONDS ?? 60);
    const { child, lines } = await fns.startNode(fns.host, "net-lane.mjs", ["fuzz", String(seconds)], (l) => l.startsWith("{"));
    child.kill();
    const r = JSON.parse(lines.find((l) => l.startsWith("{"))!);
    console.log(JSON.stringify({ fuzz: r.fuzz, counts: r.eventCounts, after: r.after }));
    expect(r.fuzzExit, r.fuzzErr).toBe(0);
    const [sent] = r.fuzz.split(" ").map(Number);
    expect(sent).toBeGreaterThan(1000);
    expect(r.helperAlive && r.vmmAlive).toBe(true);
    expect(r.after).toEqual({ resolve_allowed: ["203.0.113.10"], tcp_echo: "ping-tcp_echo", udp_echo: "ping-udp_echo" });
    // The stack saw and discarded the garbage (reported, bounded).
    expect(r.eventCounts["stack:malformed"]).toBeGreaterThan(0);
    // ...and rate-limited its audit records towards Node, saying how many it dropped.
    expect(r.eventCounts["stack:audit-dropped"]).toBeGreaterThan(0);
  }, 600_000);
});
