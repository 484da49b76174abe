/** Response scrubbing: leftmost-longest replacement, across any chunk boundary, and the compressed-body decision. */
import { Readable } from "node:stream";
import { gzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { decodersFor, Redactions, REDACTED, scrubText, ScrubStream } from "../../src/network/http/scrub.js";

const SECRET = "s3cr3t-value-0123";
const PLACEHOLDER = "sandbox-secret-aaaa";

async function collect(chunks: Buffer[], rules: ReturnType<Redactions["rules"]>): Promise<string> {
  const out: Buffer[] = [];
  for await (const c of Readable.from(chunks).pipe(new ScrubStream(rules))) out.push(c as Buffer);
  return Buffer.concat(out).toString("latin1");
}

describe("response scrubbing", () => {
  const r = new Redactions([{ value: SECRET, replacement: PLACEHOLDER }]);
  r.addMiddlewareValue("Bearer tok-abcdef123456");
  r.addMiddlewareValue("1"); // too short to be a credential: left alone

  it("replaces secrets and middleware values in text, longest first", () => {
    expect(scrubText(`a ${SECRET} b Bearer tok-abcdef123456 c tok-abcdef123456 d 1`, r.rules())).toBe(
      `a ${PLACEHOLDER} b ${REDACTED} c ${REDACTED} d 1`,
    );
  });

  it("catches a value split at every possible chunk boundary", async () => {
    const text = `head ${SECRET}${SECRET} tail tok-abcdef123456 and s3cr3t-val (not it)`;
    const want = `head ${PLACEHOLDER}${PLACEHOLDER} tail ${REDACTED} and s3cr3t-val (not it)`;
    const b = Buffer.from(text, "latin1");
    for (let i = 0; i <= b.length; i++) {
      for (const j of [i, Math.min(b.length, i + 3)]) {
        expect(await collect([b.subarray(0, i), b.subarray(i, j), b.subarray(j)], r.rules())).toBe(want);
      }
    }
    // One byte at a time.
    expect(await collect([...b].map((x) => Buffer.from([x])), r.rules())).toBe(want);
  });

  it("decodes gzip, deflate and br (in reverse order of application) and refuses what it cannot decode", async () => {
    expect(decodersFor(undefined)).toEqual([]);
    expect(decodersFor("identity")).toEqual([]);
    expect(decodersFor("gzip, br")).toHaveLength(2);
    expect(decodersFor("zstd")).toBeUndefined();
    expect(decodersFor("compress")).toBeUndefined();
    const [gunzip] = decodersFor("gzip")!;
    const out: Buffer[] = [];
    for await (const c of Readable.from([gzipSync(`x ${SECRET} y`)]).pipe(gunzip!).pipe(new ScrubStream(r.rules()))) out.push(c as Buffer);
    expect(Buffer.concat(out).toString()).toBe(`x ${PLACEHOLDER} y`);
  });

  it("remembers a bounded number of middleware values", () => {
    const many = new Redactions();
    for (let i = 0; i < 3000; i++) many.addMiddlewareValue(`value-${i}-xxxxxxxx`);
    expect(many.rules().length).toBe(1024);
  });
});
