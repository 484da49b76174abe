/**
 * One HTTP/2 connection from the guest (TLS ALPN chose `h2`), served with
 * node:http2. Every stream is a request checked on its own: its `:authority`
 * (and Host, if sent) must name the flow's trusted hostname, the same name the
 * TLS SNI was checked against, so connection coalescing cannot reach a name the
 * flow was not attributed to (a stream naming another host gets 421 Misdirected
 * Request, which tells a client to open a connection of its own for it). Then
 * the secrets and the middleware run exactly as for HTTP/1.1 (admit.ts), and
 * the request goes upstream over h2 when the server negotiates it, else
 * translated to HTTP/1.1. Responses are scrubbed as on HTTP/1.1, trailers
 * included (gRPC's `grpc-status` arrives in trailers). Bodies stream both ways
 * through node:http2 flow control: a stream is read only as fast as upstream
 * takes it, and written only as fast as the guest's window allows.
 */
import { once } from "node:events";
import {
  constants,
  createServer,
  type ClientHttp2Stream,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from "node:http2";
import { PassThrough, type Readable } from "node:stream";
import type { TLSSocket } from "node:tls";
import { admitRequest } from "./admit.js";
import { HttpHeaders } from "./headers.js";
import { authorityMatches, RequestRejection } from "./request.js";
import { HOP_BY_HOP, scrubHeaders, scrubResponse, UnscannableBodyError, type ResponseHeaders } from "./response.js";
import type { Redactions } from "./scrub.js";
import type { HttpDenyReason, HttpEvent, InterceptedFlow, InterceptedRequest } from "./types.js";
import type { H2UpstreamPool } from "./upstream-h2.js";

/** Same bounds as the HTTP/1.1 parser: 256 header fields, 80 KiB of header block. */
const MAX_HEADER_PAIRS = 256;
const MAX_HEADER_LIST_BYTES = 80 * 1024;
/** Concurrent streams the guest may open on one connection. */
const MAX_CONCURRENT_STREAMS = 100;
/** Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2), plus HTTP/1.1's hop-by-hop ones. */
const H2_FORBIDDEN = new Set([...HOP_BY_HOP, "http2-settings", "host"]);

export interface H2SessionContext {
  flow: InterceptedFlow;
  upstream: H2UpstreamPool;
  middlewareTimeoutMs: number;
  /** Deadline for the first stream. */
  headTimeoutMs: number;
  emit: (event: HttpEvent) => void;
  redactions: Redactions;
}

/** Serves an h2 guest connection; resolves once it is closed (never rejects). */
export function serveH2(tls: TLSSocket, ctx: H2SessionContext): Promise<void> {
  return new Promise((resolve) => {
    const server = createServer({
      maxHeaderListPairs: MAX_HEADER_PAIRS,
      settings: { maxConcurrentStreams: MAX_CONCURRENT_STREAMS, maxHeaderListSize: MAX_HEADER_LIST_BYTES, enableConnectProtocol: false },
    });
    let session: ServerHttp2Session | undefined;
    let streams = 0;
    const timer = setTimeout(() => {
      ctx.emit({ type: "http.protocol-error", ...endpoints(ctx.flow), reason: "idle", message: `no HTTP/2 request within ${ctx.headTimeoutMs} ms; connection closed` });
      session?.destroy();
      tls.destroy();
    }, ctx.headTimeoutMs);
    timer.unref();
    const finish = () => {
      clearTimeout(timer);
      ctx.upstream.close();
      resolve();
    };
    server.on("session", (s: ServerHttp2Session) => {
      session = s;
      s.on("error", () => s.destroy());
      s.on("close", finish);
    });
    server.on("stream", (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
      clearTimeout(timer);
      streams++;
      stream.on("error", () => {});
      void serveStream(stream, headers, rawHeaders, ctx).catch((err: unknown) => {
        ctx.emit({
          type: "http.protocol-error",
          ...endpoints(ctx.flow),
          reason: "internal",
          message: `interceptor failure while serving HTTP/2 stream ${streams}: ${err instanceof Error ? err.message : String(err)}`,
        });
        if (!stream.destroyed) stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      });
    });
    tls.once("close", () => {
      if (!session) finish();
    });
    // node:http2 takes over the (already terminated) TLS socket as a session. A server-side
    // TLSSocket made without a tls.Server never clears `secureConnecting` (tls.Server does, when
    // it emits secureConnection), and the session would wait for a `secureConnect` that never
    // comes: the handshake is finished here, so say so.
    (tls as unknown as { secureConnecting: boolean }).secureConnecting = false;
    server.emit("connection", tls);
  });
}

interface CheckedH2 {
  path: string;
  headers: HttpHeaders;
  /** The guest sent `te: trailers` (gRPC does; it is the only TE HTTP/2 allows). */
  teTrailers: boolean;
}

/** Checks one stream's pseudo-headers and fields; throws RequestRejection. */
function checkH2Request(method: string, headers: IncomingHttpHeaders, rawHeaders: readonly string[], flow: InterceptedFlow): CheckedH2 {
  if (method === "TRACE" || method === "TRACK") {
    throw new RequestRejection(405, "method-refused", `${method} is refused on intercepted connections (it would echo the credentials added on the host)`);
  }
  if (method === "CONNECT") {
    throw new RequestRejection(405, "method-refused", "CONNECT is not supported on intercepted HTTP/2 connections (this connection already reaches its only host)");
  }
  const authority = headers[":authority"];
  const hosts: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === "host") hosts.push(rawHeaders[i + 1]!);
  const names = [...(typeof authority === "string" ? [authority] : []), ...hosts];
  if (names.length === 0) throw new RequestRejection(400, "bad-request", "HTTP/2 request without :authority or Host");
  for (const name of names) {
    if (!authorityMatches(name, flow.hostname, flow.dst.port)) {
      throw new RequestRejection(
        421,
        "host-mismatch",
        `${JSON.stringify(name)} does not match ${flow.hostname}, the only host this connection may reach (open a connection to that host)`,
      );
    }
  }
  if (headers[":scheme"] !== "https") throw new RequestRejection(400, "bad-request", `unsupported :scheme ${JSON.stringify(headers[":scheme"])} (this connection is https)`);
  const path = headers[":path"];
  if (typeof path !== "string" || !(path.startsWith("/") || (path === "*" && method === "OPTIONS"))) {
    throw new RequestRejection(400, "bad-request", `malformed :path ${JSON.stringify(path)}`);
  }
  const out = new HttpHeaders();
  let teTrailers = false;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    const key = name.toLowerCase();
    if (key.startsWith(":")) continue;
    if (key === "te") {
      teTrailers ||= value.split(",").some((t) => t.trim().toLowerCase() === "trailers");
      continue;
    }
    if (H2_FORBIDDEN.has(key)) continue;
    if (key === "content-length" && !/^\d{1,15}$/.test(value.trim())) throw new RequestRejection(400, "bad-request", `invalid content-length ${JSON.stringify(value)}`);
    try {
      out.append(key, value);
    } catch {
      throw new RequestRejection(400, "bad-request", `malformed header ${JSON.stringify(name)}`);
    }
  }
  return { path, headers: out, teTrailers };
}

