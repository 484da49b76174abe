/**
 * The Node side of one lane's network: answers the helper's `NetRequest`s by
 * running the policy callback (with its deadline), resolves accepted DNS queries
 * and records their answers as hostname attribution before the guest sees them,
 * registers intercepted flows, and turns the helper's audit records into events.
 */
import { describeThrown } from "../errors.js";
import type { HelperConnection } from "../helper-connection.js";
import type { NetAudit, NetRequest, NetVerdict } from "../protocol/contract.js";
import { cidrContains } from "./cidr.js";
import { DnsAttribution } from "./dns-attribution.js";
import { forwardQuery, parseQuery, parseResolver, servfail, type ResolverAddress } from "./dns-forward.js";
import { Endpoint, parseIp } from "./endpoint.js";
import type { InterceptRegistry } from "./intercept-server.js";
import { PolicyConnection, type Grant, type HttpName, type NetworkEvent, type NetworkPolicy } from "./policy.js";
import { hostAllowed } from "./http/secrets.js";
import type { HttpMiddleware } from "./http/types.js";

/** The guest's resolver address (`/etc/resolv.conf`); DNS "to" it has no real destination. */
export const SANDBOX_RESOLVER = "10.0.2.3";

/** Extra time the helper grants a DNS verdict beyond the callback's deadline: the forward itself. */
export function helperDeadlineMs(p: NetworkPolicy): number {
  return p.timeoutMs + 2 * p.dnsTimeoutMs + 1000;
}

class PolicyTimeout extends Error {}

const noMiddleware: HttpMiddleware = () => {};

export class NetworkService {
  readonly attribution = new DnsAttribution();
  readonly #conn: HelperConnection;
  readonly #policy: NetworkPolicy;
  readonly #intercepts: InterceptRegistry | undefined;
  #secretsMiddleware: HttpMiddleware | undefined;

  constructor(conn: HelperConnection, policy: NetworkPolicy, intercepts: InterceptRegistry | undefined) {
    this.#conn = conn;
    this.#policy = policy;
    this.#intercepts = intercepts;
    conn.serve("NetRequest", {
      handle: (req, query, id) => this.#onRequest(req, query, id),
      malformed: (id) => this.#reply(id, "deny"),
    });
    conn.on("netAudit", (a: NetAudit) => this.#onAudit(a));
  }

  emit(event: NetworkEvent): void {
    try {
      this.#policy.onEvent?.(event);
    } catch {
      // An audit hook that throws must not take the data path down with it.
    }
  }

  #reply(id: number, verdict: NetVerdict, answer?: Buffer): void {
    this.#conn.sendFramed("NetReply", id, { verdict }, answer ? [answer] : []);
  }

