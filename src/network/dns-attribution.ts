/**
 * Per-sandbox IP → hostname attribution, learned ONLY from DNS answers the
 * policy accepted. `matchHttp(host)` trusts this cache, never the Host header
 * or SNI, so a guest cannot claim a hostname for an IP it merely connects to.
 *
 * Entries outlive short DNS TTLs for a bounded while (a client may connect
 * minutes after resolving), and the cache is LRU-bounded so a guest flooding
 * the resolver costs bounded memory; evicting or expiring an entry only ever
 * removes attribution, which makes later hostname matches fail closed.
 */
import { parseIp, unmapIpv4 } from "./endpoint.js";

export interface DnsAnswer {
  /** An A or AAAA record's address. */
  readonly ip: string;
  readonly ttlSeconds: number;
}

export interface DnsAttributionOptions {
  /** Attribution is kept at least this long, even past a shorter TTL. Default 5 min. */
  minRetentionMs?: number;
  /** ... and never longer than this, whatever the TTL. Default 1 h. */
  maxRetentionMs?: number;
  /** Bound on (IP, hostname) pairs; the least recently used go first. Default 4096. */
  maxEntries?: number;
  /** Clock in milliseconds, injectable for tests. */
  now?: () => number;
}

interface Entry {
  readonly ip: string;
  readonly hostname: string;
  expiresAt: number;
}

export class DnsAttribution {
  readonly #minMs: number;
  readonly #maxMs: number;
  readonly #maxEntries: number;
  readonly #now: () => number;
  /** Keyed by `${ip} ${hostname}`; Map order is recency order, oldest first. */
  readonly #entries = new Map<string, Entry>();
  /** ip → keys of its entries. */
  readonly #byIp = new Map<string, Set<string>>();

  constructor(opts: DnsAttributionOptions = {}) {
    this.#minMs = checkCount("minRetentionMs", opts.minRetentionMs ?? 5 * 60_000, 0);
    this.#maxMs = checkCount("maxRetentionMs", opts.maxRetentionMs ?? 60 * 60_000, 0);
    if (this.#minMs > this.#maxMs) {
      throw new RangeError(`minRetentionMs (${this.#minMs}) must not exceed maxRetentionMs (${this.#maxMs})`);
    }
    this.#maxEntries = checkCount("maxEntries", opts.maxEntries ?? 4096, 1);
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Records an accepted answer. `hostname` is the name the guest queried;
   * `cnameChain` lists the CNAME targets the resolver followed to reach the
   * final A/AAAA `answers`. Every address is attributed to the queried name
   * and to each alias, since all of them legitimately resolved to it.
   * All input is validated before anything is stored; bad input throws TypeError.
   */
  record(hostname: string, answers: readonly DnsAnswer[], cnameChain: readonly string[] = []): void {
    const names = [...new Set([hostname, ...cnameChain].map(normalizeHostname))];
    const now = this.#now();
    const items = answers.map((a) => ({ ip: normalizeIp(a.ip), expiresAt: now + this.#retentionMs(a.ttlSeconds) }));
    for (const { ip, expiresAt } of items) {
      for (const name of names) this.#upsert(ip, name, expiresAt);
    }
  }

  /** Hostnames currently attributed to `ip`, sorted; [] for unknown or malformed addresses. */
  hostnamesFor(ip: string): string[] {
    const parsed = typeof ip === "string" ? parseIp(ip) : undefined;
    const keys = parsed && this.#byIp.get(unmapIpv4(parsed).text);
    if (!keys) return [];
    const now = this.#now();
    const names: string[] = [];
    for (const key of [...keys]) {
      const entry = this.#entries.get(key)!;
      if (entry.expiresAt <= now) {
        this.#delete(key);
      } else {
        this.#touch(key, entry);
        names.push(entry.hostname);
      }
    }
    return names.sort();
  }

  clear(): void {
    this.#entries.clear();
    this.#byIp.clear();
  }

  /** Live (IP, hostname) pairs. */
  get size(): number {
    this.#purgeExpired();
    return this.#entries.size;
  }

  #retentionMs(ttlSeconds: number): number {
    if (typeof ttlSeconds !== "number" || !Number.isFinite(ttlSeconds) || ttlSeconds < 0) {
      throw new TypeError(`ttlSeconds must be a non-negative number, got ${String(ttlSeconds)}`);
    }
    // RFC 2181 §8: a TTL with the top bit set is to be treated as zero.
    const ttlMs = ttlSeconds > 0x7fffffff ? 0 : ttlSeconds * 1000;
    return Math.min(Math.max(ttlMs, this.#minMs), this.#maxMs);
  }

  #upsert(ip: string, hostname: string, expiresAt: number): void {
    const key = `${ip} ${hostname}`;
    const existing = this.#entries.get(key);
    if (existing) {
      // A re-answer never shortens attribution that was already granted.
      existing.expiresAt = Math.max(existing.expiresAt, expiresAt);
      this.#touch(key, existing);
      return;
    }
    if (this.#entries.size >= this.#maxEntries) {
      // Drop dead entries first (O(n), only when full), then the least recently used.
      this.#purgeExpired();
      while (this.#entries.size >= this.#maxEntries) this.#delete(this.#entries.keys().next().value!);
    }
    this.#entries.set(key, { ip, hostname, expiresAt });
    let keys = this.#byIp.get(ip);
    if (!keys) this.#byIp.set(ip, (keys = new Set()));
    keys.add(key);
  }

  #touch(key: string, entry: Entry): void {
    this.#entries.delete(key);
    this.#entries.set(key, entry);
  }

  #delete(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    const keys = this.#byIp.get(entry.ip)!;
    keys.delete(key);
    if (keys.size === 0) this.#byIp.delete(entry.ip);
  }

  #purgeExpired(): void {
    const now = this.#now();
    for (const [key, entry] of this.#entries) if (entry.expiresAt <= now) this.#delete(key);
  }
}

/**
 * Canonical address text used as the key. IPv4-mapped addresses fold into
 * plain IPv4 on purpose: a dual-stack guest socket connecting to ::ffff:a.b.c.d
 * sends IPv4 on the wire, so without folding an accepted AAAA answer of that
 * form could never be attributed; and it grants nothing an A record for the
 * same name could not. NAT64 (64:ff9b::/96) stays distinct: it is real IPv6.
 */
function normalizeIp(ip: string): string {
  const parsed = typeof ip === "string" ? parseIp(ip) : undefined;
  if (!parsed) throw new TypeError(`not an IP address: ${JSON.stringify(ip)}`);
  return unmapIpv4(parsed).text;
}

// ASCII only, checked BEFORE lower-casing: toLowerCase() maps e.g. the Kelvin
// sign U+212A to "k", which would let a non-ASCII name impersonate an ASCII one.
const LABEL = /^[A-Za-z0-9_-]{1,63}$/;

/** Lower-case, one trailing dot removed, 1-253 characters of LDH labels (plus '_'). */
export function normalizeHostname(name: string): string {
  if (typeof name !== "string") throw new TypeError(`hostname must be a string, got ${String(name)}`);
  const bare = name.endsWith(".") ? name.slice(0, -1) : name;
  if (bare.length < 1 || bare.length > 253 || !bare.split(".").every((label) => LABEL.test(label))) {
    throw new TypeError(`not a DNS hostname: ${JSON.stringify(name)}`);
  }
  return bare.toLowerCase();
}

function checkCount(what: string, value: number, min: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${what} must be an integer >= ${min}, got ${String(value)}`);
  }
  return value;
}
