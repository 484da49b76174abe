/**
 * The HTTP interceptor's enforcement on real loopback sockets: credential
 * injection, Host / SNI / CONNECT checks against the trusted hostname, ALPN,
 * upstream certificate verification, non-HTTP flows and middleware failures.
 */
import { request as httpsRequest } from "node:https";
import { afterEach, describe, expect, it } from "vitest";
import {
  certificates,
  completeResponse,
  GUEST_IP,
  HOST,
  rawConnect,
  readBody,
  readUntil,
  startGuestSide,
  startUpstream,
  type Guest,
  type Upstream,
} from "./http-harness.js";
import type { HttpMiddleware } from "../../src/network/http/types.js";

const TOKEN = "Bearer host-side-token-7f3a";
const inject: HttpMiddleware = (r) => r.headers.set("authorization", TOKEN);

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
}

/** Upstream that records requests and answers `ok <path>`. */
async function setup(middleware: HttpMiddleware = inject, opts: Parameters<typeof startGuestSide>[2] & { tls?: boolean; rogue?: boolean } = {}) {
  const seen: Seen[] = [];
  const up: Upstream = await startUpstream(async (req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    await readBody(req);
    res.setHeader("x-upstream", "yes");
    res.end(`ok ${req.url}`);
  }, { tls: opts.tls, rogue: opts.rogue });
  const guest: Guest = await startGuestSide(up.port, middleware, opts);
  cleanup.push(() => up.close(), () => guest.close());
  return { seen, up, guest };
}

