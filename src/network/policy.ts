/**
 * `network.policy(fn)`: default-deny egress decided by a JavaScript callback.
 * A flow is allowed only if the callback grants it (an `accept` on the
 * connection or on one of its match objects) before its promise settles; a
 * callback that throws, rejects or overruns its deadline denies, and the
 * failure is reported through `onEvent`.
 */
import { SandboxConfigError } from "../errors.js";
import { parseCidr, type Cidr } from "./cidr.js";
import { Endpoint, parseHostPort, unmapIpv4 } from "./endpoint.js";
import { normalizeHostname } from "./dns-attribution.js";

import type { HttpEvent, HttpMiddleware, InterceptedRequest } from "./http/types.js";
import { secretPlaceholders, secretRedactions, secretsMiddleware, type Redaction, type SecretEvent, type SecretsSpec } from "./http/secrets.js";
export type { HttpEvent, HttpMiddleware, InterceptedRequest, SecretEvent, SecretsSpec };

/**
 * Credentials the guest only ever sees as placeholders (`network.secrets(...)`): each
 * NAME is in every process's environment as a random placeholder, and intercepted
 * requests to that secret's hosts get the real value substituted in their headers.
 */
export interface SandboxSecrets {
  readonly kind: "secrets";
  /** NAME → placeholder, added to the guest's environment. */
  readonly env: Readonly<Record<string, string>>;
  /** Every host some secret may be sent to (exact names or `*.domain`). */
  readonly hosts: readonly string[];
  /** @internal The substituting middleware, reporting to `onEvent`. */
  middleware(onEvent?: (event: SecretEvent) => void): HttpMiddleware;
  /** @internal Real value → placeholder, scrubbed from responses. */
  readonly redactions: readonly Redaction[];
}

/** How `matchDns().accept(...)` answers a query. */
export interface DnsAcceptOptions {
  /** Upstream resolvers on the host's network: "1.1.1.1", "1.1.1.1:53", "[2606:4700::1111]:53". Tried in order. */
  resolvers: readonly string[];
}

/** A DNS query (over UDP or TCP, to whatever address the guest chose). */
export interface DnsMatch {
  /** The queried name, lower-case, without the trailing dot. */
  readonly name: string;
  /** Record type, e.g. "A", "AAAA", "TXT". */
  readonly type: string;
  readonly transport: "udp" | "tcp";
  /** Answers the query through these resolvers; the answer becomes trusted hostname metadata. Returns true. */
  accept(options: DnsAcceptOptions): true;
}

/** An HTTP(S) flow to a hostname the lane's accepted DNS answers tie to its destination (`conn.matchHttp`). */
export interface HttpMatch {
  /** The hostname an accepted DNS answer tied to the destination address. */
  readonly hostname: string;
  /**
   * Enters the HTTP enforcement path (the interceptor): every request is parsed and its
   * Host/SNI checked against the hostname, and a flow that is not HTTP(S) is closed. With
   * middleware, it runs on each request; without, requests go upstream unchanged. When
   * several `matchHttp` names of the destination are accepted, the flow's SNI (or first
   * Host) picks which one (and whose middleware) applies. Headers the middleware sets only go out over TLS verified for the
   * hostname: a plain-HTTP request it changes is refused (403) unless `allowInsecure`.
   * Returns true.
   */
  accept(middleware?: HttpMiddleware, options?: HttpAcceptOptions): true;
}

/** Options of `matchHttp(...).accept(middleware, options)`. */
export interface HttpAcceptOptions {
  /** Let the middleware add or change headers on plain-HTTP requests (clear text upstream). Default false. */
  allowInsecure?: boolean;
}

/** A TCP or UDP flow to a given address (`conn.matchTcp` / `conn.matchUdp`). */
export interface TransportMatch {
  /** Grants the flow (raw splice in the helper). Returns true. */
  accept(): true;
}

/** What `conn.matchHttp` matches: an exact hostname, or a predicate over the trusted hostname. */
export type HttpHostMatcher = string | ((candidate: { hostname: string }) => boolean);

/** What a policy callback is asked about: one new TCP connection, UDP flow or DNS query. */
export interface SandboxConnection {
  readonly protocol: "tcp" | "udp";
  /** The guest side, as the guest put it on the wire. */
  readonly src: Endpoint;
  /** The destination the guest asked for. */
  readonly dst: Endpoint;
  /** Hostnames accepted DNS answers tied to `dst.ip` (trusted metadata; never the Host header). */
  readonly hostnames: readonly string[];
  /** Grants this flow as raw TCP/UDP. For a DNS query this forwards it to `dst` itself, without recording hostnames. */
  accept(): true;
  matchTcp(target: string): TransportMatch | null;
  matchUdp(target: string): TransportMatch | null;
  matchDns(): DnsMatch | null;
  matchHttp(host: HttpHostMatcher): HttpMatch | null;
}
/** The spec's name for the same thing. */
export type Connection = SandboxConnection;

