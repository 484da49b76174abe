/** NetworkService over a real HelperConnection whose far end plays the helper: verdicts, failures, events. */
import { afterAll, describe, expect, it } from "vitest";
import dnsPacket from "dns-packet";
import { NetworkService } from "../../src/network/bridge.js";
import { network, type NetworkEvent } from "../../src/network/policy.js";
import { connectFakeHelper } from "./fake-helper.js";

const closers: (() => void)[] = [];
afterAll(() => closers.forEach((c) => c()));

const tcp = (flow: number, dstIp: string, dstPort: number) => ({ flow, proto: "tcp", srcIp: "10.0.2.15", srcPort: 40000 + flow, dstIp, dstPort }) as const;

async function service(fn: Parameters<typeof network.policy>[0], timeoutMs = 200) {
  const events: NetworkEvent[] = [];
  const link = await connectFakeHelper();
  closers.push(link.close);
  const registered: number[] = [];
  const svc = new NetworkService(link.conn, network.policy(fn, { timeoutMs, onEvent: (e) => events.push(e) }), {
    register: (id) => registered.push(id),
  });
  let id = 0;
  const ask = async (req: object, query: Uint8Array[] = []) => (await link.helper.call("NetRequest", "NetReply", ++id, req as never, query)).header.verdict;
  return { helper: link.helper, events, svc, registered, ask };
}

describe("NetworkService", () => {
  it("answers accept, deny and intercept, and registers intercepted flows by their flow id", async () => {
    const { registered, svc, ask } = await service((conn) => {
      conn.matchTcp("203.0.113.10:7")?.accept();
      conn.matchHttp("api.example.com")?.accept(() => {});
    });
    svc.attribution.record("api.example.com", [{ ip: "203.0.113.20", ttlSeconds: 60 }]);
    expect(await ask(tcp(11, "203.0.113.10", 7))).toBe("accept");
    expect(await ask(tcp(12, "203.0.113.10", 8))).toBe("deny");
    expect(await ask(tcp(13, "203.0.113.20", 443))).toBe("intercept");
    expect(registered).toEqual([13]);
  });

  it("a throwing, rejecting or late callback denies and says why; late grants are ignored", async () => {
    let late: (() => void) | undefined;
    const { helper, events, ask } = await service(async (conn) => {
      if (conn.dst.port === 1) throw new Error("sync boom");
      if (conn.dst.port === 2) return Promise.reject(new Error("async boom"));
      await new Promise<void>((r) => (late = r));
      conn.accept();
    }, 50);
    expect(await ask(tcp(1, "203.0.113.1", 1))).toBe("deny");
    expect(await ask(tcp(2, "203.0.113.1", 2))).toBe("deny");
    expect(await ask(tcp(3, "203.0.113.1", 3))).toBe("deny");
    late?.();
    await new Promise((r) => setTimeout(r, 20));
    expect(helper.frames).toHaveLength(0);
    const kinds = events.map((e) => e.type);
    expect(kinds.filter((k) => k === "policy-error")).toHaveLength(2);
    expect(kinds).toContain("policy-timeout");
    expect(events.find((e) => e.type === "policy-error" && e.message.includes("sync boom"))).toBeTruthy();
  });

  it("a denied DNS question is refused without asking any resolver; raw accept of the sandbox resolver is not a grant", async () => {
    const { events, ask } = await service((conn) => {
      if (conn.matchDns()?.name === "raw.test") conn.accept();
    });
    const q = (name: string) => dnsPacket.encode({ type: "query", id: 5, questions: [{ type: "A", name }] });
    const dns = (flow: number) => ({ flow, proto: "dns", srcIp: "10.0.2.15", srcPort: 5353, dstIp: "10.0.2.3", dstPort: 53, transport: "udp" });
    expect(await ask(dns(1), [q("denied.test")])).toBe("deny");
    expect(await ask(dns(2), [q("raw.test")])).toBe("deny");
    expect(events.filter((e) => e.type === "decision" && e.verdict === "deny")).toHaveLength(2);
    expect(await ask(dns(3), [Buffer.from("not dns")])).toBe("deny");
  });

  it("a request that is not a valid NetRequest is denied at once and reported", async () => {
    const link = await connectFakeHelper();
    closers.push(link.close);
    const diagnostics: string[] = [];
    link.conn.on("diagnostic", (d: { message: string }) => diagnostics.push(d.message));
    new NetworkService(link.conn, network.policy(() => {}), { register: () => {} });
    const reply = await link.helper.call("NetRequest", "NetReply", 7, { flow: 1, proto: "carrier-pigeon" } as never);
    expect(reply.header).toEqual({ verdict: "deny" });
    expect(diagnostics.join("\n")).toMatch(/NetRequest from the helper could not be served/);
    expect(link.conn.closed).toBe(false);
  });
});
