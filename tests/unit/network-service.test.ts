/** NetworkService against a stand-in helper connection: verdicts, failures, events. */
import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import dnsPacket from "dns-packet";
import { NetworkService } from "../../src/network/bridge.js";
import { network, type NetworkEvent } from "../../src/network/policy.js";
import { Kind } from "../../src/protocol/frames.js";

class FakeHelper extends EventEmitter {
  replies: { kind: number; body: any }[] = [];
  sendJson(kind: number, _channel: number, body: unknown): boolean {
    this.replies.push({ kind, body });
    this.emit("replied");
    return true;
  }
  request(body: object): Promise<any> {
    const n = this.replies.length;
    this.emit("netRequest", { kind: Kind.NetRequest, channel: 0, payload: Buffer.from(JSON.stringify(body)) });
    return new Promise((resolve) => {
      const check = () => {
        if (this.replies.length > n) {
          this.off("replied", check);
          resolve(this.replies[n]!.body);
        }
      };
      this.on("replied", check);
      check();
    });
  }
}

const tcp = (id: number, dstIp: string, dstPort: number) => ({ id, proto: "tcp", srcIp: "10.0.2.15", srcPort: 40000 + id, dstIp, dstPort });

function service(fn: Parameters<typeof network.policy>[0], timeoutMs = 200) {
  const events: NetworkEvent[] = [];
  const helper = new FakeHelper();
  const registered: number[] = [];
  const svc = new NetworkService(helper as never, network.policy(fn, { timeoutMs, onEvent: (e) => events.push(e) }), {
    register: (id) => registered.push(id),
  });
  return { helper, events, svc, registered };
}

describe("NetworkService", () => {
  it("answers accept, deny and intercept, and registers intercepted flows", async () => {
    const { helper, registered, svc } = service((conn) => {
      conn.matchTcp("203.0.113.10:7")?.accept();
      conn.matchHttp("api.example.com")?.accept(() => {});
    });
    svc.attribution.record("api.example.com", [{ ip: "203.0.113.20", ttlSeconds: 60 }]);
    expect(await helper.request(tcp(1, "203.0.113.10", 7))).toEqual({ id: 1, verdict: "accept" });
    expect(await helper.request(tcp(2, "203.0.113.10", 8))).toEqual({ id: 2, verdict: "deny" });
    expect(await helper.request(tcp(3, "203.0.113.20", 443))).toEqual({ id: 3, verdict: "intercept" });
    expect(registered).toEqual([3]);
  });

  it("a throwing, rejecting or late callback denies and says why; late grants are ignored", async () => {
    let late: (() => void) | undefined;
    const { helper, events } = service(async (conn) => {
      if (conn.dst.port === 1) throw new Error("sync boom");
      if (conn.dst.port === 2) return Promise.reject(new Error("async boom"));
      await new Promise<void>((r) => (late = r));
      conn.accept();
    }, 50);
    expect((await helper.request(tcp(1, "203.0.113.1", 1))).verdict).toBe("deny");
    expect((await helper.request(tcp(2, "203.0.113.1", 2))).verdict).toBe("deny");
    expect((await helper.request(tcp(3, "203.0.113.1", 3))).verdict).toBe("deny");
    late?.();
    await new Promise((r) => setTimeout(r, 10));
    expect(helper.replies).toHaveLength(3);
    const kinds = events.map((e) => e.type);
    expect(kinds.filter((k) => k === "policy-error")).toHaveLength(2);
    expect(kinds).toContain("policy-timeout");
    expect(events.find((e) => e.type === "policy-error" && e.message.includes("sync boom"))).toBeTruthy();
  });

  it("a denied DNS question is refused without asking any resolver; raw accept of the sandbox resolver is not a grant", async () => {
    const { helper, events } = service((conn) => {
      if (conn.matchDns()?.name === "raw.test") conn.accept();
    });
    const q = (name: string) => dnsPacket.encode({ type: "query", id: 5, questions: [{ type: "A", name }] }).toString("base64");
    const ask = (id: number, name: string) =>
      helper.request({ id, proto: "dns", srcIp: "10.0.2.15", srcPort: 5353, dstIp: "10.0.2.3", dstPort: 53, transport: "udp", query: q(name) });
    expect(await ask(1, "denied.test")).toEqual({ id: 1, verdict: "deny" });
    expect(await ask(2, "raw.test")).toEqual({ id: 2, verdict: "deny" });
    expect(events.filter((e) => e.type === "decision" && e.verdict === "deny")).toHaveLength(2);
    expect(await helper.request({ id: 3, proto: "dns", srcIp: "10.0.2.15", srcPort: 1, dstIp: "10.0.2.3", dstPort: 53, query: "bm90IGRucw==" })).toEqual({ id: 3, verdict: "deny" });
  });
});