/**
 * What `network.policy(fn, { onEvent })` hears: every verdict, callback failure,
 * stack-level denial, intercepted HTTP request and secret substitution.
 */
export type NetworkEvent =
  | {
      type: "decision";
      protocol: "tcp" | "udp" | "dns";
      src: string;
      dst: string;
      verdict: "accept" | "deny" | "intercept";
      hostname?: string;
      dns?: { name: string; type: string; resolver?: string; rcode?: string };
      /** Node-side time from the helper's question to the verdict (DNS: the upstream answer included). */
      elapsedMs: number;
    }
  | { type: "policy-error"; protocol: "tcp" | "udp" | "dns"; src: string; dst: string; error: unknown; message: string }
  | { type: "policy-timeout"; protocol: "tcp" | "udp" | "dns"; src: string; dst: string; message: string }
  | { type: "dns-upstream"; src: string; dst: string; message: string }
  | { type: "intercept"; src: string; dst: string; message: string }
  /** Decided by the helper's network stack on its own: protected destination, flow limit, malformed frame… */
  | { type: "stack"; kind: string; protocol?: string; src?: string; dst?: string; message: string }
  /** From the HTTP interceptor on flows accepted with `matchHttp(...).accept(middleware)`. */
  | HttpEvent
  /** A secret placeholder replaced (allowed host) or left alone (any other host). */
  | SecretEvent;

/** Decides one flow: grant it with `conn.accept()` or a match's `accept(...)`; anything else (returning, throwing, timing out) denies. */
export type NetworkPolicyCallback = (conn: SandboxConnection) => void | Promise<void>;

/** Options of `network.policy`. */
export interface NetworkPolicyOptions {
  /** Deadline for one callback; past it the flow is denied. Default 5000 ms. */
  timeoutMs?: number;
  /**
   * Concurrent TCP + UDP flows per sandbox, and host sockets held for them at any
   * instant (connecting, open or closing). Default 256.
   */
  maxFlows?: number;
  /**
   * New flows the guest may open per second (TCP connects, new UDP destinations),
   * on average; past it and the burst, new flows are dropped before the callback runs
   * (the guest's TCP retries later) and a coalesced `stack` event of kind
   * `connect-rate` says how many. Default 100.
   */
  maxConnectsPerSecond?: number;
  /** New flows allowed at once on top of the rate (token bucket size). Default 200. */
  connectBurst?: number;
  /**
   * Protected ranges (CIDR) the policy may grant: loopback, RFC 1918, link-local… are denied
   * before the callback runs unless listed here. The host's own addresses stay denied.
   */
  allowProtected?: readonly string[];
  /** Per upstream resolver attempt. Default 3000 ms. */
  dnsTimeoutMs?: number;
  /**
   * Ports `matchHttp` matches on. Default: any port (TLS or plain HTTP is told by the
   * flow's first bytes, not the port).
   */
  httpPorts?: readonly number[];
  /** Audit hook: every verdict, callback failure, stack-level denial and intercepted HTTP request. Must not throw. */
  onEvent?: (event: NetworkEvent) => void;
  /**
   * Extra root certificates (PEM) trusted when intercepted requests go upstream, on top
   * of Node's bundled roots: a corporate TLS proxy, a test CA. Upstream certificates are
   * always verified for the trusted hostname.
   */
  upstreamCa?: string | readonly string[];
  /**
   * `network.secrets(...)`: placeholders go into the guest's environment, and an HTTP
   * flow to one of the secrets' hosts accepted with `matchHttp(...).accept()` is
   * intercepted (with or without middleware) so the real values replace the
   * placeholders in its request headers. Elsewhere placeholders go out unchanged.
   */
  secrets?: SandboxSecrets;
}

/** A checked network policy (`network.policy(...)`) for `defineSandbox({ network })`. */
export interface NetworkPolicy {
  readonly kind: "policy";
  readonly callback: NetworkPolicyCallback;
  readonly timeoutMs: number;
  readonly maxFlows: number;
  readonly maxConnectsPerSecond: number;
  readonly connectBurst: number;
  readonly allowProtected: readonly string[];
  readonly allowProtectedCidrs: readonly Cidr[];
  readonly dnsTimeoutMs: number;
  /** Ports `matchHttp` matches on; undefined: any. */
  readonly httpPorts: readonly number[] | undefined;
  readonly onEvent: ((event: NetworkEvent) => void) | undefined;
  readonly upstreamCa: string | readonly string[] | undefined;
  readonly secrets: SandboxSecrets | undefined;
}

