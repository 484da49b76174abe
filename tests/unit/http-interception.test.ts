/**
 * `startInterception`: the per-boot lifecycle the network wiring uses — flows
 * handed over before the CA exists wait for it and are served with it.
 */
import { once } from "node:events";
import { connect, createServer } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { describe, expect, it } from "vitest";
import { startInterception } from "../../src/network/http/interception.js";
import { certificates, completeResponse, HOST, readBody, readUntil, startUpstream } from "./http-harness.js";

describe("startInterception (per-boot lifecycle)", () => {
  it("serves flows handed over before the CA exists, with that CA", async () => {
    const c = await certificates();
    const up = await startUpstream(async (r, res) => {
      await readBody(r);
      res.end(`auth=${r.headers.authorization}`);
    });
    const interception = startInterception({ upstreamCa: c.upstreamCa.certPem });
    const server = createServer((socket) => {
      void interception.handle(socket, {
        src: { ip: "127.0.0.1", port: 1 },
        dst: { ip: "127.0.0.1", port: up.port },
        hostname: HOST,
        middleware: (r) => r.headers.set("authorization", "Bearer boot-token"),
      });
    });
    server.listen(up.port, "127.0.0.2");
    await once(server, "listening");
    // Connect immediately: the CA may still be generating.
    const raw = connect({ host: "127.0.0.2", port: up.port });
    const ca = await interception.ca;
    const s = tlsConnect({ socket: raw, servername: HOST, ca: ca.certPem });
    await once(s, "secureConnect");
    s.write(`GET / HTTP/1.1\r\nHost: ${HOST}:${up.port}\r\n\r\n`);
    const { text } = await readUntil(s, completeResponse);
    // The upstream echoed the injected header: the guest gets it redacted.
    expect(text).toContain("auth=[redacted]");
    expect(text).not.toContain("boot-token");
    s.destroy();
    await interception.close();
    server.close();
    await up.close();
  });
});
