/**
 * Checks on a parsed guest request before anything goes upstream: framing the
 * interceptor can re-frame safely, and an authority (Host header, absolute
 * URL, CONNECT target) that names the flow's trusted hostname. The guest can
 * only ever reach the host the policy matched, whatever it writes.
 */
import { HttpHeaders } from "./headers.js";
import { HOP_BY_HOP } from "./response.js";

export class RequestRejection extends Error {
  constructor(
    readonly status: number,
    readonly reason: "host-mismatch" | "connect-target" | "bad-request" | "unsupported-upgrade" | "method-refused",
    message: string,
  ) {
    super(message);
  }
}

/** Lowercase, without a trailing dot: how hostnames are compared. */
export function normalizeHostname(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

/** Splits `host[:port]` (or `[v6]:port`); undefined when malformed. */
export function parseAuthority(value: string): { host: string; port: number | undefined } | undefined {
  const v = value.trim();
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\[\]/?#@\s]+)(?::(\d{1,5}))?$/.exec(v);
  if (!m) return undefined;
  const port = m[2] === undefined ? undefined : Number(m[2]);
  if (port !== undefined && (port < 1 || port > 65535)) return undefined;
  return { host: normalizeHostname(m[1]!), port };
}

/** Whether `authority` names the trusted hostname (and, if it has a port, the port the guest connected to). */
export function authorityMatches(authority: string, hostname: string, port: number): boolean {
  const a = parseAuthority(authority);
  return a !== undefined && a.host === normalizeHostname(hostname) && (a.port === undefined || a.port === port);
}

export interface CheckedRequest {
  /** Origin-form target for upstream (`/path?query`, or `*`). */
  path: string;
  /** End-to-end headers (hop-by-hop removed), the middleware's to edit. */
  headers: HttpHeaders;
  /** Whether the guest sent `Expect: 100-continue`. */
  expectContinue: boolean;
  /** The request has a body (Content-Length > 0 or chunked). */
  hasBody: boolean;
  /** The WebSocket upgrade token the guest asked for, if any. */
  upgrade: string | undefined;
}

/**
 * Validates one request's target and headers. `rawHeaders` is the parser's
 * flat `[name, value, …]`. Throws RequestRejection.
 */
export function checkRequest(
  method: string,
  target: string,
  rawHeaders: readonly string[],
  http10: boolean,
  hostname: string,
  port: number,
): CheckedRequest {
  const lines: [string, string][] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) lines.push([rawHeaders[i]!, rawHeaders[i + 1]!]);
  const all = new HttpHeaders();
  for (const [n, v] of lines) {
    try {
      all.append(n, v);
    } catch {
      throw new RequestRejection(400, "bad-request", `malformed header ${JSON.stringify(n)}`);
    }
  }

  // Framing: only what can be re-framed without ambiguity.
  const te = all.getAll("transfer-encoding");
  const cl = all.getAll("content-length");
  if (te.length > 0 && (te.length > 1 || te[0]!.trim().toLowerCase() !== "chunked")) {
    throw new RequestRejection(400, "bad-request", `unsupported Transfer-Encoding ${JSON.stringify(te.join(", "))} (only "chunked")`);
  }
  if (te.length > 0 && cl.length > 0) {
    throw new RequestRejection(400, "bad-request", "a request must not carry both Transfer-Encoding and Content-Length");
  }
  if (cl.some((v) => !/^\d{1,15}$/.test(v.trim())) || new Set(cl.map((v) => v.trim())).size > 1) {
    throw new RequestRejection(400, "bad-request", `invalid Content-Length ${JSON.stringify(cl.join(", "))}`);
  }
  const hasBody = te.length > 0 || (cl.length > 0 && Number(cl[0]) > 0);

  // Authority: Host header and, for absolute-form targets, the URL's authority.
  const hosts = all.getAll("host");
  if (hosts.length > 1) throw new RequestRejection(400, "bad-request", "more than one Host header");
  if (hosts.length === 0 && !http10) throw new RequestRejection(400, "bad-request", "HTTP/1.1 request without a Host header");
  const host = hosts[0];
  if (host !== undefined && !authorityMatches(host, hostname, port)) {
    throw new RequestRejection(
      403,
      "host-mismatch",
      `Host ${JSON.stringify(host)} does not match ${hostname}, the only host this connection may reach`,
    );
  }
  let path: string;
  if (target.startsWith("/") || (target === "*" && method === "OPTIONS")) {
    path = target;
  } else if (/^https?:\/\//i.test(target)) {
    let url: URL;
    try {
      url = new URL(target);
    } catch {
      throw new RequestRejection(400, "bad-request", `malformed request target ${JSON.stringify(target)}`);
    }
    if (url.username || url.password || !authorityMatches(url.host, hostname, port)) {
      throw new RequestRejection(
        403,
        "host-mismatch",
        `request target ${JSON.stringify(target)} does not name ${hostname}, the only host this connection may reach`,
      );
    }
    path = `${url.pathname}${url.search}`;
  } else {
    throw new RequestRejection(400, "bad-request", `malformed request target ${JSON.stringify(target)}`);
  }

  // Hop-by-hop headers are the interceptor's; the middleware sees end-to-end ones.
  const connectionTokens = new Set(
    all
      .getAll("connection")
      .flatMap((v) => v.split(","))
      .map((t) => t.trim().toLowerCase())
      .filter(Boolean),
  );
  let upgrade: string | undefined;
  const upgradeValue = all.get("upgrade");
  if (upgradeValue !== null && connectionTokens.has("upgrade")) {
    const tokens = upgradeValue.split(",").map((t) => t.trim().toLowerCase());
    // Only WebSocket may leave HTTP; any other upgrade (h2c…) is dropped and the request served as HTTP/1.1.
    if (tokens.includes("websocket")) upgrade = "websocket";
  }
  const expect = all.get("expect");
  if (expect !== null && expect.trim().toLowerCase() !== "100-continue") {
    throw new RequestRejection(417, "bad-request", `unsupported Expect ${JSON.stringify(expect)}`);
  }
  const headers = new HttpHeaders();
  for (const [n, v] of lines) {
    const key = n.toLowerCase();
    if (HOP_BY_HOP.has(key) || connectionTokens.has(key) || key === "expect") continue;
    // Keep content-length: undici checks the body against it.
    headers.append(n, v);
  }
  if (host === undefined) headers.set("host", hostname);
  if (upgrade && hasBody) throw new RequestRejection(400, "bad-request", "a WebSocket upgrade request must not have a body");
  return { path, headers, expectContinue: expect !== null && !http10, hasBody, upgrade };
}

/** Checks a CONNECT target against the flow: same trusted hostname and the port the guest connected to. */
export function checkConnectTarget(target: string, hostname: string, port: number): void {
  const a = parseAuthority(target);
  if (!a || a.port === undefined) {
    throw new RequestRejection(400, "bad-request", `malformed CONNECT target ${JSON.stringify(target)} (expected host:port)`);
  }
  if (a.host !== normalizeHostname(hostname) || a.port !== port) {
    throw new RequestRejection(
      403,
      "connect-target",
      `CONNECT ${target} refused: this connection may only reach ${hostname}:${port}`,
    );
  }
}
