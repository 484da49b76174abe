import dnsPacket from "dns-packet";
import { describe, expect, it } from "vitest";
import { network, SandboxConfigError } from "../../src/index.js";
import { cidrContains, parseCidr } from "../../src/network/cidr.js";
import { parseQuery, parseResolver, servfail } from "../../src/network/dns-forward.js";
import { Endpoint, parseIp } from "../../src/network/endpoint.js";
import { PolicyConnection } from "../../src/network/policy.js";

const src = new Endpoint("10.0.2.15", 40000);
const tcp = (ip: string, port: number, hostnames: string[] = []) => new PolicyConnection("tcp", src, new Endpoint(ip, port), hostnames);

describe("network.policy options", () => {
  it("validates its inputs with typed errors", () => {
    expect(() => network.policy(undefined as never)).toThrow(SandboxConfigError);
    expect(() => network.policy(() => {}, { allowProtected: ["10.0.0.0"] })).toThrow(/not a CIDR/);
    expect(() => network.policy(() => {}, { timeoutMs: 0 })).toThrow(/timeoutMs/);
    const p = network.policy(() => {}, { allowProtected: ["::ffff:10.0.0.0/104", "127.0.0.0/8"] });
    expect(p.allowProtected).toEqual(["::ffff:10.0.0.0/104", "127.0.0.0/8"]);
    expect(p.timeoutMs).toBe(5000);
    expect(p.maxFlows).toBe(256);
  });

  it("bounds new connections per second with a burst, validated and passed to the helper", async () => {
    const p = network.policy(() => {});
    expect([p.maxConnectsPerSecond, p.connectBurst]).toEqual([100, 200]);
    const custom = network.policy(() => {}, { maxFlows: 256, maxConnectsPerSecond: 20, connectBurst: 50 });
    const { networkLaunch } = await import("../../src/boot/launch.js");
    expect(networkLaunch(custom, "/tmp/i.sock")).toMatchObject({ maxFlows: 256, maxConnectsPerSecond: 20, connectBurst: 50 });
    for (const bad of [0, -1, 1.5, 100_001, Number.NaN]) {
      expect(() => network.policy(() => {}, { maxConnectsPerSecond: bad })).toThrow(SandboxConfigError);
      expect(() => network.policy(() => {}, { connectBurst: bad })).toThrow(/connectBurst must be an integer from 1 to 100000/);
    }
  });
});

