/**
 * The contract between the network plumbing (which matches a flow with
 * `conn.matchHttp(...)` and hands its bytes over) and the HTTP interceptor
 * (which terminates TLS, runs the middleware and forwards upstream).
 */
import type { Socket } from "node:net";
import type { HttpHeaders } from "./headers.js";

export interface FlowEndpoint {
  readonly ip: string;
  readonly port: number;
}

/** One guest TCP flow accepted with `matchHttp(...).accept(middleware)`. */
export interface InterceptedFlow {
  readonly src: FlowEndpoint;
  /** Where the guest connected; the interceptor connects upstream to exactly this address. */
  readonly dst: FlowEndpoint;
  /** Trusted hostname (from an accepted DNS answer, never from Host or SNI). */
  readonly hostname: string;
  readonly middleware: HttpMiddleware;
  /**
   * The secrets substitution, run before `middleware`. It refuses (403
   * `insecure-transport`) a clear-text request that would carry a secret.
   */
  readonly secrets?: HttpMiddleware;
  /**
   * Whether `middleware` may add or change headers on plain-HTTP requests. Default
   * false: such a request is refused (403 `insecure-transport`), because what a
   * middleware adds is usually a credential and plain HTTP has no verified upstream.
   */
  readonly allowInsecure?: boolean;
  /**
   * Further accepted names of the same destination (a shared CDN address): the TLS SNI,
   * or the first request's Host for plain HTTP, picks one of these instead of `hostname`.
   */
  readonly alternatives?: readonly HttpFlowName[];
}

/** One accepted name of an intercepted flow with what applies to it. */
export interface HttpFlowName {
  readonly hostname: string;
  readonly middleware: HttpMiddleware;
  readonly secrets?: HttpMiddleware;
  readonly allowInsecure?: boolean;
}

/** Serves one intercepted flow; resolves once the flow is finished (never rejects). */
export type InterceptHandler = (socket: Socket, flow: InterceptedFlow) => Promise<void>;

/**
 * Called once per request before it goes upstream (every request of a
 * kept-alive connection). It may change headers; throwing (or not settling
 * within the interceptor's `middlewareTimeoutMs`) denies the request with 403.
 */
export type HttpMiddleware = (request: InterceptedRequest) => void | Promise<void>;

/**
 * One request of an intercepted flow, as middleware sees it: read-only method,
 * URL and hostname; mutable headers (add the credential here).
 */
export interface InterceptedRequest {
  /** `GET`, `POST`… (read-only). */
  readonly method: string;
  /** Request target in origin form, e.g. `/user?x=1` (read-only). */
  readonly url: string;
  /**
   * The HTTP version the guest spoke on this connection: `h2` (negotiated by TLS ALPN)
   * or `h1` (HTTP/1.x). The request has the same shape either way.
   */
  readonly protocol: HttpVersion;
  /** `https:` when the guest spoke TLS to the interceptor, else `http:` (h2 is always `https:`). */
  readonly scheme: "https:" | "http:";
  /** The trusted hostname the flow was matched on. */
  readonly hostname: string;
  readonly src: FlowEndpoint;
  readonly dst: FlowEndpoint;
  /**
   * End-to-end request headers, mutable. Hop-by-hop headers (Connection,
   * Transfer-Encoding, Upgrade…) are the interceptor's and are not listed here.
   */
  readonly headers: HttpHeaders;
}

/** HTTP version of an intercepted connection: HTTP/1.x or HTTP/2. */
export type HttpVersion = "h1" | "h2";

/** Why the interceptor refused a flow or a request. */
export type HttpDenyReason =
  | "sni-mismatch"
  /** Host, absolute URL or (HTTP/2) `:authority` names another host: 403 on HTTP/1.1, 421 on an HTTP/2 stream. */
  | "host-mismatch"
  | "connect-target"
  | "middleware"
  | "bad-request"
  | "unsupported-upgrade"
  /** A credential (a secret, or a header the middleware set) would have gone out over plain HTTP. */
  | "insecure-transport"
  /** TRACE/TRACK: it would echo the credentials the host added back to the guest. */
  | "method-refused"
  /** The response body is in an encoding the interceptor cannot decode to scrub credentials from it (answered 502). */
  | "unscannable-body";

interface EventBase {
  readonly hostname: string;
  readonly src: FlowEndpoint;
  readonly dst: FlowEndpoint;
}

/** Observability events, plain objects; pass `onEvent` to the interceptor to receive them. */
export type HttpEvent =
  | (EventBase & {
      readonly type: "http.request";
      readonly method: string;
      readonly url: string;
      readonly protocol: HttpVersion;
      readonly scheme: "https:" | "http:";
      readonly status: number;
      readonly durationMs: number;
    })
  | (EventBase & {
      readonly type: "http.denied";
      readonly reason: HttpDenyReason;
      readonly message: string;
      readonly method?: string;
      readonly url?: string;
      readonly status?: number;
    })
  | (EventBase & {
      readonly type: "http.upstream-error";
      readonly method: string;
      readonly url: string;
      /** e.g. `UNABLE_TO_VERIFY_LEAF_SIGNATURE`, `ECONNREFUSED`, `UND_ERR_SOCKET`. */
      readonly code: string;
      readonly message: string;
      /** Whether the guest got a 502 (false: the response had started; the connection was cut). */
      readonly answered502: boolean;
    })
  | (EventBase & {
      readonly type: "http.protocol-error";
      /**
       * `not-http`: neither TLS nor HTTP; `tls`: the guest-side handshake failed;
       * `parse`: malformed HTTP; `idle`: nothing sent in time; `internal`: a bug in
       * the interceptor (the connection is closed).
       */
      readonly reason: "not-http" | "tls" | "parse" | "idle" | "internal";
      readonly message: string;
    });

export type HttpEventType = HttpEvent["type"];