function positiveInt(name: string, v: number | undefined, dflt: number, max: number): number {
  const n = v ?? dflt;
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new SandboxConfigError(`network.policy option ${name} must be an integer from 1 to ${max}, got ${String(v)}`);
  }
  return n;
}

/**
 * Egress control: `network.policy(fn, options)` makes a default-deny policy
 * whose callback sees every new flow and DNS query; `network.secrets(...)`
 * makes credentials the guest only ever sees as placeholders.
 */
export const network = {
  /** Default-deny egress: only flows the callback grants are allowed. */
  policy(callback: NetworkPolicyCallback, options: NetworkPolicyOptions = {}): NetworkPolicy {
    if (typeof callback !== "function") {
      throw new SandboxConfigError("network.policy(callback) needs a function that grants flows, e.g. conn => conn.matchDns()?.accept({ resolvers: [\"1.1.1.1\"] })");
    }
    const allowProtected = [...(options.allowProtected ?? [])];
    const cidrs = allowProtected.map((c) => {
      const parsed = typeof c === "string" ? parseCidr(c) : undefined;
      if (!parsed) throw new SandboxConfigError(`network.policy option allowProtected: ${JSON.stringify(c)} is not a CIDR such as "10.0.0.0/8"`);
      return parsed;
    });
    if (options.onEvent !== undefined && typeof options.onEvent !== "function") {
      throw new SandboxConfigError("network.policy option onEvent must be a function");
    }
    const upstreamCa = options.upstreamCa;
    const caList = upstreamCa === undefined ? [] : typeof upstreamCa === "string" ? [upstreamCa] : Array.isArray(upstreamCa) ? upstreamCa : null;
    if (caList === null || caList.some((c) => typeof c !== "string" || !c.includes("-----BEGIN CERTIFICATE-----"))) {
      throw new SandboxConfigError("network.policy option upstreamCa must be a PEM certificate string or an array of them");
    }
    const httpPorts = options.httpPorts === undefined ? undefined : [...options.httpPorts];
    if (httpPorts !== undefined && (httpPorts.length === 0 || !httpPorts.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535))) {
      throw new SandboxConfigError("network.policy option httpPorts must be a non-empty list of ports (1-65535), e.g. [80, 443, 8443]");
    }
    if (options.secrets !== undefined && (options.secrets as SandboxSecrets | null)?.kind !== "secrets") {
      throw new SandboxConfigError("network.policy option secrets must come from network.secrets({ NAME: { value, hosts } })");
    }
    return Object.freeze({
      kind: "policy" as const,
      callback,
      timeoutMs: positiveInt("timeoutMs", options.timeoutMs, 5000, 600_000),
      maxFlows: positiveInt("maxFlows", options.maxFlows, 256, 65_536),
      maxConnectsPerSecond: positiveInt("maxConnectsPerSecond", options.maxConnectsPerSecond, 100, 100_000),
      connectBurst: positiveInt("connectBurst", options.connectBurst, 200, 100_000),
      allowProtected,
      allowProtectedCidrs: cidrs,
      dnsTimeoutMs: positiveInt("dnsTimeoutMs", options.dnsTimeoutMs, 3000, 60_000),
      httpPorts: httpPorts && Object.freeze(httpPorts),
      onEvent: options.onEvent,
      upstreamCa,
      secrets: options.secrets,
    });
  },

  /** Placeholders for credentials the guest must not hold; pass the result to `network.policy(fn, { secrets })`. */
  secrets(spec: SecretsSpec): SandboxSecrets {
    const env = Object.freeze(secretPlaceholders(spec));
    const hosts = Object.freeze([...new Set(Object.values(spec).flatMap((s) => [...s.hosts]))]);
    return Object.freeze({
      kind: "secrets" as const,
      env,
      hosts,
      middleware: (onEvent?: (event: SecretEvent) => void) => secretsMiddleware(spec, env, onEvent),
      redactions: Object.freeze(secretRedactions(spec, env)),
    });
  },
};

export function isNetworkPolicy(v: unknown): v is NetworkPolicy {
  return typeof v === "object" && v !== null && (v as NetworkPolicy).kind === "policy" && typeof (v as NetworkPolicy).callback === "function";
}

/** What the callback granted. */
export type Grant =
  | { kind: "raw" }
  | { kind: "dns"; resolvers: readonly string[] }
  | ({ kind: "http"; others: HttpName[] } & HttpName);

/** One hostname the callback accepted for an HTTP flow, with its middleware. */
export interface HttpName {
  hostname: string;
  middleware: HttpMiddleware | undefined;
  allowInsecure: boolean;
}

export interface DnsQuestion {
  name: string;
  type: string;
  transport: "udp" | "tcp";
}

