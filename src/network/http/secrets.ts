/**
 * `network.secrets({ NAME: { value, hosts } })`: the guest sees only a
 * placeholder (`NAME=sandbox-secret-<random>`) in its environment; the real
 * value is substituted into request headers by the HTTP middleware, and only
 * on intercepted requests to the listed hosts. Anywhere else the placeholder
 * goes out unchanged: it is a random string worth nothing, and passing it
 * through keeps tools that send the variable to other hosts working instead
 * of failing in surprising ways (an event reports it, for audit).
 *
 * Headers only: request bodies and URLs are never rewritten (responses are
 * scrubbed of the real values, see scrub.ts), and the real value only goes out
 * on TLS requests unless the secret lists the host in `allowInsecure`. Basic credentials are
 * handled (the placeholder inside `Authorization: Basic base64(user:pass)` is
 * decoded, replaced and re-encoded), so `https://user:$TOKEN@host/repo.git`
 * works with git.
 */
import { randomBytes } from "node:crypto";
import { SandboxConfigError } from "../../errors.js";
import { normalizeHostname } from "./request.js";
import type { HttpMiddleware, InterceptedRequest } from "./types.js";

export interface SecretSpec {
  /** The real credential; never enters the guest. */
  value: string;
  /** Hostnames it may be sent to: exact names or `*.example.com` (subdomains only). */
  hosts: readonly string[];
  /**
   * Hosts (a subset of `hosts`, same patterns) to which the secret may also be sent over
   * plain HTTP. Without it the real value only goes out on requests whose upstream leg is
   * TLS verified for the trusted hostname; a clear-text request carrying the placeholder
   * to one of `hosts` is refused (403 and a `secret.refused` event).
   */
  allowInsecure?: readonly string[];
}

/** Secrets by environment variable name (`createSecrets` / `network.secrets`). */
export type SecretsSpec = Record<string, SecretSpec>;

/**
 * A placeholder in a request header was replaced by its secret (`secret.substituted`), left
 * alone because the host may not receive it (`secret.withheld`), or the request was refused
 * because it would have carried the secret over clear text (`secret.refused`).
 */
export interface SecretEvent {
  readonly type: "secret.substituted" | "secret.withheld" | "secret.refused";
  readonly name: string;
  readonly hostname: string;
  readonly header: string;
}

/** What `createSecrets` makes: the guest's environment of placeholders and the middleware that substitutes them. */
export interface Secrets {
  /** Environment for the guest: NAME → placeholder. */
  readonly env: Readonly<Record<string, string>>;
  /** Substitutes placeholders in headers of requests to allowed hosts. */
  readonly middleware: HttpMiddleware;
  /** Real value → placeholder, for scrubbing responses on their way back to the guest. */
  readonly redactions: readonly Redaction[];
}

/** A value that must never reach the guest, and what the guest sees instead. */
export interface Redaction {
  /** The real value (a secret, or a header value a middleware set). */
  readonly value: string;
  /** What replaces it in responses: the secret's placeholder, or `[redacted]`. */
  readonly replacement: string;
}

/**
 * Thrown by the secrets middleware (and raised by the interceptor) when a request would
 * carry a credential over clear text; the interceptor answers 403 `insecure-transport`.
 */
