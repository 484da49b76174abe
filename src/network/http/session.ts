/**
 * One HTTP/1.1 connection from the guest, after TLS (if any) is terminated:
 * requests are parsed with http-parser-js, checked, passed through the
 * middleware one at a time (every request of a kept-alive connection), sent
 * upstream with undici and the responses streamed back. Bodies stream in both
 * directions with backpressure: the guest socket is paused while a request
 * body waits for upstream to take it, and response chunks are written only as
 * fast as the guest reads them.
 */
import { Readable, type Duplex } from "node:stream";
import { HTTPParser } from "http-parser-js";
import type { Client } from "undici";
import { createRequestParser, hasHeader, headerValue, rawValues } from "./parser.js";
import { admitRequest } from "./admit.js";
import { relay } from "./relay.js";
import { checkConnectTarget, checkRequest, RequestRejection, type CheckedRequest } from "./request.js";
import { headerLines, plainResponse, scrubHeaders, sendResponse, statusLine, UnscannableBodyError, writeAsync, type ResponseHeaders } from "./response.js";
import type { Redactions } from "./scrub.js";
import type { HttpDenyReason, HttpEvent, InterceptedFlow, InterceptedRequest } from "./types.js";

const BODY_HIGH_WATER = 64 * 1024;

export interface SessionContext {
  flow: InterceptedFlow;
  protocol: "https:" | "http:";
  /** Lazily creates the upstream client of this connection. */
  upstream: () => Client;
  middlewareTimeoutMs: number;
  /** Deadline for the first request head. */
  headTimeoutMs: number;
  emit: (event: HttpEvent) => void;
  /** The lane's values to scrub from responses; header values the middleware sets are added here. */
  redactions: Redactions;
  /** Serves a CONNECT tunnel's inner stream as a new flow (sniffing TLS vs plain again). */
  serveTunnel: ((stream: Duplex) => Promise<void>) | undefined;
}

interface Pending {
  method: string;
  target: string;
  rawHeaders: string[];
  http10: boolean;
  keepAlive: boolean;
  /** CONNECT or WebSocket upgrade: the parser stopped; the rest of the stream is raw. */
  tunnel: boolean;
  body: Readable | undefined;
  /** Raw bytes after the head of a CONNECT / upgrade request. */
  head: Buffer;
  /** Framing the parser must not act on (e.g. a negative Content-Length): parsing stops here. */
  halt: boolean;
}

export class HttpSession {
  readonly #stream: Duplex;
  readonly #ctx: SessionContext;
  readonly #parser = createRequestParser();
  readonly #queue: Pending[] = [];
  #parsing: Pending | undefined;
  readonly #pauses = new Set<string>();
  #running = false;
  #readEnded = false;
  #stopped = false;
  #handedOff = false;
  #requests = 0;
  #headTimer: NodeJS.Timeout | undefined;
  readonly #done: Promise<void>;
  #resolveDone!: () => void;

  constructor(stream: Duplex, ctx: SessionContext) {
    this.#stream = stream;
    this.#ctx = ctx;
    this.#done = new Promise((r) => (this.#resolveDone = r));
    this.#parser[HTTPParser.kOnHeadersComplete] = (info) => this.#onHead(info);
    this.#parser[HTTPParser.kOnBody] = (chunk: Buffer) => this.#onBody(chunk);
    this.#parser[HTTPParser.kOnMessageComplete] = () => this.#onMessageComplete();
  }

