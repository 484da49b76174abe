/**
 * The request parser (http-parser-js), hardened for a hostile guest, and
 * helpers over its flat `[name, value, …]` header arrays.
 */
import { HTTPParser } from "http-parser-js";

export type RequestParser = InstanceType<typeof HTTPParser>;

/** A REQUEST parser with the hardening below applied. */
export function createRequestParser(): RequestParser {
  const parser = new HTTPParser(HTTPParser.REQUEST);
  hardenParser(parser);
  return parser;
}

/** The first value of header `name` (lowercase). */
export function headerValue(raw: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) return raw[i + 1];
  return undefined;
}

/** Every value of header `name` (lowercase). */
export function rawValues(raw: readonly string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!);
  return out;
}

/**
 * Hardens one http-parser-js instance against a hostile guest:
 * - chunk sizes: it reads them with parseInt, so a negative size moves its
 *   cursor backwards (a guest could make it loop forever); here a size line is
 *   1-12 hex digits with optional extensions;
 * - line length: it only bounds the head, not lines inside a chunked body
 *   (size lines, trailers), so every line is capped at 8 KiB;
 * - field count: at most 256 header or trailer fields per message.
 */
function hardenParser(parser: RequestParser): void {
  const p = parser as unknown as {
    consumeLine(): string | undefined;
    parseHeader(line: string, headers: string[]): void;
    line: string;
    body_bytes: number;
    state: string;
    BODY_CHUNKHEAD(): void;
  };
  const parseError = (message: string, code: string) => Object.assign(new Error(`Parse Error: ${message}`), { code });
  const consumeLine = p.consumeLine;
  p.consumeLine = function (this: typeof p) {
    const line = consumeLine.call(this);
    if (line === undefined && this.line.length > 8192) throw parseError("line too long", "HPE_LINE_TOO_LONG");
    return line;
  };
  const parseHeader = p.parseHeader;
  p.parseHeader = function (this: typeof p, line: string, headers: string[]) {
    if (headers.length >= 512) throw parseError("too many header fields", "HPE_HEADER_OVERFLOW");
    parseHeader.call(this, line, headers);
  };
  p.BODY_CHUNKHEAD = function (this: typeof p) {
    const line = this.consumeLine();
    if (line === undefined) return;
    const m = /^([0-9a-fA-F]{1,12})[ \t]*(;.*)?$/.exec(line);
    if (!m) throw parseError("invalid chunk size", "HPE_INVALID_CHUNK_SIZE");
    this.body_bytes = parseInt(m[1]!, 16);
    this.state = this.body_bytes === 0 ? "BODY_CHUNKTRAILERS" : "BODY_CHUNK";
  };
}

/** Whether header `name` (lowercase) is present with a value satisfying `pred`. */
export function hasHeader(raw: readonly string[], name: string, pred: (v: string) => boolean = () => true): boolean {
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i]!.toLowerCase() === name && pred(raw[i + 1]!)) return true;
  return false;
}
