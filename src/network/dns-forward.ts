/**
 * DNS for the guest, answered in Node: the policy's resolvers are asked with the
 * guest's own query bytes, the answer is checked against the question and
 * parsed with dns-packet (so accepted answers can feed hostname attribution
 * before the guest sees them).
 */
import { createSocket } from "node:dgram";
import { connect } from "node:net";
import dnsPacket from "dns-packet";
import { parseHostPort, parseIp, unmapIpv4, type ParsedIp } from "./endpoint.js";

export interface ParsedQuery {
  id: number;
  name: string;
  type: string;
}

/** The single question of a guest query; undefined for anything else. */
export function parseQuery(query: Buffer): ParsedQuery | undefined {
  try {
    const p = dnsPacket.decode(query);
    if (p.type !== "query" || p.questions?.length !== 1) return undefined;
    const q = p.questions[0]!;
    return { id: p.id ?? 0, name: q.name.toLowerCase().replace(/\.$/, ""), type: String(q.type) };
  } catch {
    return undefined;
  }
}

export interface ResolverAddress {
  ip: ParsedIp;
  port: number;
  text: string;
}

/** "1.1.1.1", "1.1.1.1:5353", "2606:4700::1111", "[2606:4700::1111]:53". */
export function parseResolver(text: string): ResolverAddress | undefined {
  const bare = parseIp(text);
  if (bare) return { ip: unmapIpv4(bare), port: 53, text: bare.family === 6 ? `[${bare.text}]:53` : `${bare.text}:53` };
  const hp = parseHostPort(text);
  if (!hp) return undefined;
  const ip = unmapIpv4(hp.ip);
  return { ip, port: hp.port, text: ip.family === 6 ? `[${ip.text}]:${hp.port}` : `${ip.text}:${hp.port}` };
}

export interface Answered {
  answer: Buffer;
  resolver: string;
  rcode: string;
  /** A/AAAA records of the name the question's CNAME chain ends at (the question name itself without CNAMEs). */
  addresses: { ip: string; ttlSeconds: number }[];
  cnames: string[];
}

function matches(query: ParsedQuery, answer: Buffer): dnsPacket.Packet | undefined {
  try {
    const p = dnsPacket.decode(answer);
    if (p.type !== "response" || p.id !== query.id || p.questions?.length !== 1) return undefined;
    const q = p.questions[0]!;
    if (q.name.toLowerCase().replace(/\.$/, "") !== query.name || String(q.type) !== query.type) return undefined;
    return p;
  } catch {
    return undefined;
  }
}

/** Longer CNAME chains are not followed (resolvers give up around 8-16 hops too). */
const MAX_CNAME_HOPS = 16;

/** Reads an answer matched to `query`: rcode, and the addresses its CNAME chain (walked strictly from the question) ends at. */
export function summarize(query: ParsedQuery, p: dnsPacket.Packet, answer: Buffer, resolver: string): Answered {
  const rcode = String((p as { rcode?: string }).rcode ?? "NOERROR");
  const addresses: Answered["addresses"] = [];
  const cnames: string[] = [];
  if (rcode === "NOERROR") {
    // Walk the chain from the queried name only, one record at a time: each CNAME
    // must be the only one owned by the current name, and addresses count only
    // for the name the chain ends at. Unrelated and out-of-chain records, and a
    // branching or looping chain, attribute nothing.
    const answers = (p.answers ?? []) as dnsPacket.Answer[];
    const owner = (a: dnsPacket.Answer) => a.name.toLowerCase().replace(/\.$/, "");
    let current = query.name;
    const seen = new Set([current]);
    let valid = true;
    for (let hops = 0; valid; hops++) {
      const next = answers.filter((a) => a.type === "CNAME" && owner(a) === current);
      if (next.length === 0) break;
      const target = next.length === 1 ? String((next[0] as { data?: unknown }).data).toLowerCase().replace(/\.$/, "") : "";
      if (next.length > 1 || hops >= MAX_CNAME_HOPS || seen.has(target)) valid = false;
      else {
        seen.add(target);
        cnames.push(target);
        current = target;
      }
    }
    if (valid) {
      for (const a of answers) {
        if ((a.type === "A" || a.type === "AAAA") && owner(a) === current && typeof a.data === "string") {
          addresses.push({ ip: a.data, ttlSeconds: a.ttl ?? 0 });
        }
      }
    }
  }
  return { answer, resolver, rcode, addresses, cnames };
}

function askUdp(r: ResolverAddress, query: Buffer, parsed: ParsedQuery, timeoutMs: number): Promise<Answered | undefined> {
  return new Promise((resolve) => {
    const sock = createSocket(r.ip.family === 6 ? "udp6" : "udp4");
    const done = (v: Answered | undefined) => {
      clearTimeout(timer);
      sock.close();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.on("error", () => done(undefined));
    // Stray or spoofed datagrams are skipped, not taken as the answer.
    sock.on("message", (msg, rinfo) => {
      if (rinfo.port !== r.port) return;
      const p = matches(parsed, msg);
      if (p) done(summarize(parsed, p, msg, r.text));
    });
    sock.connect(r.port, r.ip.text, () => sock.send(query));
  });
}

function askTcp(r: ResolverAddress, query: Buffer, parsed: ParsedQuery, timeoutMs: number): Promise<Answered | undefined> {
  return new Promise((resolve) => {
    const sock = connect({ host: r.ip.text, port: r.port });
    let buf = Buffer.alloc(0);
    const done = (v: Answered | undefined) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.on("error", () => done(undefined));
    sock.on("close", () => done(undefined));
    sock.on("connect", () => {
      const len = Buffer.alloc(2);
      len.writeUInt16BE(query.length);
      sock.write(Buffer.concat([len, query]));
    });
    sock.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 2) return;
      const n = buf.readUInt16BE(0);
      if (buf.length < 2 + n) return;
      const msg = buf.subarray(2, 2 + n);
      const p = matches(parsed, msg);
      done(p ? summarize(parsed, p, Buffer.from(msg), r.text) : undefined);
    });
  });
}

/** Asks each resolver in turn (same transport the guest used); the first matching answer wins. */
export async function forwardQuery(
  resolvers: readonly ResolverAddress[],
  query: Buffer,
  parsed: ParsedQuery,
  transport: "udp" | "tcp",
  timeoutMs: number,
): Promise<Answered | undefined> {
  for (const r of resolvers) {
    let a = transport === "tcp" ? await askTcp(r, query, parsed, timeoutMs) : await askUdp(r, query, parsed, timeoutMs);
    // A truncated UDP answer is retried over TCP; the guest then gets the stack's TC answer or the full one.
    if (a && transport === "udp" && (a.answer[2]! & 0x02) !== 0) {
      a = (await askTcp(r, query, parsed, timeoutMs)) ?? a;
    }
    if (a) return a;
  }
  return undefined;
}

/** SERVFAIL echoing the question (and the query's additional section, e.g. its OPT record). */
export function servfail(query: Buffer): Buffer {
  const out = Buffer.from(query);
  out[2] = (out[2]! | 0x80) & 0x81; // QR, keep RD
  out[3] = 0x80 | 2; // RA, SERVFAIL
  out.writeUInt16BE(0, 6); // no answers
  out.writeUInt16BE(0, 8); // no authority
  return out;
}
