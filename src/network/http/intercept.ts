/**
 * The HTTP interceptor: the handler the network plumbing calls with each flow
 * accepted by `matchHttp(...).accept(middleware)`.
 *
 * TLS or plain HTTP is decided by sniffing the guest's first byte (0x16, a TLS
 * handshake record, means TLS), not by port: HTTPS on 8443 and plain HTTP on
 * 8080 work, and a CONNECT tunnel's content is sniffed the same way. Guest
 * TLS is terminated with a leaf certificate for the flow's trusted hostname,
 * issued by the sandbox CA; the ClientHello's SNI must name that hostname
 * (absent SNI: the trusted hostname is used). ALPN offers `h2` and `http/1.1`:
 * an h2 connection is served by node:http2 (h2-session.ts), every stream checked
 * and passed through the middleware like an HTTP/1.1 request; plain HTTP is
 * HTTP/1.1 only (no h2c), so every request stays visible to the middleware.
 */
import { isIP } from "node:net";
import type { Duplex } from "node:stream";
import { TLSSocket } from "node:tls";
import type { Client } from "undici";
import type { SandboxCa } from "./ca.js";
import { LeafCertificates } from "./leaf-certs.js";
import { normalizeHostname, parseAuthority } from "./request.js";
import { Redactions } from "./scrub.js";
import type { Redaction } from "./secrets.js";
import { serveH2 } from "./h2-session.js";
import { HttpSession } from "./session.js";
import type { HttpEvent, InterceptedFlow, InterceptHandler } from "./types.js";
import { createUpstreamClient, UpstreamTls, type UpstreamOptions } from "./upstream.js";
import { H2UpstreamPool } from "./upstream-h2.js";

/** Options of `createHttpInterceptor`. */
export interface HttpInterceptorOptions extends UpstreamOptions {
  /** The sandbox's CA; its certificate is what the guest trusts. */
  ca: SandboxCa;
  /** Receives every interception event (requests, denials, upstream and protocol errors). */
  onEvent?: (event: HttpEvent) => void;
  /** Deadline for the middleware of one request; past it the request is denied (403). Default 30 s. */
  middlewareTimeoutMs?: number;
  /** Deadline for the guest's first byte, TLS handshake and first request head. Default 30 s. */
  handshakeTimeoutMs?: number;
  /**
   * Values scrubbed from every response (the secrets' real values → placeholders).
   * Header values a middleware sets are scrubbed too (→ `[redacted]`), without listing them here.
   */
  redactions?: readonly Redaction[];
}

/** Serves intercepted HTTP(S) flows: terminates the guest's TLS with the CA's leaf certificates, checks every request against the trusted hostname, runs the middleware, forwards with verified TLS. */
export interface HttpInterceptor {
  /** Serves one intercepted flow (give it to the intercept server). */
  readonly handle: InterceptHandler;
  /** Leaf certificates of this interceptor (one shared key, cached per hostname). */
  readonly leaves: LeafCertificates;
  /** Ends every open flow and upstream connection. */
  close(): Promise<void>;
}

const TLS_HANDSHAKE_RECORD = 0x16;
const DNS_NAME = /^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*$/;

