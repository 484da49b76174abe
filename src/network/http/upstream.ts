/**
 * The upstream side of an intercepted flow: an undici client that connects to
 * exactly the address the guest connected to (`flow.dst`, never a fresh DNS
 * lookup on the host) and, for TLS, verifies the server certificate for the
 * trusted hostname (SNI and name check = `flow.hostname`) against the system
 * roots plus any explicitly configured extra CAs. HTTP/1.1 guests get an
 * HTTP/1.1 upstream; HTTP/2 guests get the upstream ALPN picks (upstream-h2.ts).
 */
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, createSecureContext, rootCertificates, type SecureContext } from "node:tls";
import { Client } from "undici";
import type { InterceptedFlow } from "./types.js";

export interface UpstreamOptions {
  /** Extra CA certificates (PEM) trusted for upstream servers, on top of Node's root store. */
  upstreamCa?: string | readonly string[];
  /** TCP + TLS connect deadline. Default 30 s. */
  connectTimeoutMs?: number;
}

/** Shared, immutable upstream TLS settings of one interceptor. */
export class UpstreamTls {
  readonly context: SecureContext;
  constructor(options: UpstreamOptions) {
    const extra = options.upstreamCa === undefined ? [] : typeof options.upstreamCa === "string" ? [options.upstreamCa] : [...options.upstreamCa];
    // `ca` replaces the default roots, so keep them explicitly.
    this.context = createSecureContext({ ca: [...rootCertificates, ...extra], minVersion: "TLSv1.2" });
  }
}

/** One undici client per intercepted guest connection (kept alive like the guest's). */
export function createUpstreamClient(
  flow: InterceptedFlow,
  useTls: boolean,
  tlsSettings: UpstreamTls,
  connectTimeoutMs: number,
  /** An already verified TLS connection (ALPN chose http/1.1) to use for the first connect. */
  first?: Socket,
): Client {
  let ready = first;
  const origin = `${useTls ? "https" : "http"}://${flow.hostname}:${flow.dst.port}`;
  return new Client(origin, {
    pipelining: 1,
    connect: (_opts, callback) => {
      if (ready && !ready.destroyed) {
        const s = ready;
        ready = undefined;
        // undici expects the callback after connect() has returned.
        setImmediate(() => callback(null, s));
        return;
      }
      ready = undefined;
      let socket: Socket;
      if (useTls) {
        socket = tlsConnect({
          host: flow.dst.ip,
          port: flow.dst.port,
          servername: flow.hostname,
          secureContext: tlsSettings.context,
          ALPNProtocols: ["http/1.1"],
          rejectUnauthorized: true,
        });
      } else {
        socket = netConnect({ host: flow.dst.ip, port: flow.dst.port });
      }
      const timer = setTimeout(() => fail(Object.assign(new Error(`connecting to ${flow.dst.ip}:${flow.dst.port} timed out`), { code: "UND_ERR_CONNECT_TIMEOUT" })), connectTimeoutMs);
      const done = () => {
        clearTimeout(timer);
        socket.off("error", fail);
        socket.setNoDelay(true);
        callback(null, socket);
      };
      function fail(err: Error) {
        clearTimeout(timer);
        socket.off("error", fail);
        socket.destroy();
        callback(err, null);
      }
      socket.once(useTls ? "secureConnect" : "connect", done);
      socket.once("error", fail);
    },
  });
}