  #onAudit(a: NetAudit): void {
    this.emit({ type: "stack", kind: a.kind, protocol: a.proto ?? undefined, src: a.src ?? undefined, dst: a.dst ?? undefined, message: a.message });
  }

  async #onRequest(req: NetRequest, query: Buffer, id: number): Promise<void> {
    try {
      await this.#decide(req, query, id, performance.now());
    } catch (err) {
      // Anything unexpected denies (fail closed).
      this.#reply(id, "deny");
      this.emit({ type: "policy-error", protocol: req.proto, src: `${req.srcIp}:${req.srcPort}`, dst: `${req.dstIp}:${req.dstPort}`, error: err, message: describeThrown(err) });
    }
  }

  async #decide(req: NetRequest, raw: Buffer, id: number, t0: number): Promise<void> {
    const elapsed = () => Math.round((performance.now() - t0) * 1000) / 1000;
    const src = new Endpoint(req.srcIp, req.srcPort);
    const dst = new Endpoint(req.dstIp, req.dstPort);
    const where = { src: src.toString(), dst: dst.toString() };
    const query = req.proto === "dns" && raw.length > 0 ? raw : undefined;
    const question = query ? parseQuery(query) : undefined;
    if (req.proto === "dns" && !question) {
      this.#reply(id, "deny");
      return;
    }
    const transport = req.transport === "tcp" ? "tcp" : "udp";
    const protocol = req.proto === "dns" ? transport : req.proto;
    const conn = new PolicyConnection(
      protocol,
      src,
      dst,
      this.attribution.hostnamesFor(dst.ip),
      question ? { name: question.name, type: question.type, transport } : undefined,
      this.#policy.httpPorts,
    );
    let grant: Grant | undefined;
    try {
      grant = await this.#run(conn);
    } catch (err) {
      this.#reply(id, "deny");
      if (err instanceof PolicyTimeout) {
        this.emit({ type: "policy-timeout", protocol: req.proto, ...where, message: `the policy callback did not settle within ${this.#policy.timeoutMs} ms; denied` });
      } else {
        const message = describeThrown(err);
        this.emit({ type: "policy-error", protocol: req.proto, ...where, error: err, message: `the policy callback failed (${message}); denied` });
      }
      return;
    }
    if (req.proto === "dns") return this.#dns(id, grant, query!, question!, transport, where, elapsed);
    // matchHttp(...).accept, with or without middleware, is HTTP enforcement: always the interceptor.
    const verdict = !grant ? "deny" : grant.kind === "raw" ? "accept" : grant.kind === "http" && req.proto === "tcp" ? "intercept" : "deny";
    if (verdict === "intercept" && grant?.kind === "http") {
      if (!this.#intercepts) {
        this.#reply(id, "deny");
        this.emit({ type: "intercept", ...where, message: "no interceptor socket for this lane; denied" });
        return;
      }
      const name = (n: HttpName) => ({ hostname: n.hostname, middleware: n.middleware ?? noMiddleware, secrets: this.#secretsFor(n.hostname), allowInsecure: n.allowInsecure });
      this.#intercepts.register(req.flow, { src, dst, ...name(grant), alternatives: grant.others.map(name) });
    }
    this.#reply(id, verdict);
    this.emit({ type: "decision", protocol: req.proto, ...where, verdict, hostname: grant?.kind === "http" ? grant.hostname : undefined, elapsedMs: elapsed() });
  }

  /** The secrets substitution, when the host may receive a secret (it runs before the policy's middleware). */
  #secretsFor(hostname: string): HttpMiddleware | undefined {
    const secrets = this.#policy.secrets;
    if (!secrets || !hostAllowed(hostname, secrets.hosts)) return undefined;
    this.#secretsMiddleware ??= secrets.middleware((e) => this.emit(e));
    return this.#secretsMiddleware;
  }

  /** Runs the callback; resolves with the grant when it settles, rejects on throw or deadline. */
  #run(conn: PolicyConnection): Promise<Grant | undefined> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.settle();
        reject(new PolicyTimeout());
      }, this.#policy.timeoutMs);
      let result: unknown;
      try {
        result = this.#policy.callback(conn);
      } catch (err) {
        clearTimeout(timer);
        conn.settle();
        reject(err);
        return;
      }
      Promise.resolve(result).then(
        () => {
          clearTimeout(timer);
          resolve(conn.settle());
        },
        (err: unknown) => {
          clearTimeout(timer);
          conn.settle();
          reject(err);
        },
      );
    });
  }

  #resolvers(list: readonly string[], where: { src: string; dst: string }): ResolverAddress[] {
    const out: ResolverAddress[] = [];
    for (const text of list) {
      const r = parseResolver(text);
      if (!r) {
        this.emit({ type: "dns-upstream", ...where, message: `resolver ${JSON.stringify(text)} is not "ip" or "ip:port"; skipped` });
        continue;
      }
      // Resolvers face the same protected-range rule as any destination.
      const ep = new Endpoint(r.ip, r.port);
      const ip = parseIp(ep.ip)!;
      if (ep.isProtected() && !this.#policy.allowProtectedCidrs.some((c) => cidrContains(c, ip))) {
        this.emit({ type: "dns-upstream", ...where, message: `resolver ${r.text} is in a protected range (${ep.category}); skipped (allowProtected opts a range in)` });
        continue;
      }
      out.push(r);
    }
    return out;
  }

  async #dns(
    id: number,
    grant: Grant | undefined,
    query: Buffer,
    question: { name: string; type: string },
    transport: "udp" | "tcp",
    where: { src: string; dst: string },
    elapsed: () => number,
  ): Promise<void> {
    const dnsInfo = { name: question.name, type: question.type };
    let resolverList: readonly string[];
    let trusted: boolean;
    if (grant?.kind === "dns") {
      resolverList = grant.resolvers;
      trusted = true;
    } else if (grant?.kind === "raw" && where.dst.split(":")[0] !== SANDBOX_RESOLVER) {
      // Raw accept of a query: the guest's own choice of resolver, never attribution.
      resolverList = [where.dst];
      trusted = false;
    } else {
      this.#reply(id, "deny");
      this.emit({ type: "decision", protocol: "dns", ...where, verdict: "deny", dns: dnsInfo, elapsedMs: elapsed() });
      return;
    }
    const resolvers = this.#resolvers(resolverList, where);
    const parsed = parseQuery(query)!;
    const answered = resolvers.length ? await forwardQuery(resolvers, query, parsed, transport, this.#policy.dnsTimeoutMs) : undefined;
    if (!answered) {
      this.emit({ type: "dns-upstream", ...where, message: `no resolver answered ${question.name} ${question.type} (${resolverList.join(", ")}); SERVFAIL` });
      this.#reply(id, "answer", servfail(query));
      return;
    }
    if (trusted && answered.addresses.length) {
      try {
        // Only the question name: a CNAME is a claim by the queried name's own zone, so its
        // target (say api.allowed.test under inject.attacker.test) gains no attribution.
        this.attribution.record(question.name, answered.addresses);
      } catch {
        // A record the cache refuses (odd TTL, odd name) only means less attribution.
      }
    }
    // Attribution is in place before the answer leaves for the guest.
    this.#reply(id, "answer", answered.answer);
    this.emit({ type: "decision", protocol: "dns", ...where, verdict: "accept", dns: { ...dnsInfo, resolver: answered.resolver, rcode: answered.rcode }, elapsedMs: elapsed() });
  }
}