describe("connection matching", () => {
  it("matchTcp / matchUdp compare the destination in any spelling, per protocol", () => {
    const c = tcp("203.0.113.10", 7);
    expect(c.matchTcp("203.0.113.10:7")).not.toBeNull();
    expect(c.matchTcp("[::ffff:203.0.113.10]:7")).not.toBeNull();
    expect(c.matchTcp("203.0.113.10:8")).toBeNull();
    expect(c.matchUdp("203.0.113.10:7")).toBeNull();
    expect(c.matchDns()).toBeNull();
    expect(() => c.matchTcp("203.0.113.10")).toThrow(SandboxConfigError);
    expect(() => c.matchTcp("::1:80")).toThrow(/ip:port/);
  });

  it("classifies endpoints, IPv4-mapped by the embedded address", () => {
    const mapped = new Endpoint("::ffff:10.1.2.3", 80);
    expect(mapped.isPrivate()).toBe(true);
    expect(new Endpoint("::ffff:203.0.113.9", 80).isDocumentation()).toBe(true);
    expect(new Endpoint("169.254.169.254", 80).isLinkLocal()).toBe(true);
    expect(new Endpoint("8.8.8.8", 53).isPublicInternet()).toBe(true);
  });

  it("the first grant stands and grants after the verdict change nothing", () => {
    const c = tcp("203.0.113.10", 443, ["api.example.com"]);
    expect(c.matchHttp("api.example.com")!.accept()).toBe(true);
    expect(c.accept()).toBe(true);
    expect(c.settle()).toEqual({ kind: "http", hostname: "api.example.com", middleware: undefined, allowInsecure: false, others: [] });
    const late = tcp("203.0.113.10", 7);
    late.settle();
    late.accept();
    expect(late.grant).toBeUndefined();
  });

  it("matchHttp needs a trusted hostname, on any port unless httpPorts restricts them; predicates see each candidate", () => {
    expect(tcp("203.0.113.10", 443).matchHttp("api.example.com")).toBeNull();
    expect(tcp("203.0.113.10", 8443, ["api.example.com"]).matchHttp("api.example.com")?.hostname).toBe("api.example.com");
    const restricted = new PolicyConnection("tcp", src, new Endpoint("203.0.113.10", 8443), ["api.example.com"], undefined, [443]);
    expect(restricted.matchHttp("api.example.com")).toBeNull();
    // Several accepted names of one address are all kept: the flow's SNI/Host picks one.
    const shared = tcp("203.0.113.10", 443, ["a.cdn.test", "b.cdn.test"]);
    const mwA = () => {};
    const mwB = () => {};
    shared.matchHttp("a.cdn.test")!.accept(mwA);
    shared.matchHttp("b.cdn.test")!.accept(mwB);
    shared.matchHttp("a.cdn.test")!.accept();
    expect(shared.settle()).toEqual({ kind: "http", hostname: "a.cdn.test", middleware: mwA, allowInsecure: false, others: [{ hostname: "b.cdn.test", middleware: mwB, allowInsecure: false }] });
    const c = tcp("203.0.113.10", 80, ["a.example.com", "b.other.net"]);
    expect(c.matchHttp("API.Example.com.")).toBeNull();
    expect(c.matchHttp("A.EXAMPLE.COM")?.hostname).toBe("a.example.com");
    expect(c.matchHttp(({ hostname }) => hostname.endsWith(".other.net"))?.hostname).toBe("b.other.net");
    const mw = () => {};
    c.matchHttp("a.example.com")!.accept(mw);
    expect(c.settle()).toEqual({ kind: "http", hostname: "a.example.com", middleware: mw, allowInsecure: false, others: [] });
  });

  it("matchDns exposes the question and needs resolvers", () => {
    const c = new PolicyConnection("udp", src, new Endpoint("10.0.2.3", 53), [], { name: "example.com", type: "AAAA", transport: "udp" });
    const d = c.matchDns()!;
    expect([d.name, d.type, d.transport]).toEqual(["example.com", "AAAA", "udp"]);
    expect(() => d.accept({ resolvers: [] })).toThrow(SandboxConfigError);
    expect(d.accept({ resolvers: ["1.1.1.1"] })).toBe(true);
    expect(c.matchUdp("10.0.2.3:53")).toBeNull();
    expect(c.matchHttp("example.com")).toBeNull();
    expect(c.settle()).toEqual({ kind: "dns", resolvers: ["1.1.1.1"] });
  });
});

describe("CIDRs, resolvers and DNS helpers", () => {
  it("CIDRs contain both spellings of an IPv4 host", () => {
    const ten = parseCidr("10.0.0.0/8")!;
    expect(cidrContains(ten, parseIp("10.9.8.7")!)).toBe(true);
    expect(cidrContains(ten, parseIp("::ffff:10.9.8.7")!)).toBe(true);
    expect(cidrContains(ten, parseIp("11.0.0.1")!)).toBe(false);
    expect(cidrContains(parseCidr("::ffff:127.0.0.0/104")!, parseIp("127.0.0.1")!)).toBe(true);
    expect(cidrContains(parseCidr("fc00::/7")!, parseIp("fd00::1")!)).toBe(true);
    for (const bad of ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/08"]) expect(parseCidr(bad)).toBeUndefined();
  });

  it("parses resolver addresses", () => {
    expect(parseResolver("1.1.1.1")?.text).toBe("1.1.1.1:53");
    expect(parseResolver("203.0.113.53:5353")?.text).toBe("203.0.113.53:5353");
    expect(parseResolver("2606:4700::1111")?.text).toBe("[2606:4700::1111]:53");
    expect(parseResolver("[::ffff:1.1.1.1]:53")?.text).toBe("1.1.1.1:53");
    expect(parseResolver("dns.google")).toBeUndefined();
  });

  it("parses queries and builds SERVFAIL echoing the question", () => {
    const q = dnsPacket.encode({ type: "query", id: 77, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: "A", name: "Example.COM" }] });
    expect(parseQuery(q)).toEqual({ id: 77, name: "example.com", type: "A" });
    expect(parseQuery(Buffer.from("garbage"))).toBeUndefined();
    const a = dnsPacket.decode(servfail(q));
    expect([a.type, a.id, (a as { rcode?: string }).rcode, a.questions?.[0]?.name]).toEqual(["response", 77, "SERVFAIL", "Example.COM"]);
  });
});
