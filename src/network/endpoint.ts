/**
 * IP addresses for network policy: strict parsing, canonical text, and
 * classification against the IANA special-purpose registries.
 *
 * Policy authors write addresses as strings, but the guest can only put binary
 * addresses on the wire, and flows are classified from those bytes
 * (`ipFromBytes`, `new Endpoint(bytes, port)`). Parsing is therefore strict on
 * purpose: the inet_aton shorthands ("127.1", "0x7f.1", "0177.0.0.1",
 * "2130706433") are rejected rather than guessed at, so an odd spelling in a
 * policy fails loudly instead of silently meaning a different address, and no
 * spelling can move a guest flow out of its class.
 */

import { ADDRESS_ROWS_V4, ADDRESS_ROWS_V6, ALWAYS_PROTECTED, type AddressRow, type Category } from "../protocol/contract.js";

export type IpFamily = 4 | 6;

export interface ParsedIp {
  readonly family: IpFamily;
  /** 4 or 16 bytes, network order. A private copy: callers may not mutate it. */
  readonly bytes: Uint8Array;
  /** Canonical text: dotted quad, or RFC 5952 for IPv6. */
  readonly text: string;
}

export interface HostPort {
  readonly ip: ParsedIp;
  readonly port: number;
}

/**
 * Category names, one per address, for audit logs. Embedded-IPv4 forms
 * (`::ffff:a.b.c.d`, `64:ff9b::a.b.c.d`, ...) take the embedded address's category.
 */
export type IpCategory = Category;

// ---------------------------------------------------------------------------
// Parsing and formatting

/** Parses a dotted-quad IPv4 or any RFC 4291 IPv6 text form (no zone ids, no brackets). */
export function parseIp(text: string): ParsedIp | undefined {
  // 45 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"; also bounds work on hostile input.
  if (typeof text !== "string" || text.length > 45) return undefined;
  const bytes = text.includes(":") ? parseIpv6(text) : parseIpv4(text);
  return bytes && ipFromBytes(bytes);
}

/** Wraps a wire address (4 or 16 bytes); the bytes are copied. */
export function ipFromBytes(bytes: Uint8Array): ParsedIp {
  if (!(bytes instanceof Uint8Array) || (bytes.length !== 4 && bytes.length !== 16)) {
    throw new TypeError("an IP address must be 4 or 16 bytes");
  }
  const copy = Uint8Array.from(bytes);
  return { family: copy.length === 4 ? 4 : 6, bytes: copy, text: copy.length === 4 ? formatIpv4(copy) : formatIpv6(copy) };
}

/**
 * Parses "203.0.113.10:5432" or "[2001:db8::1]:443" (IPv6 must be bracketed,
 * otherwise the port is ambiguous). Port 1-65535, plain decimal.
 */
export function parseHostPort(text: string): HostPort | undefined {
  if (typeof text !== "string") return undefined;
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":") return undefined;
    host = text.slice(1, close);
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return undefined;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
  }
  const ip = parseIp(host);
  // Brackets exactly when the address is IPv6.
  if (!ip || (ip.family === 6) !== text.startsWith("[")) return undefined;
  if (!/^[1-9][0-9]{0,4}$/.test(portText)) return undefined;
  const port = Number(portText);
  return port <= 65535 ? { ip, port } : undefined;
}

/**
 * The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), else
 * the address itself. A dual-stack guest socket connecting to a mapped address
 * sends plain IPv4 on the wire, so both spellings name the same destination.
 */
export function unmapIpv4(ip: ParsedIp): ParsedIp {
  return isMapped(ip.bytes) ? ipFromBytes(ip.bytes.subarray(12)) : ip;
}

// No leading zeros: "010" would be octal to inet_aton and decimal to others.
const DEC_OCTET = /^(?:0|[1-9][0-9]{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

function parseIpv4(text: string): Uint8Array | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i]!;
    if (!DEC_OCTET.test(part) || Number(part) > 255) return undefined;
    out[i] = Number(part);
  }
  return out;
}

/** Colon-separated 16-bit groups; the final field may be a dotted quad (two groups). */
function parseGroups(part: string, allowIpv4Tail: boolean): number[] | undefined {
  if (part === "") return [];
  const fields = part.split(":");
  const words: number[] = [];
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i]!;
    if (allowIpv4Tail && i === fields.length - 1 && field.includes(".")) {
      const v4 = parseIpv4(field);
      if (!v4) return undefined;
      words.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
    } else if (HEX_GROUP.test(field)) {
      words.push(parseInt(field, 16));
    } else {
      return undefined; // empty group, zone id ("%eth0"), junk
    }
  }
  return words;
}