const get = (path: string, host = `${HOST}:PORT`) => `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;

describe("HTTP interceptor", () => {
  it("injects the credential upstream; the guest never sees it", async () => {
    const { seen, guest } = await setup();
    const c = await certificates();
    const { status, headers, body } = await new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
      const r = httpsRequest(
        { host: GUEST_IP, port: guest.port, servername: HOST, ca: c.sandboxCa.certPem, path: "/user", headers: { host: `${HOST}:${guest.port}`, authorization: "Bearer guest-fake" } },
        async (res) => resolve({ status: res.statusCode!, headers: res.headers, body: (await readBody(res)).toString() }),
      );
      r.on("error", reject);
      r.end();
    });
    expect(status).toBe(200);
    expect(body).toBe("ok /user");
    expect(headers["x-upstream"]).toBe("yes");
    expect(JSON.stringify(headers) + body).not.toContain("host-side-token");
    expect(seen).toHaveLength(1);
    expect(seen[0]!.headers.authorization).toBe(TOKEN);
    expect(guest.events).toMatchObject([{ type: "http.request", method: "GET", url: "/user", status: 200, protocol: "h1", scheme: "https:", hostname: HOST }]);
  });

  it("rejects a forged Host header (domain fronting) before anything goes upstream", async () => {
    const { seen, guest } = await setup();
    const s = await rawConnect(guest.port);
    s.write(get("/", `evil.test:${guest.port}`));
    const { text, closed } = await readUntil(s);
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain("does not match api.test");
    expect(closed).toBe(true);
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.denied", reason: "host-mismatch" }]);
  });

  it("rejects an absolute-form target naming another host, and a second Host header", async () => {
    const { seen, guest } = await setup();
    for (const req of [
      `GET https://evil.test/ HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\n\r\n`,
      `GET / HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\nHost: evil.test\r\n\r\n`,
      `GET / HTTP/1.1\r\nHost: ${HOST}:1\r\n\r\n`,
    ]) {
      const s = await rawConnect(guest.port);
      s.write(req);
      const { text } = await readUntil(s);
      expect(text).toMatch(/^HTTP\/1\.1 40[03] /);
    }
    expect(seen).toHaveLength(0);
  });

  it("checks every request of a kept-alive connection: a second request for another Host is refused", async () => {
    const { seen, guest } = await setup();
    const s = await rawConnect(guest.port);
    s.write(get("/first", `${HOST}:${guest.port}`));
    const first = await readUntil(s, completeResponse);
    expect(first.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(first.text).toContain("ok /first");
    expect(first.closed).toBe(false);
    s.write(get("/second", `other.test:${guest.port}`));
    const second = await readUntil(s);
    expect(second.text).toMatch(/^HTTP\/1\.1 403 /);
    expect(second.closed).toBe(true);
    expect(seen.map((r) => r.url)).toEqual(["/first"]);
    expect(seen[0]!.headers.authorization).toBe(TOKEN);
  });

  it("runs the middleware for every request on one connection (pipelined too)", async () => {
    let calls = 0;
    const { seen, guest } = await setup((r) => r.headers.set("x-call", String(++calls)));
    const s = await rawConnect(guest.port);
    const h = `${HOST}:${guest.port}`;
    s.write(get("/a", h) + get("/b", h) + get("/c", h));
    const { text } = await readUntil(s, (t) => (t.match(/ok \/\w/g) ?? []).length === 3);
    expect(text.match(/HTTP\/1\.1 200/g)).toHaveLength(3);
    expect(seen.map((r) => [r.url, r.headers["x-call"]])).toEqual([["/a", "1"], ["/b", "2"], ["/c", "3"]]);
    s.destroy();
  });

  it("refuses a TLS handshake whose SNI is not the trusted hostname", async () => {
    const { seen, guest } = await setup();
    await expect(rawConnect(guest.port, { servername: "evil.test" })).rejects.toThrow();
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.denied", reason: "sni-mismatch" }]);
  });

  it("serves a client that sends no SNI with the trusted hostname's certificate", async () => {
    const { seen, guest } = await setup();
    const s = await rawConnect(guest.port, { servername: false });
    s.write(get("/nosni", `${HOST}:${guest.port}`));
    const { text } = await readUntil(s, completeResponse);
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(seen[0]!.headers.authorization).toBe(TOKEN);
    s.destroy();
  });

  it("offers h2 and http/1.1 by ALPN (h2 first)", async () => {
    const { guest } = await setup();
    const both = (await rawConnect(guest.port, { alpn: ["h2", "http/1.1"] })) as import("node:tls").TLSSocket;
    expect(both.alpnProtocol).toBe("h2");
    both.destroy();
    const h1 = (await rawConnect(guest.port, { alpn: ["http/1.1"] })) as import("node:tls").TLSSocket;
    expect(h1.alpnProtocol).toBe("http/1.1");
    h1.destroy();
  });

  it("answers 502 with a clear body when the upstream certificate is not trusted", async () => {
    const { seen, guest } = await setup(inject, { rogue: true });
    const s = await rawConnect(guest.port);
    s.write(get("/", `${HOST}:${guest.port}`));
    const { text } = await readUntil(s);
    expect(text).toMatch(/^HTTP\/1\.1 502 /);
    expect(text).toMatch(/upstream request to api\.test failed: .*(UNABLE_TO_VERIFY_LEAF_SIGNATURE|certificate)/);
    expect(seen).toHaveLength(0);
    const ev = guest.events.find((e) => e.type === "http.upstream-error");
    expect(ev).toMatchObject({ type: "http.upstream-error", answered502: true, code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE" });
  });

  it("trusts a private upstream CA only when it is given explicitly", async () => {
    const { seen, guest } = await setup(inject, { trustUpstreamCa: false });
    const s = await rawConnect(guest.port);
    s.write(get("/", `${HOST}:${guest.port}`));
    const { text } = await readUntil(s);
    expect(text).toMatch(/^HTTP\/1\.1 502 /);
    expect(seen).toHaveLength(0);
  });

  it("intercepts plain HTTP the same way when the middleware may add headers in clear text", async () => {
    const { seen, guest } = await setup(inject, { tls: false, allowInsecure: true });
    const s = await rawConnect(guest.port, { plain: true });
    s.write(get("/plain", `${HOST}:${guest.port}`));
    const { text } = await readUntil(s, completeResponse);
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(seen[0]!.headers.authorization).toBe(TOKEN);
    expect(guest.events).toMatchObject([{ type: "http.request", protocol: "h1", scheme: "http:" }]);
    s.destroy();
  });

  it("fails closed on a flow that is not HTTP", async () => {
    const { seen, guest } = await setup(inject, { tls: false });
    const s = await rawConnect(guest.port, { plain: true });
    s.write("SSH-2.0-OpenSSH_9.2\r\n");
    const { text, closed } = await readUntil(s);
    expect(text).toBe("");
    expect(closed).toBe(true);
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.protocol-error", reason: "not-http" }]);
  });

  it("fails closed on TLS carrying something that is not HTTP", async () => {
    const { seen, guest } = await setup();
    const s = await rawConnect(guest.port);
    s.write("\x00\x01binary garbage\r\n\r\n");
    const { closed } = await readUntil(s);
    expect(closed).toBe(true);
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.protocol-error", reason: "not-http" }]);
  });

  it("denies the request (403) when the middleware throws, without sending it upstream", async () => {
    const { seen, guest } = await setup(() => {
      throw new Error("no token for you");
    });
    const s = await rawConnect(guest.port);
    s.write(get("/", `${HOST}:${guest.port}`));
    const { text } = await readUntil(s);
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).not.toContain("no token for you");
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.denied", reason: "middleware", message: expect.stringContaining("no token for you") }]);
  });

  it("refuses request framings it cannot re-frame unambiguously", async () => {
    const { seen, guest } = await setup();
    const h = `${HOST}:${guest.port}`;
    for (const req of [
      `POST / HTTP/1.1\r\nHost: ${h}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      `POST / HTTP/1.1\r\nHost: ${h}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
      `POST / HTTP/1.1\r\nHost: ${h}\r\nContent-Length: +3\r\n\r\nabc`,
      // Would move http-parser-js's cursor backwards (an endless loop) if it acted on them.
      `POST / HTTP/1.1\r\nHost: ${h}\r\nContent-Length: -100000\r\n\r\n`,
      `POST / HTTP/1.1\r\nHost: ${h}\r\nContent-Length: 1e3\r\n\r\n`,
    ]) {
      const s = await rawConnect(guest.port);
      s.write(req);
      const { text } = await readUntil(s);
      expect(text).toMatch(/^HTTP\/1\.1 400 /);
    }
    expect(seen).toHaveLength(0);
  });

  it("closes on a malformed chunk size instead of looping (negative sizes)", async () => {
    const { seen, guest } = await setup();
    const s = await rawConnect(guest.port);
    s.write(`POST /c HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\nTransfer-Encoding: chunked\r\n\r\n\r\n-186a0\r\n\r\n`);
    const { closed } = await readUntil(s);
    expect(closed).toBe(true);
    expect(guest.events.some((e) => e.type === "http.protocol-error" && e.reason === "parse")).toBe(true);
    // The event loop is alive: a new connection is served.
    const s2 = await rawConnect(guest.port);
    s2.write(get("/after", `${HOST}:${guest.port}`));
    expect((await readUntil(s2, completeResponse)).text).toMatch(/^HTTP\/1\.1 200 /);
    expect(seen.map((r) => r.url)).toContain("/after");
    s2.destroy();
  });

  it("refuses a flow whose hostname is an IP (no trusted name to check against)", async () => {
    const { seen, guest } = await setup(inject, { hostname: "127.0.0.1" });
    const s = await rawConnect(guest.port, { plain: true });
    s.write(get("/", "127.0.0.1"));
    const { text, closed } = await readUntil(s);
    expect(text).toBe("");
    expect(closed).toBe(true);
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.protocol-error", message: expect.stringContaining("IP-addressed flows cannot be intercepted") }]);
  });

  it("bounds lines inside a chunked body (an endless trailer line is cut off)", async () => {
    const { guest } = await setup();
    const s = await rawConnect(guest.port);
    s.write(`POST /t HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: `);
    let closed = false;
    s.once("close", () => (closed = true));
    for (let i = 0; i < 64 && !closed; i++) {
      s.write("a".repeat(1024));
      await new Promise((r) => setTimeout(r, 5));
    }
    await readUntil(s, () => false, 5000);
    expect(closed).toBe(true);
    expect(guest.events.some((e) => e.type === "http.protocol-error" && e.message.includes("HPE_LINE_TOO_LONG"))).toBe(true);
  });

  it("re-checks CONNECT: another host is refused, the trusted one is intercepted inside the tunnel", async () => {
    const { seen, guest } = await setup();
    const c = await certificates();
    const bad = await rawConnect(guest.port);
    bad.write(`CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n`);
    const refused = await readUntil(bad);
    expect(refused.text).toMatch(/^HTTP\/1\.1 403 /);
    expect(guest.events).toMatchObject([{ type: "http.denied", reason: "connect-target" }]);

    const s = await rawConnect(guest.port, { plain: true });
    s.write(`CONNECT ${HOST}:${guest.port} HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\n\r\n`);
    const ok = await readUntil(s, (t) => t.includes("\r\n\r\n"));
    expect(ok.text).toMatch(/^HTTP\/1\.1 200 /);
    const { connect } = await import("node:tls");
    const inner = connect({ socket: s, servername: HOST, ca: c.sandboxCa.certPem });
    await new Promise((r) => inner.once("secureConnect", r));
    inner.write(get("/tunnelled", `${HOST}:${guest.port}`));
    const res = await readUntil(inner, completeResponse);
    expect(res.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(seen.map((r) => [r.url, r.headers.authorization])).toEqual([["/tunnelled", TOKEN]]);
    // Inside the tunnel, the same checks hold.
    inner.write(get("/x", `evil.test:${guest.port}`));
    expect((await readUntil(inner)).text).toMatch(/^HTTP\/1\.1 403 /);
    inner.destroy();
  });

  it("denies a request whose middleware does not settle in time", async () => {
    const { seen, guest } = await setup(() => new Promise(() => {}), { middlewareTimeoutMs: 200 });
    const s = await rawConnect(guest.port);
    s.write(get("/", `${HOST}:${guest.port}`));
    const { text } = await readUntil(s);
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.denied", reason: "middleware", message: expect.stringContaining("did not finish within 200 ms") }]);
  });

  it("closes a flow on which the guest sends nothing", async () => {
    const { guest } = await setup(inject, { handshakeTimeoutMs: 200 });
    const s = await rawConnect(guest.port, { plain: true });
    const { closed } = await readUntil(s, () => false, 5000);
    expect(closed).toBe(true);
    expect(guest.events).toMatchObject([{ type: "http.protocol-error", reason: "idle" }]);
  });

  it("refuses a plain-HTTP request the middleware adds a credential to (403, nothing upstream)", async () => {
    const { seen, guest } = await setup(inject, { tls: false });
    const s = await rawConnect(guest.port, { plain: true });
    s.write(get("/plain", `${HOST}:${guest.port}`));
    const { text } = await readUntil(s, completeResponse);
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain("only go out over verified TLS");
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.denied", reason: "insecure-transport" }]);
    s.destroy();
  });

  it("refuses TRACE on intercepted connections", async () => {
    const { seen, guest } = await setup();
    const s = await rawConnect(guest.port);
    s.write(`TRACE /t HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\n\r\n`);
    const { text } = await readUntil(s, completeResponse);
    expect(text).toMatch(/^HTTP\/1\.1 405 /);
    expect(seen).toHaveLength(0);
    expect(guest.events).toMatchObject([{ type: "http.denied", reason: "method-refused" }]);
  });

  it("serves HTTP/1.0 clients (close-delimited, Host optional)", async () => {
    const { seen, guest } = await setup(inject, { tls: false, allowInsecure: true });
    const s = await rawConnect(guest.port, { plain: true });
    s.write("GET /old HTTP/1.0\r\n\r\n");
    const { text, closed } = await readUntil(s);
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text).toContain("ok /old");
    expect(closed).toBe(true);
    expect(seen[0]!.headers.host).toBe(HOST);
    expect(seen[0]!.headers.authorization).toBe(TOKEN);
  });

  it("answers 502 when the upstream refuses a WebSocket upgrade", async () => {
    const { guest } = await setup();
    const s = await rawConnect(guest.port);
    s.write(`GET /ws HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    const { text } = await readUntil(s);
    expect(text).toMatch(/^HTTP\/1\.1 502 /);
    expect(text).toContain("did not switch protocols");
  });
});
