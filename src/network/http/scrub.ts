/**
 * Scrubbing responses on their way back to the guest: every real secret value
 * and every header value a middleware set is replaced (by the secret's
 * placeholder, or `[redacted]`) in response headers and bodies, so an upstream
 * that echoes requests cannot hand the guest the credentials the host added.
 *
 * Bodies are scrubbed as a stream: a chunk's tail that could be the start of a
 * value is held back until the next chunk decides it, so a value split across
 * chunks is still caught. Compressed bodies (gzip, deflate, br) are decoded
 * first and sent on decoded; an encoding that cannot be decoded is refused.
 */
import { Transform, type TransformCallback } from "node:stream";
import { createBrotliDecompress, createGunzip, createInflate } from "node:zlib";
import type { Redaction } from "./secrets.js";

/** What a middleware-set header value becomes in responses. */
export const REDACTED = "[redacted]";
/** Shorter middleware values are not scrubbed: they are not credentials, and replacing them would corrupt ordinary bodies. */
export const MIN_REDACTED_LENGTH = 8;
/** Middleware values remembered per lane (oldest forgotten first). */
const MAX_DYNAMIC = 1024;

/** One value → replacement, as bytes. */
export interface ScrubRule {
  readonly from: Buffer;
  readonly to: Buffer;
}

/**
 * A lane's values to scrub: the secrets' real values (fixed) plus the header
 * values middleware set on its requests (remembered from then on, bounded),
 * because an upstream may reflect a value on a later request or connection.
 */
export class Redactions {
  readonly #fixed: ScrubRule[];
  readonly #dynamic = new Map<string, ScrubRule>();
  #rules: ScrubRule[] | undefined;

  constructor(fixed: readonly Redaction[] = []) {
    this.#fixed = fixed.filter((r) => r.value.length > 0).map((r) => ({ from: Buffer.from(r.value, "latin1"), to: Buffer.from(r.replacement, "latin1") }));
  }

  /** Remembers a header value a middleware set (and, for `Scheme credentials`, the credentials alone). */
  addMiddlewareValue(value: string): void {
    const parts = [value];
    const scheme = /^\s*[A-Za-z][A-Za-z0-9_-]*\s+(\S+)\s*$/.exec(value);
    if (scheme) {
      parts.push(scheme[1]!);
      // Basic credentials: the decoded `user:password` and the password too.
      if (/^\s*basic\s/i.test(value)) {
        const decoded = Buffer.from(scheme[1]!, "base64").toString("latin1");
        parts.push(decoded, decoded.slice(decoded.indexOf(":") + 1));
      }
    }
    for (const p of parts) {
      const v = p.trim();
      if (v.length < MIN_REDACTED_LENGTH || this.#dynamic.has(v)) continue;
      if (this.#dynamic.size >= MAX_DYNAMIC) this.#dynamic.delete(this.#dynamic.keys().next().value!);
      this.#dynamic.set(v, { from: Buffer.from(v, "latin1"), to: Buffer.from(REDACTED, "latin1") });
      this.#rules = undefined;
    }
  }

  /** The rules in force now (a response keeps the snapshot it started with). */
  rules(): readonly ScrubRule[] {
    this.#rules ??= [...this.#fixed, ...this.#dynamic.values()];
    return this.#rules;
  }
}

/** Leftmost-longest replacement of every rule in `input`. */
export function scrubBuffer(input: Buffer, rules: readonly ScrubRule[]): Buffer {
  return scrubPrefix(input, rules, true).out;
}

/** Replaces every rule in a header value (values are latin1, as on the wire). */
export function scrubText(input: string, rules: readonly ScrubRule[]): string {
  if (rules.length === 0) return input;
  return scrubBuffer(Buffer.from(input, "latin1"), rules).toString("latin1");
}

/** Whether any rule occurs in `input`. */
export function containsAny(input: string, rules: readonly ScrubRule[]): boolean {
  const b = Buffer.from(input, "latin1");
  return rules.some((r) => b.includes(r.from));
}

/**
 * Scrubs `input`; unless `final`, holds back the shortest tail that could
 * still begin a match (returned as `rest`).
 */
function scrubPrefix(input: Buffer, rules: readonly ScrubRule[], final: boolean): { out: Buffer; rest: Buffer } {
  const parts: Buffer[] = [];
  let pos = 0;
  for (;;) {
    // The earliest full match from pos; the longest one when several start there.
    let at = -1;
    let rule: ScrubRule | undefined;
    for (const r of rules) {
      const i = input.indexOf(r.from, pos);
      if (i >= 0 && (at < 0 || i < at || (i === at && r.from.length > rule!.from.length))) {
        at = i;
        rule = r;
      }
    }
    if (!rule) break;
    // A longer rule might start before `at` and run past the end of this chunk: hold from there.
    if (!final) {
      const held = partialStart(input, rules, pos, at);
      if (held >= 0) {
        parts.push(input.subarray(pos, held));
        return { out: Buffer.concat(parts), rest: input.subarray(held) };
      }
    }
    parts.push(input.subarray(pos, at), rule.to);
    pos = at + rule.from.length;
  }
  if (final) {
    parts.push(input.subarray(pos));
    return { out: Buffer.concat(parts), rest: Buffer.alloc(0) };
  }
  const held = partialStart(input, rules, pos, input.length);
  const cut = held >= 0 ? held : input.length;
  parts.push(input.subarray(pos, cut));
  return { out: Buffer.concat(parts), rest: input.subarray(cut) };
}

/** The first position in [from, before) where a rule begins and runs past the end of `input`; -1 if none. */
function partialStart(input: Buffer, rules: readonly ScrubRule[], from: number, before: number): number {
  let longest = 0;
  for (const r of rules) longest = Math.max(longest, r.from.length);
  const start = Math.max(from, input.length - longest + 1);
  for (let i = start; i < before; i++) {
    const tail = input.subarray(i);
    if (rules.some((r) => r.from.length > tail.length && r.from.subarray(0, tail.length).equals(tail))) return i;
  }
  return -1;
}

/** A streaming scrubber: output never contains a rule's value, wherever chunk boundaries fall. */
export class ScrubStream extends Transform {
  readonly #rules: readonly ScrubRule[];
  #rest: Buffer = Buffer.alloc(0);

  constructor(rules: readonly ScrubRule[]) {
    super();
    this.#rules = rules;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const { out, rest } = scrubPrefix(this.#rest.length ? Buffer.concat([this.#rest, chunk]) : chunk, this.#rules, false);
    // Copy: `rest` may be a view of a large chunk.
    this.#rest = Buffer.from(rest);
    if (out.length) this.push(out);
    cb();
  }

  override _flush(cb: TransformCallback): void {
    const out = scrubBuffer(this.#rest, this.#rules);
    if (out.length) this.push(out);
    cb();
  }
}

/**
 * Decoders for a `Content-Encoding` list, in the order to apply them; `undefined`
 * when an encoding is one this interceptor cannot decode (the response is refused).
 */
export function decodersFor(contentEncoding: string | undefined): Transform[] | undefined {
  if (contentEncoding === undefined) return [];
  const codings = contentEncoding
    .split(",")
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== "" && c !== "identity");
  if (codings.length > 4) return undefined;
  const out: Transform[] = [];
  // Encodings are listed in the order they were applied: undo them last to first.
  for (const c of codings.reverse()) {
    if (c === "gzip" || c === "x-gzip") out.push(createGunzip());
    else if (c === "deflate") out.push(createInflate());
    else if (c === "br") out.push(createBrotliDecompress());
    else return undefined;
  }
  return out;
}