/** An HTTP(S) interceptor for one sandbox's CA (the boot wires one per lane; tests and custom setups make their own). */
export function createHttpInterceptor(options: HttpInterceptorOptions): HttpInterceptor {
  const leaves = new LeafCertificates(options.ca);
  leaves.warm();
  const upstreamTls = new UpstreamTls(options);
  const connectTimeoutMs = options.connectTimeoutMs ?? 30_000;
  const middlewareTimeoutMs = options.middlewareTimeoutMs ?? 30_000;
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? 30_000;
  const redactions = new Redactions(options.redactions);
  const emit = (event: HttpEvent) => {
    try {
      options.onEvent?.(event);
    } catch {
      // An observer's bug must not break the flow.
    }
  };
  const open = new Set<Duplex>();
  const clients = new Set<Client>();
  const pools = new Set<H2UpstreamPool>();

  async function serve(stream: Duplex, flow: InterceptedFlow, tunnelled: boolean): Promise<void> {
    const first = await firstByte(stream, handshakeTimeoutMs);
    if (first === undefined) {
      if (!stream.destroyed) {
        emit({ type: "http.protocol-error", ...ends(flow), reason: "idle", message: `the guest sent nothing within ${handshakeTimeoutMs} ms; connection closed` });
      }
      stream.destroy();
      return;
    }
    let inner: Duplex = stream;
    let useTls = false;
    if (first === TLS_HANDSHAKE_RECORD) {
      const terminated = await terminateTls(stream, flow);
      if (!terminated) return;
      inner = terminated.tls;
      flow = terminated.flow;
      useTls = true;
      if (terminated.tls.alpnProtocol === "h2") {
        const upstream = new H2UpstreamPool(flow, upstreamTls, connectTimeoutMs);
        pools.add(upstream);
        try {
          await serveH2(terminated.tls, { flow, upstream, middlewareTimeoutMs, headTimeoutMs: handshakeTimeoutMs, emit, redactions });
        } finally {
          pools.delete(upstream);
          upstream.close();
        }
        return;
      }
    } else if (flow.alternatives?.length) {
      // Plain HTTP to a shared address: the first request's Host picks the accepted name.
      const host = await peekHost(stream, handshakeTimeoutMs);
      flow = chooseName(flow, host ? parseAuthority(host)?.host : undefined);
    }
    let client: Client | undefined;
    const session = new HttpSession(inner, {
      flow,
      protocol: useTls ? "https:" : "http:",
      upstream: () => {
        if (!client) {
          client = createUpstreamClient(flow, useTls, upstreamTls, connectTimeoutMs);
          clients.add(client);
        }
        return client;
      },
      middlewareTimeoutMs,
      headTimeoutMs: handshakeTimeoutMs,
      emit,
      redactions,
      serveTunnel: tunnelled ? undefined : (s) => serve(s, flow, true),
    });
    try {
      await session.run();
    } finally {
      if (client) {
        clients.delete(client);
        client.destroy().catch(() => {});
      }
    }
  }

  async function terminateTls(stream: Duplex, flow: InterceptedFlow): Promise<{ tls: TLSSocket; flow: InterceptedFlow } | undefined> {
    let context;
    try {
      context = await leaves.contextFor(flow.hostname);
    } catch (err) {
      emit({ type: "http.protocol-error", ...ends(flow), reason: "tls", message: `could not issue a certificate for ${flow.hostname}: ${(err as Error).message}` });
      stream.destroy();
      return undefined;
    }
    let sniMismatch: string | undefined;
    let chosen = flow;
    const tls = new TLSSocket(stream as never, {
      isServer: true,
      secureContext: context,
      ALPNProtocols: ["h2", "http/1.1"],
      SNICallback: (servername, cb) => {
        const name = normalizeHostname(servername);
        if (name === flow.hostname) return cb(null, context);
        // Another accepted name of this address (several names behind one CDN IP).
        if (flow.alternatives?.some((a) => normalizeHostname(a.hostname) === name)) {
          chosen = chooseName(flow, name);
          leaves.contextFor(chosen.hostname).then((c) => cb(null, c), (err: Error) => cb(err, undefined));
          return;
        }
        sniMismatch = servername;
        cb(new Error(`SNI ${servername} does not match ${flow.hostname}`), undefined);
      },
    });
    open.add(tls);
    tls.once("close", () => open.delete(tls));
    return new Promise((resolve) => {
      const timer = setTimeout(() => fail(new Error(`TLS handshake not finished within ${handshakeTimeoutMs} ms`)), handshakeTimeoutMs);
      const fail = (err: Error) => {
        clearTimeout(timer);
        if (sniMismatch !== undefined) {
          emit({
            type: "http.denied",
            ...ends(flow),
            reason: "sni-mismatch",
            message: `TLS server name ${JSON.stringify(sniMismatch)} does not match ${flow.hostname}, the only host this connection may reach; handshake refused`,
          });
        } else {
          emit({ type: "http.protocol-error", ...ends(flow), reason: "tls", message: `guest TLS handshake failed: ${err.message}` });
        }
        tls.destroy();
        stream.destroy();
        resolve(undefined);
      };
      tls.once("error", fail);
      tls.once("secure", () => {
        clearTimeout(timer);
        tls.off("error", fail);
        tls.on("error", () => tls.destroy());
        resolve({ tls, flow: chosen });
      });
    });
  }

  const handle: InterceptHandler = async (socket, flow) => {
    open.add(socket);
    socket.once("close", () => open.delete(socket));
    socket.on("error", () => {});
    try {
      const hostname = normalizeHostname(flow.hostname);
      // Interception needs a trusted name to check Host/SNI against and to verify upstream; an IP is not one.
      if (!DNS_NAME.test(hostname) || isIP(hostname) !== 0) {
        throw new Error(`flow.hostname ${JSON.stringify(flow.hostname)} is not a DNS name; IP-addressed flows cannot be intercepted`);
      }
      socket.setNoDelay(true);
      await serve(socket, { ...flow, hostname }, false);
    } catch (err) {
      emit({ type: "http.protocol-error", ...ends(flow), reason: "internal", message: `flow refused: ${(err as Error).message}` });
    } finally {
      socket.destroy();
    }
  };

  return {
    handle,
    leaves,
    async close() {
      for (const s of open) s.destroy();
      for (const p of pools) p.close();
      await Promise.all([...clients].map((c) => c.destroy().catch(() => {})));
    },
  };
}

