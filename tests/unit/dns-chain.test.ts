/** Attribution from the answer chain only: what `summarize` lets through to DnsAttribution. */
import dnsPacket from "dns-packet";
import { describe, expect, it } from "vitest";
import { summarize } from "../../src/network/dns-forward.js";

const q = { id: 7, name: "inject.attacker.test", type: "A" };
const answer = (answers: dnsPacket.Answer[]) => {
  const p = { type: "response" as const, id: 7, questions: [{ name: q.name, type: "A" as const }], answers };
  return summarize(q, p as dnsPacket.Packet, dnsPacket.encode(p), "203.0.113.53");
};
const A = (name: string, data: string): dnsPacket.Answer => ({ name, type: "A", ttl: 30, data });
const CNAME = (name: string, data: string): dnsPacket.Answer => ({ name, type: "CNAME", ttl: 30, data });

describe("DNS answer chain", () => {
  it("takes the question's own records and ignores unrelated ones", () => {
    const s = answer([A("inject.attacker.test", "203.0.113.1"), A("api.allowed.test", "203.0.113.30")]);
    expect(s.addresses.map((a) => a.ip)).toEqual(["203.0.113.1"]);
  });

  it("follows a chain one record at a time to the name it ends at", () => {
    const s = answer([CNAME("inject.attacker.test", "api.allowed.test"), A("api.allowed.test", "203.0.113.30"), A("inject.attacker.test", "203.0.113.9")]);
    // Only the end of the chain has addresses; a record for a name the chain left is out of chain.
    expect(s.addresses.map((a) => a.ip)).toEqual(["203.0.113.30"]);
    expect(s.cnames).toEqual(["api.allowed.test"]);
  });

  it("refuses branching and looping chains", () => {
    expect(answer([CNAME("inject.attacker.test", "a.test"), CNAME("inject.attacker.test", "b.test"), A("a.test", "203.0.113.2")]).addresses).toEqual([]);
    expect(answer([CNAME("inject.attacker.test", "a.test"), CNAME("a.test", "inject.attacker.test"), A("a.test", "203.0.113.2")]).addresses).toEqual([]);
  });
});