/** The upstream's answer in one shape, whichever protocol carried it. */
interface Answer {
  status: number;
  headers: ResponseHeaders;
  body: Readable;
  /** Trailers, once the body has ended. */
  trailers: () => ResponseHeaders | undefined;
}

async function serveStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, rawHeaders: string[], ctx: H2SessionContext): Promise<void> {
  const { flow } = ctx;
  const started = performance.now();
  const method = String(headers[":method"] ?? "");
  const target = String(headers[":path"] ?? "");
  let checked: CheckedH2;
  try {
    checked = checkH2Request(method, headers, rawHeaders, flow);
  } catch (err) {
    if (err instanceof RequestRejection) return refuse(stream, ctx, err.status, err.reason, method, target, err.message);
    throw err;
  }
  const request: InterceptedRequest = Object.freeze({
    method,
    url: checked.path,
    protocol: "h2",
    scheme: "https:",
    hostname: flow.hostname,
    src: flow.src,
    dst: flow.dst,
    headers: checked.headers,
  });
  const refused = await admitRequest(flow, request, ctx.middlewareTimeoutMs, ctx.redactions);
  if (refused) return refuse(stream, ctx, refused.status, refused.reason, method, checked.path, refused.message, refused.detail);
  if (stream.destroyed) return;

  const hasBody = !stream.endAfterHeaders;
  let answer: Answer;
  try {
    answer = await forward(stream, method, checked, hasBody, ctx);
  } catch (err) {
    if (stream.destroyed) return;
    const e = err as Error & { code?: string };
    const code = e.code ?? e.name ?? "ERROR";
    ctx.emit({ type: "http.upstream-error", ...endpoints(flow), method, url: checked.path, code, message: e.message, answered502: true });
    sendPlain(stream, 502, `sandbox: the upstream request to ${flow.hostname} failed: ${code}: ${e.message}`);
    return;
  }

  // A body that fails later (upstream reset, socket error) must not become an unhandled 'error'.
  answer.body.on("error", () => {});
  const noBody = method === "HEAD" || answer.status === 204 || answer.status === 304;
  const rules = ctx.redactions.rules();
  let out: { headers: ResponseHeaders; body: Readable };
  try {
    out = scrubResponse(answer.headers, answer.body, rules, noBody);
  } catch (err) {
    answer.body.destroy();
    if (!(err instanceof UnscannableBodyError)) throw err;
    ctx.emit({ type: "http.denied", ...endpoints(flow), reason: "unscannable-body", message: err.message, method, url: checked.path, status: 502 });
    sendPlain(stream, 502, `sandbox: ${err.message}`);
    return;
  }
  if (stream.destroyed) {
    out.body.destroy();
    return;
  }
  stream.respond(h2Fields(out.headers, answer.status), { endStream: noBody, waitForTrailers: !noBody });
  if (noBody) {
    answer.body.resume();
  } else {
    stream.once("wantTrailers", () => {
      const trailers = answer.trailers();
      stream.sendTrailers(trailers ? h2Fields(scrubHeaders(trailers, rules)) : {});
    });
    out.body.once("error", () => {
      if (!stream.destroyed) stream.close(constants.NGHTTP2_INTERNAL_ERROR);
    });
    out.body.pipe(stream);
  }
  if (!stream.closed) await once(stream, "close").catch(() => {});
  out.body.destroy();
  ctx.emit({
    type: "http.request",
    ...endpoints(flow),
    method,
    url: checked.path,
    protocol: "h2",
    scheme: "https:",
    status: answer.status,
    durationMs: performance.now() - started,
  });
}