/** The flow as seen for `name` when it is one of its accepted alternatives; else unchanged. */
function chooseName(flow: InterceptedFlow, name: string | undefined): InterceptedFlow {
  const alt = name === undefined ? undefined : flow.alternatives?.find((a) => normalizeHostname(a.hostname) === name);
  if (!alt) return flow;
  return { ...flow, hostname: normalizeHostname(alt.hostname), middleware: alt.middleware, secrets: alt.secrets, allowInsecure: alt.allowInsecure, alternatives: [] };
}

/** Longest head looked at to find the first request's Host. */
const PEEK_MAX = 16 * 1024;

/** Reads (and puts back) up to the end of the first request head; its Host value, if any. */
function peekHost(stream: Duplex, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const done = () => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", done);
      stream.pause();
      if (buf.length) stream.unshift(buf);
      const head = buf.subarray(0, buf.indexOf("\r\n\r\n") >= 0 ? buf.indexOf("\r\n\r\n") : buf.length).toString("latin1");
      resolve(/\r\nhost:[ \t]*([^\r\n]*)/i.exec(head)?.[1]?.trim());
    };
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const eol = buf.indexOf("\r\n");
      // Not an HTTP request line (an SSH banner…): stop looking; the session fails it closed.
      if (eol >= 0 && !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP\/\d\.\d$/.test(buf.subarray(0, eol).toString("latin1"))) return done();
      if (buf.includes("\r\n\r\n") || buf.length >= PEEK_MAX) done();
    };
    const timer = setTimeout(done, timeoutMs);
    stream.on("data", onData);
    stream.once("end", done);
    stream.resume();
  });
}

function ends(flow: InterceptedFlow) {
  return { hostname: flow.hostname, src: flow.src, dst: flow.dst };
}

/** Peeks at the first byte without consuming it; undefined on timeout or end. */
function firstByte(stream: Duplex, timeoutMs: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const done = (v: number | undefined) => {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("close", onEnd);
      resolve(v);
    };
    const onData = (chunk: Buffer) => {
      stream.pause();
      stream.unshift(chunk);
      done(chunk[0]);
    };
    const onEnd = () => done(undefined);
    const timer = setTimeout(() => done(undefined), timeoutMs);
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.once("close", onEnd);
    stream.resume();
  });
}