  /** Serves the connection; resolves when it is finished. */
  run(): Promise<void> {
    const s = this.#stream;
    // A client that never completes a first request head is not speaking HTTP (or is gone).
    this.#headTimer = setTimeout(() => this.#protocolError(new Error(`no complete HTTP request head within ${this.#ctx.headTimeoutMs} ms`), "idle"), this.#ctx.headTimeoutMs);
    this.#headTimer.unref();
    s.on("data", this.#onData);
    s.on("end", this.#onEnd);
    s.on("error", () => s.destroy());
    // Done only once the connection is really closed: ending a TLS stream flushes asynchronously.
    s.on("close", () => this.#finish());
    s.resume();
    return this.#done;
  }

  readonly #onData = (chunk: Buffer) => {
    let offset = 0;
    while (offset < chunk.length && !this.#stopped) {
      let r: number | Error;
      try {
        r = this.#parser.execute(chunk.subarray(offset));
      } catch (err) {
        // http-parser-js rethrows when a callback of ours was on the stack; treat as malformed input.
        r = err instanceof Error ? err : new Error(String(err));
      }
      if (r instanceof Error) {
        this.#protocolError(r);
        return;
      }
      offset += r;
      if (this.#parsing?.halt) {
        // A head we refuse to frame: answer it (400) and read nothing more.
        this.#stopReading();
        return;
      }
      if (this.#parsing?.tunnel) {
        // Everything after a CONNECT / upgrade head belongs to the tunnel.
        this.#parsing.head = chunk.subarray(offset);
        this.#stopReading();
        return;
      }
      if (r === 0) break;
    }
  };

  readonly #onEnd = () => {
    this.#readEnded = true;
    if (!this.#stopped) {
      const err = this.#parser.finish();
      if (err instanceof Error && this.#parsing === undefined) this.#protocolError(err);
    }
    this.#maybeClose();
  };

  #onHead(info: { method: number; url: string; versionMajor: number; versionMinor: number; headers: string[]; upgrade: boolean; shouldKeepAlive: boolean }): number {
    clearTimeout(this.#headTimer);
    const method = HTTPParser.methods[info.method] ?? "GET";
    const http10 = info.versionMajor === 1 && info.versionMinor === 0;
    const connect = method === "CONNECT";
    // A WebSocket upgrade (checked again in checkRequest) ends HTTP on this connection.
    const upgradeTokens = headerValue(info.headers, "upgrade")?.toLowerCase() ?? "";
    const tunnel = connect || (info.upgrade && upgradeTokens.split(",").some((t) => t.trim() === "websocket"));
    const req: Pending = {
      method,
      target: info.url,
      rawHeaders: info.headers,
      http10,
      keepAlive: info.shouldKeepAlive,
      tunnel,
      body: undefined,
      head: Buffer.alloc(0),
      halt: false,
    };
    // http-parser-js takes Content-Length through Number(): "-5" or "1e3" would move its
    // cursor; such heads skip the body and end parsing (checkRequest answers 400).
    if (!tunnel && rawValues(info.headers, "content-length").some((v) => !/^\d{1,15}$/.test(v.trim()))) {
      req.halt = true;
      this.#parsing = req;
      this.#queue.push(req);
      queueMicrotask(() => void this.#pump());
      return 1;
    }
    if (!tunnel && (hasHeader(info.headers, "content-length", (v) => v.trim() !== "0") || hasHeader(info.headers, "transfer-encoding"))) {
      req.body = new Readable({ highWaterMark: BODY_HIGH_WATER, read: () => this.#unpause(`body`) });
    }
    this.#parsing = req;
    this.#queue.push(req);
    // One request waiting behind the active one is enough read-ahead.
    if (this.#queue.length >= 2) this.#pause("queue");
    queueMicrotask(() => void this.#pump());
    // 1 = skip the body: a tunnel's bytes are not HTTP.
    return tunnel ? 1 : 0;
  }

  #onBody(chunk: Buffer): void {
    const body = this.#parsing?.body;
    if (!body) return;
    if (!body.push(chunk)) this.#pause("body");
  }

  #onMessageComplete(): void {
    this.#parsing?.body?.push(null);
  }

  async #pump(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      while (this.#queue.length > 0 && !this.#stream.destroyed) {
        const req = this.#queue[0]!;
        const keep = await this.#handle(req).catch((err: unknown) => {
          this.#ctx.emit({
            type: "http.protocol-error",
            ...endpoints(this.#ctx.flow),
            reason: "internal",
            message: `interceptor failure while serving ${req.method} ${req.target}: ${err instanceof Error ? err.message : String(err)}`,
          });
          return false;
        });
        this.#queue.shift();
        if (this.#queue.length < 2) this.#unpause("queue");
        if (!keep) {
          this.#close();
          return;
        }
      }
    } finally {
      this.#running = false;
    }
    this.#maybeClose();
  }