/** Sends one admitted request upstream; resolves with the response head and its body stream. */
async function forward(stream: ServerHttp2Stream, method: string, checked: CheckedH2, hasBody: boolean, ctx: H2SessionContext): Promise<Answer> {
  const { flow } = ctx;
  const up = await ctx.upstream.get();
  const authority = flow.dst.port === 443 ? flow.hostname : `${flow.hostname}:${flow.dst.port}`;
  if (up.kind === "h2") {
    const fields: OutgoingHttpHeaders = { ":method": method, ":path": checked.path, ":scheme": "https", ":authority": authority };
    for (const [n, v] of checked.headers) {
      const key = n.toLowerCase();
      if (H2_FORBIDDEN.has(key)) continue;
      const prev = fields[key];
      fields[key] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [String(prev), v];
    }
    if (checked.teTrailers) fields.te = "trailers";
    const upReq: ClientHttp2Stream = up.session.request(fields, { endStream: !hasBody });
    upReq.on("error", () => {});
    // The guest gave up on the stream: so does upstream.
    stream.once("close", () => {
      if (!upReq.closed) upReq.close(constants.NGHTTP2_CANCEL);
    });
    if (hasBody) stream.pipe(upReq);
    const head = await responseHead(upReq);
    let trailers: ResponseHeaders | undefined;
    upReq.once("trailers", (t: IncomingHttpHeaders) => (trailers = fieldsOnly(t)));
    return { status: Number(head[":status"]), headers: fieldsOnly(head), body: upReq, trailers: () => trailers };
  }
  // The server speaks only HTTP/1.1: translate.
  const abort = new AbortController();
  stream.once("close", () => abort.abort(new Error("guest stream closed")));
  let body: PassThrough | null = null;
  if (hasBody) {
    body = new PassThrough();
    stream.pipe(body);
  }
  const res = await up.client.request({
    method,
    path: checked.path,
    headers: [...checked.headers.toFlat(), "host", authority],
    body,
    signal: abort.signal,
  });
  return { status: res.statusCode, headers: res.headers as ResponseHeaders, body: res.body, trailers: () => (Object.keys(res.trailers).length ? (res.trailers as ResponseHeaders) : undefined) };
}