export class InsecureTransportError extends Error {
  override readonly name = "InsecureTransportError";
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HOST_PATTERN = /^(\*\.)?[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*$/;

/** A fresh random placeholder, distinct per secret and per call. */
export function secretPlaceholder(): string {
  return `sandbox-secret-${randomBytes(16).toString("hex")}`;
}

/** Checks a secrets spec and gives each secret a placeholder (pure apart from the randomness). */
export function secretPlaceholders(spec: SecretsSpec): Record<string, string> {
  if (typeof spec !== "object" || spec === null) throw new SandboxConfigError("network.secrets(spec) needs an object of { NAME: { value, hosts } }");
  const env: Record<string, string> = {};
  for (const [name, s] of Object.entries(spec)) {
    if (!ENV_NAME.test(name)) throw new SandboxConfigError(`secret name ${JSON.stringify(name)} is not a valid environment variable name`);
    if (typeof s?.value !== "string" || s.value.length === 0) throw new SandboxConfigError(`secret ${name}: value must be a non-empty string`);
    if (/[\r\n\0]/.test(s.value)) throw new SandboxConfigError(`secret ${name}: value must not contain CR, LF or NUL (it goes into HTTP headers)`);
    if (!Array.isArray(s.hosts) || s.hosts.length === 0) throw new SandboxConfigError(`secret ${name}: hosts must list at least one hostname`);
    for (const h of s.hosts) {
      if (typeof h !== "string" || !HOST_PATTERN.test(normalizeHostname(h))) {
        throw new SandboxConfigError(`secret ${name}: ${JSON.stringify(h)} is not a hostname or *.domain pattern`);
      }
    }
    if (s.allowInsecure !== undefined) {
      if (!Array.isArray(s.allowInsecure)) throw new SandboxConfigError(`secret ${name}: allowInsecure must be a list of hostnames from hosts`);
      for (const h of s.allowInsecure) {
        if (typeof h !== "string" || !HOST_PATTERN.test(normalizeHostname(h))) {
          throw new SandboxConfigError(`secret ${name}: allowInsecure entry ${JSON.stringify(h)} is not a hostname or *.domain pattern`);
        }
      }
    }
    env[name] = secretPlaceholder();
  }
  return env;
}

export function hostAllowed(hostname: string, patterns: readonly string[]): boolean {
  const h = normalizeHostname(hostname);
  return patterns.some((p) => {
    const n = normalizeHostname(p);
    return n.startsWith("*.") ? h.endsWith(n.slice(1)) && h.length > n.length - 1 : h === n;
  });
}

/**
 * The middleware replacing `placeholders[NAME]` with `spec[NAME].value` in
 * request headers to the secret's hosts.
 */
export function secretsMiddleware(
  spec: SecretsSpec,
  placeholders: Readonly<Record<string, string>>,
  onEvent?: (event: SecretEvent) => void,
): HttpMiddleware {
  const entries = Object.entries(spec).map(([name, s]) => ({
    name,
    value: s.value,
    hosts: [...s.hosts],
    insecure: [...(s.allowInsecure ?? [])],
    placeholder: placeholders[name]!,
  }));
  for (const e of entries) {
    if (typeof e.placeholder !== "string") throw new SandboxConfigError(`secret ${e.name} has no placeholder`);
  }
  return (request: InterceptedRequest) => {
    const edits: [string, string][] = [];
    let changed = false;
    for (const [header, original] of request.headers) {
      let value = original;
      for (const e of entries) {
        const allowed = hostAllowed(request.hostname, e.hosts);
        const next = substitute(value, e.placeholder, allowed ? e.value : undefined);
        if (next === undefined) continue; // placeholder absent
        // Clear text upstream: the real value would cross the network readable by anyone on the path.
        if (allowed && request.scheme !== "https:" && !hostAllowed(request.hostname, e.insecure)) {
          onEvent?.({ type: "secret.refused", name: e.name, hostname: request.hostname, header });
          throw new InsecureTransportError(
            `secret ${e.name} is only sent over TLS verified for ${request.hostname}; this request is plain HTTP (use https://, or list the host in the secret's allowInsecure)`,
          );
        }
        onEvent?.({ type: allowed ? "secret.substituted" : "secret.withheld", name: e.name, hostname: request.hostname, header });
        value = next;
      }
      if (value !== original) changed = true;
      edits.push([header, value]);
    }
    if (!changed) return;
    for (const [name] of edits) request.headers.delete(name);
    for (const [name, value] of edits) request.headers.append(name, value);
  };
}

/**
 * Replaces `placeholder` by `real` in a header value, also inside Basic
 * credentials. Returns undefined when the placeholder is not there; when
 * `real` is undefined (host not allowed) the value is returned unchanged.
 */
function substitute(value: string, placeholder: string, real: string | undefined): string | undefined {
  if (value.includes(placeholder)) return real === undefined ? value : value.split(placeholder).join(real);
  const basic = /^(\s*basic\s+)([A-Za-z0-9+/=]+)\s*$/i.exec(value);
  if (basic) {
    const decoded = Buffer.from(basic[2]!, "base64").toString("utf8");
    if (decoded.includes(placeholder)) {
      if (real === undefined) return value;
      return `${basic[1]}${Buffer.from(decoded.split(placeholder).join(real), "utf8").toString("base64")}`;
    }
  }
  return undefined;
}

/** Placeholders plus middleware in one call (the shape `network.secrets(...)` wires in). */
export function createSecrets(spec: SecretsSpec, onEvent?: (event: SecretEvent) => void): Secrets {
  const env = secretPlaceholders(spec);
  return { env: Object.freeze({ ...env }), middleware: secretsMiddleware(spec, env, onEvent), redactions: secretRedactions(spec, env) };
}

/** Each secret's real value with its placeholder, for response scrubbing. */
export function secretRedactions(spec: SecretsSpec, placeholders: Readonly<Record<string, string>>): Redaction[] {
  return Object.entries(spec).map(([name, s]) => ({ value: s.value, replacement: placeholders[name]! }));
}

/** Runs middlewares in order (e.g. the secrets substitution, then the policy's own). */
export function composeMiddleware(...middlewares: readonly (HttpMiddleware | undefined)[]): HttpMiddleware {
  const list = middlewares.filter((m): m is HttpMiddleware => typeof m === "function");
  return async (request) => {
    for (const m of list) await m(request);
  };
}
