/**
 * The upstream of an HTTP/2 guest connection: one verified TLS connection to
 * exactly `flow.dst`, offering ALPN `h2` then `http/1.1`. When the server picks
 * h2, each guest stream becomes a stream of one node:http2 client session;
 * when it picks http/1.1 (or nothing), the requests are translated to HTTP/1.1
 * over an undici client (the first connection reused). Either way the server
 * certificate is verified for the trusted hostname, and the session is this
 * guest connection's only: nothing another flow sent can share it.
 */
import { connect as http2Connect, constants, type ClientHttp2Session } from "node:http2";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import type { Client } from "undici";
import type { InterceptedFlow } from "./types.js";
import { createUpstreamClient, type UpstreamTls } from "./upstream.js";

export type H2Upstream =
  | { readonly kind: "h2"; readonly session: ClientHttp2Session }
  | { readonly kind: "h1"; readonly client: Client };

/** Lazily connected, reconnected when an h2 session has ended; `close()` ends it. */
export class H2UpstreamPool {
  readonly #flow: InterceptedFlow;
  readonly #tls: UpstreamTls;
  readonly #timeoutMs: number;
  #current: Promise<H2Upstream> | undefined;
  #closed = false;

  constructor(flow: InterceptedFlow, tls: UpstreamTls, connectTimeoutMs: number) {
    this.#flow = flow;
    this.#tls = tls;
    this.#timeoutMs = connectTimeoutMs;
  }

  /** The upstream for the next stream (connects on first use). */
  async get(): Promise<H2Upstream> {
    if (this.#closed) throw new Error("the guest connection is closed");
    if (this.#current) {
      const up = await this.#current.catch(() => undefined);
      if (up && !(up.kind === "h2" && (up.session.closed || up.session.destroyed))) return up;
    }
    const next = this.#connect();
    this.#current = next;
    next.catch(() => {
      if (this.#current === next) this.#current = undefined;
    });
    return next;
  }

  close(): void {
    this.#closed = true;
    const current = this.#current;
    this.#current = undefined;
    void current?.then(
      (up) => (up.kind === "h2" ? up.session.destroy() : void up.client.destroy().catch(() => {})),
      () => {},
    );
  }

  #connect(): Promise<H2Upstream> {
    const flow = this.#flow;
    return new Promise((resolve, reject) => {
      const socket: TLSSocket = tlsConnect({
        host: flow.dst.ip,
        port: flow.dst.port,
        servername: flow.hostname,
        secureContext: this.#tls.context,
        ALPNProtocols: ["h2", "http/1.1"],
        rejectUnauthorized: true,
      });
      const timer = setTimeout(
        () => fail(Object.assign(new Error(`connecting to ${flow.dst.ip}:${flow.dst.port} timed out`), { code: "UND_ERR_CONNECT_TIMEOUT" })),
        this.#timeoutMs,
      );
      function fail(err: Error) {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      }
      socket.once("error", fail);
      socket.once("secureConnect", () => {
        clearTimeout(timer);
        socket.off("error", fail);
        socket.setNoDelay(true);
        if (this.#closed) {
          socket.destroy();
          reject(new Error("the guest connection is closed"));
          return;
        }
        if (socket.alpnProtocol === "h2") {
          const origin = `https://${flow.hostname}${flow.dst.port === 443 ? "" : `:${flow.dst.port}`}`;
          const session = http2Connect(origin, {
            createConnection: () => socket,
            settings: { enablePush: false },
            maxHeaderListPairs: 256,
          });
          session.on("error", () => {});
          // Server push is off; refuse any pushed stream anyway.
          session.on("stream", (pushed) => pushed.close(constants.NGHTTP2_REFUSED_STREAM));
          resolve({ kind: "h2", session });
        } else {
          socket.on("error", () => {});
          resolve({ kind: "h1", client: createUpstreamClient(flow, true, this.#tls, this.#timeoutMs, socket) });
        }
      });
    });
  }
}