/** The upstream stream's response head; rejects if the stream errs or closes without one. */
function responseHead(upReq: ClientHttp2Stream): Promise<IncomingHttpHeaders> {
  return new Promise((resolve, reject) => {
    const onResponse = (head: IncomingHttpHeaders) => {
      upReq.off("close", onClose);
      upReq.off("error", onError);
      resolve(head);
    };
    const onError = (err: Error) => {
      upReq.off("response", onResponse);
      upReq.off("close", onClose);
      reject(err);
    };
    const onClose = () => {
      upReq.off("response", onResponse);
      upReq.off("error", onError);
      reject(Object.assign(new Error(`the upstream closed the stream without a response (code ${upReq.rstCode ?? "none"})`), { code: "ERR_HTTP2_STREAM_CLOSED" }));
    };
    upReq.once("response", onResponse);
    upReq.once("error", onError);
    upReq.once("close", onClose);
  });
}

/** Received fields without pseudo-headers (`:status` is a number, the scrubber takes strings). */
function fieldsOnly(headers: IncomingHttpHeaders): ResponseHeaders {
  const out: ResponseHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!k.startsWith(":") && v !== undefined) out[k] = Array.isArray(v) ? v.map(String) : String(v);
  return out;
}

/** Response fields for node:http2: pseudo-headers and connection-specific fields dropped. */
function h2Fields(headers: ResponseHeaders, status?: number): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = status === undefined ? {} : { ":status": status };
  for (const [name, value] of Object.entries(headers)) {
    const key = name.toLowerCase();
    if (value === undefined || key.startsWith(":") || H2_FORBIDDEN.has(key)) continue;
    const values = (Array.isArray(value) ? value : [value]).filter((v) => !/[\r\n\0]/.test(v));
    if (values.length > 0) out[key] = values.length === 1 ? values[0] : values;
  }
  return out;
}

function refuse(
  stream: ServerHttp2Stream,
  ctx: H2SessionContext,
  status: number,
  reason: HttpDenyReason,
  method: string,
  url: string,
  message: string,
  detail?: string,
): void {
  ctx.emit({ type: "http.denied", ...endpoints(ctx.flow), reason, message: detail ? `${message}: ${detail}` : message, method, url, status });
  sendPlain(stream, status, `sandbox: ${message}`);
}

/** A small answer of the interceptor's own; the rest of the guest's stream is not read. */
function sendPlain(stream: ServerHttp2Stream, status: number, message: string): void {
  if (stream.destroyed || stream.headersSent) {
    if (!stream.destroyed) stream.close(constants.NGHTTP2_INTERNAL_ERROR);
    return;
  }
  stream.respond({ ":status": status, "content-type": "text/plain; charset=utf-8" });
  stream.end(`${message}\n`, () => {
    // Stop a request body the guest may still be sending (RST_STREAM NO_ERROR after our END_STREAM).
    if (!stream.destroyed && !stream.readableEnded) stream.close(constants.NGHTTP2_NO_ERROR);
  });
}

function endpoints(flow: InterceptedFlow) {
  return { hostname: flow.hostname, src: flow.src, dst: flow.dst };
}
