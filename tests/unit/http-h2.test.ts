/**
 * HTTP/2 through the interceptor, on real sockets and TLS: a guest h2 client
 * (node:http2, grpc-js) → interceptor → an upstream that speaks h2 (or only
 * HTTP/1.1). Asserts on what the upstream saw.
 */
import { once } from "node:events";
import { connect as h2connect, constants, createSecureServer, type ClientHttp2Session, type Http2SecureServer, type IncomingHttpHeaders } from "node:http2";
import type { AddressInfo } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { gzipSync } from "node:zlib";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { InterceptedRequest } from "../../src/network/http/types.js";
import { certificates, GUEST_IP, HOST, startGuestSide, startUpstream, type Guest } from "./http-harness.js";

const TOKEN = "Bearer h2-secret-token-0123456789";

interface Seen {
  version: string;
  method: string;
  path: string;
  authority: string | undefined;
  authorization: string | undefined;
  te: string | undefined;
  bodyBytes: number;
}

async function startH2Upstream(seen: Seen[]): Promise<{ server: Http2SecureServer; port: number }> {
  const c = await certificates();
  const server = createSecureServer({ key: c.upstreamKey, cert: c.upstreamCert, allowHTTP1: true }, (req, res) => {
    let bytes = 0;
    req.on("data", (d: Buffer) => (bytes += d.length));
    req.on("end", () => {
      seen.push({
        version: req.httpVersion,
        method: req.method,
        path: req.url,
        authority: (req.headers[":authority"] as string | undefined) ?? req.headers.host,
        authorization: req.headers.authorization,
        te: req.headers.te as string | undefined,
        bodyBytes: bytes,
      });
      if (req.url === "/reset") {
        req.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
        return;
      }
      if (req.url === "/echo") {
        res.setHeader("x-echo-authorization", String(req.headers.authorization));
        res.setHeader("content-type", "text/plain");
        res.end(`you sent ${req.headers.authorization}`);
      } else if (req.url === "/gzip") {
        res.setHeader("content-encoding", "gzip");
        res.end(gzipSync(`echo: ${req.headers.authorization}`));
      } else if (req.url === "/size") {
        res.end(String(bytes));
      } else {
        res.end("ok");
      }
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { server, port: (server.address() as AddressInfo).port };
}

async function guestSession(port: number): Promise<ClientHttp2Session> {
  const c = await certificates();
  // The URL names the trusted host; the connection goes to the guest-side listener.
  const s = h2connect(`https://${HOST}:${port}`, {
    createConnection: () => tlsConnect({ host: GUEST_IP, port, servername: HOST, ca: c.sandboxCa.certPem, ALPNProtocols: ["h2"] }),
  });
  s.on("error", () => {});
  await once(s, "connect");
  return s;
}

function request(s: ClientHttp2Session, headers: Record<string, string>, body?: Buffer): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const r = s.request(headers, { endStream: body === undefined });
    const parts: Buffer[] = [];
    let head: IncomingHttpHeaders = {};
    r.on("response", (h) => (head = h));
    r.on("data", (d: Buffer) => parts.push(d));
    r.on("end", () => resolve({ status: Number(head[":status"]), headers: head, body: Buffer.concat(parts).toString() }));
    r.on("error", reject);
    if (body) r.end(body);
  });
}

describe("HTTP/2 through interception", () => {
  const seen: Seen[] = [];
  const requests: InterceptedRequest[] = [];
  let up: { server: Http2SecureServer; port: number };
  let guest: Guest;
  let session: ClientHttp2Session;

  beforeAll(async () => {
    up = await startH2Upstream(seen);
    guest = await startGuestSide(up.port, (req) => {
      requests.push(req);
      req.headers.set("authorization", TOKEN);
    });
    session = await guestSession(guest.port);
  });
  afterAll(async () => {
    session?.destroy();
    await guest?.close();
    up?.server.close();
  });

  it("negotiates h2 with the guest and upstream; the middleware runs on every stream and sees protocol h2", async () => {
    const before = seen.length;
    const a = await request(session, { ":path": "/one", ":authority": `${HOST}:${guest.port}` });
    const b = await request(session, { ":path": "/two" });
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(session.alpnProtocol).toBe("h2");
    expect(seen.slice(before)).toMatchObject([
      { version: "2.0", path: "/one", authorization: TOKEN, authority: `${HOST}:${guest.port}` },
      { version: "2.0", path: "/two", authorization: TOKEN },
    ]);
    expect(requests.slice(-2).map((r) => [r.protocol, r.scheme, r.url])).toEqual([
      ["h2", "https:", "/one"],
      ["h2", "https:", "/two"],
    ]);
    expect(guest.events.filter((e) => e.type === "http.request").slice(-2)).toMatchObject([{ protocol: "h2", status: 200 }, { protocol: "h2", status: 200 }]);
  });

  it("refuses a stream whose :authority names another host with 421, and the connection serves on", async () => {
    const before = seen.length;
    const r = await request(session, { ":path": "/other", ":authority": "other.test" });
    expect(r.status).toBe(421);
    expect(r.body).toContain("other.test");
    const h = await request(session, { ":path": "/x", host: "evil.test" });
    expect(h.status).toBe(421);
    expect(seen.length).toBe(before);
    expect(guest.events.filter((e) => e.type === "http.denied" && e.reason === "host-mismatch" && e.status === 421).length).toBeGreaterThanOrEqual(2);
    expect((await request(session, { ":path": "/after" })).status).toBe(200);
  });

  it("scrubs the middleware's value from echoed headers, bodies and gzip bodies", async () => {
    const e = await request(session, { ":path": "/echo" });
    expect(e.body).toBe("you sent [redacted]");
    expect(e.headers["x-echo-authorization"]).toBe("[redacted]");
    const g = await request(session, { ":path": "/gzip" });
    expect(g.body).toBe("echo: [redacted]");
    expect(g.headers["content-encoding"]).toBeUndefined();
    expect(JSON.stringify([e, g])).not.toContain("h2-secret-token");
  });

  it("an upstream that resets the stream gives the guest a 502 and an event; the connection serves on", async () => {
    const r = await request(session, { ":path": "/reset" });
    expect(r.status).toBe(502);
    expect(guest.events).toContainEqual(expect.objectContaining({ type: "http.upstream-error", url: "/reset", answered502: true }));
    expect((await request(session, { ":path": "/after-reset" })).status).toBe(200);
  });

  it("refuses TRACE (405) without reaching upstream", async () => {
    const before = seen.length;
    const r = await request(session, { ":path": "/", ":method": "TRACE" });
    expect(r.status).toBe(405);
    expect(seen.length).toBe(before);
  });

  it("streams a 4 MiB request body upstream", async () => {
    const body = Buffer.alloc(4 * 1024 * 1024, 7);
    const r = await request(session, { ":path": "/size", ":method": "POST" }, body);
    expect(r.body).toBe(String(body.length));
    expect(seen.at(-1)).toMatchObject({ version: "2.0", method: "POST", bodyBytes: body.length });
  });
});

describe("HTTP/2 guest, HTTP/1.1-only upstream", () => {
  it("translates each stream to HTTP/1.1 upstream, with the middleware's header", async () => {
    const seen: { version: string; auth: string | undefined; host: string | undefined }[] = [];
    const up = await startUpstream((req, res) => {
      seen.push({ version: req.httpVersion, auth: req.headers.authorization, host: req.headers.host });
      res.end(`echo ${req.headers.authorization}`);
    });
    const guest = await startGuestSide(up.port, (req) => req.headers.set("authorization", TOKEN));
    const s = await guestSession(guest.port);
    try {
      const r = await request(s, { ":path": "/" });
      const r2 = await request(s, { ":path": "/again" });
      expect([r.status, r.body, r2.status]).toEqual([200, "echo [redacted]", 200]);
      expect(seen).toEqual([
        { version: "1.1", auth: TOKEN, host: `${HOST}:${guest.port}` },
        { version: "1.1", auth: TOKEN, host: `${HOST}:${guest.port}` },
      ]);
    } finally {
      s.destroy();
      await guest.close();
      await up.close();
    }
  });
});

describe("gRPC through interception", () => {
  it("a unary call reaches a grpc-js server with the middleware's metadata; status and trailers come back", async () => {
    const c = await certificates();
    const seen: { auth: unknown }[] = [];
    const server = new grpc.Server();
    const identity = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
    server.addService(
      {
        Echo: { path: "/test.Echo/Echo", requestStream: false, responseStream: false, requestSerialize: identity.serialize, requestDeserialize: identity.deserialize, responseSerialize: identity.serialize, responseDeserialize: identity.deserialize },
      },
      {
        Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          const md = call.metadata.getMap();
          seen.push({ auth: md.authorization });
          const trailer = new grpc.Metadata();
          trailer.set("x-trailer", "t1");
          cb(null, Buffer.concat([Buffer.from("echo:"), call.request]), trailer);
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(c.upstreamKey), cert_chain: Buffer.from(c.upstreamCert) }]), (err, p) => (err ? reject(err) : resolve(p))),
    );
    const guest = await startGuestSide(port, (req) => req.headers.set("authorization", TOKEN));
    const Client = grpc.makeGenericClientConstructor({ Echo: { path: "/test.Echo/Echo", requestStream: false, responseStream: false, requestSerialize: identity.serialize, requestDeserialize: identity.deserialize, responseSerialize: identity.serialize, responseDeserialize: identity.deserialize } }, "Echo");
    const client = new Client(`${GUEST_IP}:${guest.port}`, grpc.credentials.createSsl(Buffer.from(c.sandboxCa.certPem)), { "grpc.ssl_target_name_override": HOST, "grpc.default_authority": `${HOST}:${guest.port}` });
    try {
      const { reply, trailers } = await new Promise<{ reply: Buffer; trailers: grpc.Metadata }>((resolve, reject) => {
        let reply: Buffer | undefined;
        const call = (client as unknown as { Echo: (req: Buffer, cb: (err: Error | null, r: Buffer) => void) => grpc.ClientUnaryCall }).Echo(Buffer.from("ping"), (err, r) => (err ? reject(err) : (reply = r)));
        // The status (with the trailers) is emitted after the reply callback.
        call.on("status", (s: grpc.StatusObject) => (s.code === grpc.status.OK ? resolve({ reply: reply!, trailers: s.metadata }) : reject(new Error(s.details))));
      });
      expect(reply.toString()).toBe("echo:ping");
      expect(trailers.get("x-trailer")).toEqual(["t1"]);
      // grpc-js answers anything but content-type application/grpc with 415, so the call arriving is the check on it.
      expect(seen).toMatchObject([{ auth: TOKEN }]);
      expect(guest.events).toMatchObject([{ type: "http.request", protocol: "h2", url: "/test.Echo/Echo", status: 200 }]);
    } finally {
      client.close();
      server.forceShutdown();
      await guest.close();
    }
  });
});
