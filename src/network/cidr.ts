/** Address prefixes ("10.0.0.0/8", "fc00::/7") for `allowProtected`. */
import { parseIp, unmapIpv4, type ParsedIp } from "./endpoint.js";

export interface Cidr {
  readonly ip: ParsedIp;
  readonly len: number;
  readonly text: string;
}

export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const ip = parseIp(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (!ip || !/^(0|[1-9][0-9]{0,2})$/.test(lenText)) return undefined;
  const len = Number(lenText);
  if (len > (ip.family === 4 ? 32 : 128)) return undefined;
  return { ip, len, text: `${ip.text}/${len}` };
}

/** Whether `ip` is inside; IPv4-mapped IPv6 and IPv4 spellings are the same host. */
export function cidrContains(c: Cidr, ip: ParsedIp): boolean {
  let net = c.ip;
  let len = c.len;
  const mapped = unmapIpv4(net);
  if (mapped !== net) {
    net = mapped;
    len = Math.max(0, len - 96);
  }
  const a = unmapIpv4(ip);
  if (a.family !== net.family) return false;
  for (let i = 0; i < a.bytes.length && len > 0; i++, len -= 8) {
    const mask = len >= 8 ? 0xff : (0xff << (8 - len)) & 0xff;
    if ((a.bytes[i]! & mask) !== (net.bytes[i]! & mask)) return false;
  }
  return true;
}
