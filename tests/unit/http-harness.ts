/**
 * Real-socket harness for the HTTP interceptor: an upstream HTTPS (or HTTP)
 * server on loopback with a certificate from its own test CA, and a "guest
 * side" listener whose every accepted connection is handed to the
 * interceptor as an intercepted flow to that upstream. Clients (curl, git,
 * python, node) connect to the listener as a guest would, trusting the
 * sandbox CA.
 */
import { once } from "node:events";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createSandboxCa, generateRsaKey, type SandboxCa } from "../../src/network/http/ca.js";
import { createHttpInterceptor, type HttpInterceptor, type HttpInterceptorOptions } from "../../src/network/http/intercept.js";
import type { HttpEvent, HttpMiddleware } from "../../src/network/http/types.js";

export const HOST = "api.test";

let caches: { sandboxCa: SandboxCa; upstreamCa: SandboxCa; upstreamKey: string; upstreamCert: string; rogueCert: string; rogueKey: string } | undefined;

/** CAs and certificates shared by every test of a file (key generation is the slow part). */
export async function certificates() {
  if (!caches) {
    const [sandboxCa, upstreamCa, rogueCa, key] = await Promise.all([
      createSandboxCa(),
      createSandboxCa({ commonName: "test upstream CA" }),
      createSandboxCa({ commonName: "untrusted rogue CA" }),
      generateRsaKey(),
    ]);
    caches = {
      sandboxCa,
      upstreamCa,
      upstreamKey: key.privateKeyPem,
      upstreamCert: upstreamCa.issueLeaf(HOST, key),
      rogueKey: key.privateKeyPem,
      rogueCert: rogueCa.issueLeaf(HOST, key),
    };
  }
  return caches;
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface Upstream {
  server: Server;
  port: number;
  close(): Promise<void>;
}

export async function startUpstream(handler: Handler, opts: { tls?: boolean; rogue?: boolean } = {}): Promise<Upstream> {
  const c = await certificates();
  const server =
    opts.tls === false
      ? createHttpServer(handler)
      : createHttpsServer({ key: opts.rogue ? c.rogueKey : c.upstreamKey, cert: opts.rogue ? c.rogueCert : c.upstreamCert }, handler);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => {
      server.closeAllConnections?.();
      server.close(() => r());
    }),
  };
}

/** The guest side listens on this loopback address, on the same port as the upstream (so Host `api.test:PORT` names the flow's real destination port). */
export const GUEST_IP = "127.0.0.2";

export interface Guest {
  /** Port the "guest" clients connect to (on GUEST_IP); equal to the upstream's port. */
  port: number;
  events: HttpEvent[];
  interceptor: HttpInterceptor;
  /** The sandbox CA certificate, as a file for curl/git/python. */
  caFile: string;
  close(): Promise<void>;
}

/**
 * A listener on 127.0.0.1 whose connections become intercepted flows for
 * `hostname` to the upstream at 127.0.0.1:`upstreamPort`.
 */
export async function startGuestSide(
  upstreamPort: number,
  middleware: HttpMiddleware,
  options: Partial<HttpInterceptorOptions> & { hostname?: string; trustUpstreamCa?: boolean; allowInsecure?: boolean; secrets?: HttpMiddleware } = {},
): Promise<Guest> {
  const c = await certificates();
  const events: HttpEvent[] = [];
  const interceptor = createHttpInterceptor({
    ca: c.sandboxCa,
    upstreamCa: options.trustUpstreamCa === false ? undefined : c.upstreamCa.certPem,
    onEvent: (e) => events.push(e),
    ...options,
  });
  const server: NetServer = createNetServer((socket) => {
    void interceptor.handle(socket, {
      src: { ip: socket.remoteAddress ?? "127.0.0.1", port: socket.remotePort ?? 0 },
      dst: { ip: "127.0.0.1", port: upstreamPort },
      hostname: options.hostname ?? HOST,
      middleware,
      secrets: options.secrets,
      allowInsecure: options.allowInsecure,
    });
  });
  server.listen(upstreamPort, GUEST_IP);
  await once(server, "listening");
  const dir = mkdtempSync(join(tmpdir(), "http-intercept-"));
  const caFile = join(dir, "sandbox-ca.crt");
  writeFileSync(caFile, c.sandboxCa.certPem);
  return {
    port: (server.address() as AddressInfo).port,
    events,
    interceptor,
    caFile,
    async close() {
      await interceptor.close();
      await new Promise<void>((r) => server.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Collects a request body. */
export async function readBody(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of req) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

/** A raw guest connection (TLS with the sandbox CA unless `plain`), for hand-written requests. */
export async function rawConnect(
  port: number,
  opts: { plain?: boolean; servername?: string | false; alpn?: string[] } = {},
): Promise<TLSSocket | Socket> {
  const c = await certificates();
  if (opts.plain) {
    const s = netConnect({ host: GUEST_IP, port });
    await once(s, "connect");
    return s;
  }
  const s = tlsConnect({
    host: GUEST_IP,
    port,
    ...(opts.servername === false ? {} : { servername: opts.servername ?? HOST }),
    ca: c.sandboxCa.certPem,
    ALPNProtocols: opts.alpn,
    // Without SNI the name check still has to be against the trusted hostname.
    checkServerIdentity: (_name, cert) => (cert.subjectaltname === `DNS:${HOST}` ? undefined : new Error(`unexpected certificate ${cert.subjectaltname}`)),
  });
  await once(s, "secureConnect");
  return s;
}

/** Reads from `s` until `done(text)` says so, the socket closes, or `timeoutMs` passes. */
export function readUntil(s: Socket, done: (text: string) => boolean = () => false, timeoutMs = 10_000): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    let text = "";
    const finish = (closed: boolean) => {
      clearTimeout(timer);
      s.off("data", onData);
      s.off("close", onClose);
      resolve({ text, closed });
    };
    const onData = (d: Buffer) => {
      text += d.toString("latin1");
      if (done(text)) finish(false);
    };
    const onClose = () => finish(true);
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on("data", onData);
    s.once("close", onClose);
    s.on("error", () => {});
  });
}

/** Whether `text` holds one complete response with a Content-Length body. */
export function completeResponse(text: string): boolean {
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) return false;
  const m = /content-length: (\d+)/i.exec(text.slice(0, end));
  return m !== null && text.length >= end + 4 + Number(m[1]);
}