function parseIpv6(text: string): Uint8Array | undefined {
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const compressed = halves.length === 2;
  const head = parseGroups(halves[0]!, !compressed);
  const tail = compressed ? parseGroups(halves[1]!, true) : [];
  if (!head || !tail) return undefined;
  const missing = 8 - head.length - tail.length;
  // "::" stands for at least one zero group; without it there must be exactly eight.
  if (compressed ? missing < 1 : missing !== 0) return undefined;
  const words = [...head, ...new Array<number>(missing).fill(0), ...tail];
  const out = new Uint8Array(16);
  words.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

function formatIpv4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952: lower-case, no leading zeros, "::" for the longest (first on ties) run of 2+ zero groups. */
function formatIpv6(b: Uint8Array): string {
  // RFC 5952 §5: mixed notation for IPv4-mapped addresses.
  if (isMapped(b)) return `::ffff:${formatIpv4(b.subarray(12))}`;
  const words = Array.from({ length: 8 }, (_, i) => (b[2 * i]! << 8) | b[2 * i + 1]!);
  let bestStart = -1;
  let bestLen = 1; // a single zero group is never compressed
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

function isMapped(b: Uint8Array): boolean {
  return b.length === 16 && b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
}

// ---------------------------------------------------------------------------
// Classification

interface Range {
  readonly net: Uint8Array;
  readonly len: number;
  readonly category: IpCategory;
  /** Byte offset of an embedded IPv4 address that decides the class instead. */
  readonly embedAt?: number;
  /** Protected although its category is not (see isProtected). */
  readonly protect?: boolean;
}

function range(row: AddressRow): Range {
  const [addr, len] = row.cidr.split("/");
  const ip = parseIp(addr!);
  if (!ip) throw new Error(`bad range ${row.cidr}`);
  return { net: ip.bytes, len: Number(len), category: row.category, embedAt: row.embedAt ?? undefined, protect: row.protect };
}

// The contract's rows (crates/sandbox-protocol/src/addr.rs, where each cites its RFC):
// the helper's stack classifies with the very same table. First match wins.
const V4_RANGES: readonly Range[] = ADDRESS_ROWS_V4.map(range);
const V6_RANGES: readonly Range[] = ADDRESS_ROWS_V6.map(range);
const PROTECTED = new Set<IpCategory>(ALWAYS_PROTECTED);

function inRange(b: Uint8Array, r: Range): boolean {
  const full = r.len >> 3;
  for (let i = 0; i < full; i++) if (b[i] !== r.net[i]) return false;
  const rest = r.len & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (b[full]! & mask) === (r.net[full]! & mask);
}

function lookup(b: Uint8Array): { category: IpCategory; protect: boolean } {
  for (const r of b.length === 4 ? V4_RANGES : V6_RANGES) {
    if (!inRange(b, r)) continue;
    if (r.embedAt !== undefined) return lookup(b.subarray(r.embedAt, r.embedAt + 4));
    return { category: r.category, protect: r.protect === true || PROTECTED.has(r.category) };
  }
  return { category: "public", protect: false }; // IPv4 not in any special block
}

function toParsed(ip: string | Uint8Array | ParsedIp): ParsedIp {
  if (typeof ip === "string") {
    const parsed = parseIp(ip);
    if (!parsed) throw new TypeError(`not an IP address: ${JSON.stringify(ip)}`);
    return parsed;
  }
  return ip instanceof Uint8Array ? ipFromBytes(ip) : ip;
}

/** The category of an address, for audit logs. Throws TypeError on a malformed string. */
export function classify(ip: string | Uint8Array | ParsedIp): IpCategory {
  return lookup(toParsed(ip).bytes).category;
}

/** One side of a flow, classified from its address without DNS, TLS or HTTP. */
export class Endpoint {
  /** The address in canonical text (dotted quad, or RFC 5952 IPv6). */
  readonly ip: string;
  /** The TCP/UDP port (0 for none). */
  readonly port: number;
  /** 4 or 6. */
  readonly family: IpFamily;
  /** See classify(). */
  readonly category: IpCategory;
  readonly #protected: boolean;

  constructor(ip: string | Uint8Array | ParsedIp, port: number) {
    const parsed = toParsed(ip);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RangeError(`port must be an integer from 0 to 65535, got ${String(port)}`);
    }
    const { category, protect } = lookup(parsed.bytes);
    this.ip = parsed.text;
    this.port = port;
    this.family = parsed.family;
    this.category = category;
    this.#protected = protect;
  }

  /** 127.0.0.0/8, ::1 (and their embedded-IPv4 forms). */
  isLoopback(): boolean {
    return this.category === "loopback";
  }
  /** RFC 1918, carrier-grade NAT (100.64/10), IPv6 unique local (fc00::/7). */
  isPrivate(): boolean {
    return this.category === "private";
  }
  /** 169.254/16 (cloud metadata 169.254.169.254 included), fe80::/10. */
  isLinkLocal(): boolean {
    return this.category === "link-local";
  }
  /** 224.0.0.0/4, ff00::/8. */
  isMulticast(): boolean {
    return this.category === "multicast";
  }
  /** 255.255.255.255. */
  isBroadcast(): boolean {
    return this.category === "broadcast";
  }
  /** TEST-NET-1/2/3 (192.0.2/24, 198.51.100/24, 203.0.113/24), 2001:db8::/32, 3fff::/20. */
  isDocumentation(): boolean {
    return this.category === "documentation";
  }
  /** Special-purpose space not covered by the other predicates, including the unspecified address. */
  isReserved(): boolean {
    return this.category === "reserved" || this.category === "unspecified";
  }
  /** Globally routable unicast: not in any special-purpose block. */
  isPublicInternet(): boolean {
    return this.category === "public";
  }
  /**
   * Denied before the policy runs: loopback, unspecified (all of 0/8), private
   * (RFC 1918, CGNAT, ULA), link-local, multicast, broadcast, deprecated
   * site-local and local-use NAT64, and every embedded-IPv4 form of these.
   * The host's own addresses are not knowable here; the network layer adds them.
   */
  isProtected(): boolean {
    return this.#protected;
  }

  /** `ip:port`, IPv6 in brackets. */
  toString(): string {
    return this.family === 6 ? `[${this.ip}]:${this.port}` : `${this.ip}:${this.port}`;
  }
}