  /** Handles one request; resolves whether the connection may serve another. */
  async #handle(req: Pending): Promise<boolean> {
    const { flow } = this.#ctx;
    const started = performance.now();
    this.#requests++;
    let checked: CheckedRequest;
    try {
      // TRACE echoes the request, credentials the host added included, back to the guest.
      if (req.method === "TRACE" || req.method === "TRACK") {
        throw new RequestRejection(405, "method-refused", `${req.method} is refused on intercepted connections (it would echo the credentials added on the host)`);
      }
      if (req.method === "CONNECT") {
        checkConnectTarget(req.target, flow.hostname, flow.dst.port);
        return await this.#tunnel(req);
      }
      checked = checkRequest(req.method, req.target, req.rawHeaders, req.http10, flow.hostname, flow.dst.port);
    } catch (err) {
      if (err instanceof RequestRejection) return this.#reject(req, err.status, err.reason, err.message);
      throw err;
    }

    const request: InterceptedRequest = Object.freeze({
      method: req.method,
      url: checked.path,
      protocol: "h1",
      scheme: this.#ctx.protocol,
      hostname: flow.hostname,
      src: flow.src,
      dst: flow.dst,
      headers: checked.headers,
    });
    const refused = await admitRequest(flow, request, this.#ctx.middlewareTimeoutMs, this.#ctx.redactions);
    if (refused) return this.#reject(req, refused.status, refused.reason, refused.message, refused.detail);

    if (checked.upgrade) return this.#upgrade(req, checked, request, started);
    if (checked.expectContinue) await writeAsync(this.#stream, "HTTP/1.1 100 Continue\r\n\r\n");

    const abort = new AbortController();
    const onClose = () => abort.abort(new Error("guest connection closed"));
    this.#stream.once("close", onClose);
    let responded = false;
    try {
      const res = await this.#ctx.upstream().request({
        method: req.method,
        path: checked.path,
        headers: checked.headers.toFlat(),
        body: req.body ?? null,
        signal: abort.signal,
      });
      responded = true;
      const keepAlive = await sendResponse(
        this.#stream,
        { status: res.statusCode, headers: res.headers as ResponseHeaders, body: res.body },
        { method: req.method, http10: req.http10, keepAlive: req.keepAlive, scrub: this.#ctx.redactions.rules() },
      ).catch(async (err) => {
        res.body.destroy();
        if (err instanceof UnscannableBodyError) {
          this.#ctx.emit({ type: "http.denied", ...endpoints(flow), reason: "unscannable-body", message: err.message, method: req.method, url: checked.path, status: 502 });
          await writeAsync(this.#stream, plainResponse(502, `sandbox: ${err.message}`, true)).catch(() => {});
          return false;
        }
        throw err;
      });
      this.#ctx.emit({
        type: "http.request",
        ...endpoints(flow),
        method: req.method,
        url: checked.path,
        protocol: "h1",
        scheme: this.#ctx.protocol,
        status: res.statusCode,
        durationMs: performance.now() - started,
      });
      // A body the upstream did not read leaves the parser mid-request: end the connection.
      return keepAlive && (req.body === undefined || req.body.readableEnded);
    } catch (err) {
      if (this.#stream.destroyed) return false;
      const e = err as Error & { code?: string };
      const code = e.code ?? e.name ?? "ERROR";
      this.#ctx.emit({
        type: "http.upstream-error",
        ...endpoints(flow),
        method: req.method,
        url: checked.path,
        code,
        message: e.message,
        answered502: !responded,
      });
      if (!responded) {
        await writeAsync(
          this.#stream,
          plainResponse(502, `sandbox: the upstream request to ${flow.hostname} failed: ${code}: ${e.message}`, true),
        ).catch(() => {});
      } else {
        this.#stream.destroy();
      }
      return false;
    } finally {
      this.#stream.off("close", onClose);
      if (req.body && !req.body.readableEnded) req.body.destroy();
    }
  }

  async #reject(req: Pending, status: number, reason: HttpDenyReason, message: string, detail?: string): Promise<boolean> {
    this.#ctx.emit({
      type: "http.denied",
      ...endpoints(this.#ctx.flow),
      reason,
      message: detail ? `${message}: ${detail}` : message,
      method: req.method,
      url: req.target,
      status,
    });
    await writeAsync(this.#stream, plainResponse(status, `sandbox: ${message}`, true)).catch(() => {});
    return false;
  }

  /** WebSocket: after the middleware, undici performs the upgrade; then bytes are relayed both ways. */
  async #upgrade(req: Pending, checked: CheckedRequest, request: InterceptedRequest, started: number): Promise<boolean> {
    const { flow } = this.#ctx;
    this.#handedOff = true;
    let up: Duplex;
    let headers: ResponseHeaders;
    try {
      const res = await this.#ctx.upstream().upgrade({
        path: checked.path,
        method: req.method,
        headers: checked.headers.toFlat(),
        protocol: checked.upgrade!,
      });
      up = res.socket;
      headers = res.headers as ResponseHeaders;
    } catch (err) {
      const e = err as Error & { code?: string };
      const code = e.code ?? "ERROR";
      this.#ctx.emit({ type: "http.upstream-error", ...endpoints(flow), method: req.method, url: request.url, code, message: e.message, answered502: true });
      const why = e.message === "bad upgrade" ? "the upstream server did not switch protocols" : `${code}: ${e.message}`;
      await writeAsync(this.#stream, plainResponse(502, `sandbox: the WebSocket upgrade to ${flow.hostname} failed: ${why}`, true)).catch(() => {});
      return false;
    }
    const guest = this.#stream;
    guest.off("data", this.#onData);
    guest.off("end", this.#onEnd);
    guest.write(statusLine(101) + headerLines(scrubHeaders(headers, this.#ctx.redactions.rules()), new Set()) + "\r\n");
    this.#ctx.emit({
      type: "http.request",
      ...endpoints(flow),
      method: req.method,
      url: request.url,
      protocol: "h1",
      scheme: this.#ctx.protocol,
      status: 101,
      durationMs: performance.now() - started,
    });
    if (req.head.length) up.write(req.head);
    await relay(guest, up);
    return false;
  }

  /** An accepted CONNECT: answered here, and the tunnel's content is intercepted like the flow itself. */
  async #tunnel(req: Pending): Promise<boolean> {
    const serve = this.#ctx.serveTunnel;
    if (!serve) {
      return this.#reject(req, 403, "connect-target", "CONNECT inside a CONNECT tunnel is not allowed");
    }
    this.#handedOff = true;
    await writeAsync(this.#stream, "HTTP/1.1 200 Connection Established\r\n\r\n");
    this.#stream.off("data", this.#onData);
    this.#stream.off("end", this.#onEnd);
    if (req.head.length) this.#stream.unshift(req.head);
    await serve(this.#stream);
    return false;
  }

  #protocolError(err: Error, why?: "idle"): void {
    if (this.#stopped) return;
    clearTimeout(this.#headTimer);
    const first = this.#requests === 0 && this.#queue.length === 0;
    this.#stopped = true;
    this.#ctx.emit({
      type: "http.protocol-error",
      ...endpoints(this.#ctx.flow),
      reason: why ?? (first ? "not-http" : "parse"),
      message: why
        ? `${err.message}; connection closed`
        : first
        ? `the guest sent something that is not HTTP on a flow accepted for HTTP (${err.message}); connection closed`
        : `malformed HTTP from the guest (${(err as { code?: string }).code ?? err.message}); connection closed`,
    });
    // Requests parsed completely before the garbage are still answered; then the connection closes.
    const partial = this.#parsing?.body;
    if (partial && !partial.readableEnded) partial.destroy();
    this.#stream.pause();
    if (this.#queue.length === 0) this.#stream.destroy();
  }

  #pause(reason: string): void {
    this.#pauses.add(reason);
    this.#stream.pause();
  }

  #unpause(reason: string): void {
    this.#pauses.delete(reason);
    if (this.#pauses.size === 0 && !this.#stopped && !this.#handedOff) this.#stream.resume();
  }

  #stopReading(): void {
    this.#stopped = true;
    this.#stream.pause();
  }

  #maybeClose(): void {
    if ((this.#readEnded || this.#stopped) && this.#queue.length === 0 && !this.#running && !this.#handedOff) this.#close();
  }

  #close(): void {
    this.#stopped = true;
    if (!this.#stream.destroyed) {
      this.#stream.end();
      // A guest that never closes its side must not keep the socket forever.
      setTimeout(() => this.#stream.destroy(), 5_000).unref();
    }
  }

  #finish(): void {
    clearTimeout(this.#headTimer);
    for (const r of this.#queue) if (r.body && !r.body.readableEnded) r.body.destroy();
    this.#queue.length = 0;
    this.#resolveDone();
  }
}

function endpoints(flow: InterceptedFlow) {
  return { hostname: flow.hostname, src: flow.src, dst: flow.dst };
}
