/**
 * What every intercepted request goes through once its authority and framing
 * are checked, whatever the HTTP version: the secrets substitution, then the
 * policy's middleware (each with a deadline), the clear-text rule for headers
 * a middleware set, and remembering those values so responses are scrubbed of
 * them. Shared by the HTTP/1.1 session and the HTTP/2 session so both enforce
 * exactly the same thing.
 */
import { runMiddleware } from "./relay.js";
import type { Redactions } from "./scrub.js";
import { InsecureTransportError } from "./secrets.js";
import type { HttpDenyReason, InterceptedFlow, InterceptedRequest } from "./types.js";

/** Why a request was refused before going upstream. */
export interface Refusal {
  readonly status: number;
  readonly reason: HttpDenyReason;
  /** Sent to the guest (never holds a middleware's error text). */
  readonly message: string;
  /** For the event only (e.g. what the middleware threw). */
  readonly detail?: string;
}

/** Runs secrets + middleware on `request`; undefined when it may go upstream. */
export async function admitRequest(
  flow: InterceptedFlow,
  request: InterceptedRequest,
  middlewareTimeoutMs: number,
  redactions: Redactions,
): Promise<Refusal | undefined> {
  const before = headerSnapshot(request.headers);
  let failed = flow.secrets ? await runMiddleware(flow.secrets, request, middlewareTimeoutMs) : undefined;
  const afterSecrets = headerSnapshot(request.headers);
  if (failed === undefined) failed = await runMiddleware(flow.middleware, request, middlewareTimeoutMs);
  if (failed instanceof InsecureTransportError) return { status: 403, reason: "insecure-transport", message: failed.message };
  if (failed !== undefined) return { status: 403, reason: "middleware", message: "request denied by the sandbox HTTP middleware", detail: failed.message };
  const set = changedValues(afterSecrets, headerSnapshot(request.headers));
  if (set.length > 0 && request.scheme !== "https:" && !flow.allowInsecure) {
    return {
      status: 403,
      reason: "insecure-transport",
      message: `the middleware set ${set.map(([n]) => n).join(", ")} on a plain-HTTP request to ${flow.hostname}; headers a middleware adds only go out over verified TLS (use https://, or accept(middleware, { allowInsecure: true }))`,
    };
  }
  // Whatever the host added must never come back to the guest.
  for (const [, v] of changedValues(before, headerSnapshot(request.headers))) redactions.addMiddlewareValue(v);
  return undefined;
}

/** Header lines as `name(lowercase) → values`, to see what a middleware changed. */
function headerSnapshot(headers: Iterable<[string, string]>): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [n, v] of headers) {
    const k = n.toLowerCase();
    out.set(k, [...(out.get(k) ?? []), v]);
  }
  return out;
}

/** Header values present in `after` that `before` did not have under the same name. */
function changedValues(before: Map<string, string[]>, after: Map<string, string[]>): [string, string][] {
  const out: [string, string][] = [];
  for (const [n, vs] of after) {
    const old = before.get(n) ?? [];
    for (const v of vs) if (!old.includes(v)) out.push([n, v]);
  }
  return out;
}