/** Same destination, whatever spelling (IPv4-mapped IPv6 names the IPv4 host). */
function sameEndpoint(ep: Endpoint, target: string, method: string): boolean {
  const hp = parseHostPort(target);
  if (!hp) throw new SandboxConfigError(`${method}(${JSON.stringify(target)}): expected "ip:port", e.g. "203.0.113.10:5432" or "[2001:db8::1]:443"`);
  return unmapIpv4(hp.ip).text === ep.ip && hp.port === ep.port;
}

/**
 * One policy question. `settle()` closes it: grants made after the callback's
 * promise settled (or its deadline passed) change nothing.
 */
export class PolicyConnection implements SandboxConnection {
  readonly protocol: "tcp" | "udp";
  readonly src: Endpoint;
  readonly dst: Endpoint;
  readonly hostnames: readonly string[];
  readonly #dns: DnsQuestion | undefined;
  readonly #httpPorts: readonly number[] | undefined;
  #grant: Grant | undefined;
  #open = true;

  constructor(protocol: "tcp" | "udp", src: Endpoint, dst: Endpoint, hostnames: readonly string[], dns?: DnsQuestion, httpPorts?: readonly number[]) {
    this.protocol = protocol;
    // The guest's addresses are IPv4 on the wire; the classifiers see the same either way.
    this.src = src;
    this.dst = dst;
    this.hostnames = Object.freeze([...hostnames]);
    this.#dns = dns;
    this.#httpPorts = httpPorts;
  }

  get grant(): Grant | undefined {
    return this.#grant;
  }

  settle(): Grant | undefined {
    this.#open = false;
    return this.#grant;
  }

  #set(g: Grant): true {
    // The first grant stands; later ones (or ones after the verdict) are ignored, except
    // that further HTTP names on the same address are kept: the flow's SNI/Host picks one.
    if (!this.#open) return true;
    if (this.#grant === undefined) this.#grant = g;
    else if (this.#grant.kind === "http" && g.kind === "http" && g.hostname !== this.#grant.hostname && !this.#grant.others.some((o) => o.hostname === g.hostname)) {
      this.#grant.others.push({ hostname: g.hostname, middleware: g.middleware, allowInsecure: g.allowInsecure });
    }
    return true;
  }

  accept(): true {
    return this.#set({ kind: "raw" });
  }

  matchTcp(target: string): TransportMatch | null {
    if (!sameEndpoint(this.dst, target, "matchTcp") || this.protocol !== "tcp" || this.#dns) return null;
    return { accept: () => this.#set({ kind: "raw" }) };
  }

  matchUdp(target: string): TransportMatch | null {
    if (!sameEndpoint(this.dst, target, "matchUdp") || this.protocol !== "udp" || this.#dns) return null;
    return { accept: () => this.#set({ kind: "raw" }) };
  }

  matchDns(): DnsMatch | null {
    const q = this.#dns;
    if (!q) return null;
    return {
      name: q.name,
      type: q.type,
      transport: q.transport,
      accept: (options: DnsAcceptOptions) => {
        const resolvers = options?.resolvers;
        if (!Array.isArray(resolvers) || resolvers.length === 0 || !resolvers.every((r) => typeof r === "string")) {
          throw new SandboxConfigError('matchDns().accept({ resolvers }) needs a non-empty list such as ["1.1.1.1"]');
        }
        return this.#set({ kind: "dns", resolvers: [...resolvers] });
      },
    };
  }

  matchHttp(host: HttpHostMatcher): HttpMatch | null {
    if (this.protocol !== "tcp" || this.#dns || (this.#httpPorts !== undefined && !this.#httpPorts.includes(this.dst.port))) return null;
    let hostname: string | undefined;
    if (typeof host === "string") {
      const want = normalizeHostname(host);
      hostname = this.hostnames.find((h) => h === want);
    } else if (typeof host === "function") {
      hostname = this.hostnames.find((h) => host({ hostname: h }));
    } else {
      throw new SandboxConfigError("matchHttp(host) takes a hostname or a predicate ({ hostname }) => boolean");
    }
    if (hostname === undefined) return null;
    const name = hostname;
    return {
      hostname: name,
      accept: (middleware?: HttpMiddleware, options?: HttpAcceptOptions) => {
        if (middleware !== undefined && typeof middleware !== "function") {
          throw new SandboxConfigError("matchHttp(...).accept(middleware) takes a function (request) => void");
        }
        const allowInsecure = options?.allowInsecure ?? false;
        if (typeof allowInsecure !== "boolean") throw new SandboxConfigError("matchHttp(...).accept(middleware, { allowInsecure }) takes a boolean");
        return this.#set({ kind: "http", hostname: name, middleware, allowInsecure, others: [] });
      },
    };
  }
}

export { Endpoint };
