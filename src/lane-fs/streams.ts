/**
 * Large files as ranges: a read is a sequence of range requests of at most
 * `CHUNK` bytes with `IN_FLIGHT` outstanding, a write a sequence of
 * positioned writes with the same bound. The reader (or writer) paces the
 * requests, so host and guest memory stay at a few chunks whatever the size.
 */
import { call, CHUNK, IN_FLIGHT, type FileLink } from "./requests.js";

/** The bytes of `path` from `start` to `end` (exclusive; `undefined` = to its end), in order. */
export async function* readRanges(link: FileLink, syscall: string, path: string, start: number, end: number | undefined): AsyncGenerator<Buffer> {
  type Piece = Promise<{ bytes: Buffer; eof: boolean }>;
  const pending: Piece[] = [];
  let next = start;
  const issue = () => {
    if (end !== undefined && next >= end) return;
    const length = end === undefined ? CHUNK : Math.min(CHUNK, end - next);
    const p: Piece = call(link, syscall, { op: "read", path, offset: next, length }, "data").then(({ reply, bytes }) => ({
      bytes,
      eof: reply.eof || bytes.length < length,
    }));
    // Awaited in order below; a rejection of a piece not yet awaited is not "unhandled".
    p.catch(() => {});
    pending.push(p);
    next += length;
  };
  try {
    // One request first: most files fit one range. Past it, keep IN_FLIGHT going.
    issue();
    for (let piece = pending.shift(); piece; piece = pending.shift()) {
      const { bytes, eof } = await piece;
      if (eof) {
        if (bytes.length > 0) yield bytes;
        return;
      }
      while (pending.length < IN_FLIGHT - 1 && (end === undefined || next < end)) issue();
      issue();
      if (bytes.length > 0) yield bytes;
    }
  } finally {
    pending.length = 0;
  }
}

/** Options of a positioned write sequence. */
export interface WriteTarget {
  path: string;
  mode: number | undefined;
  createParents: boolean;
}

/**
 * Sends positioned writes of at most `CHUNK` bytes, `IN_FLIGHT` at a time;
 * the first creates (or truncates) the file. Init serves requests in order,
 * so the truncation always comes first.
 */
export class RangeWriter {
  readonly #link: FileLink;
  readonly #syscall: string;
  readonly #target: WriteTarget;
  readonly #inFlight = new Set<Promise<void>>();
  #offset = 0;
  #sent = 0;
  #failure: { error: unknown } | undefined;

  constructor(link: FileLink, syscall: string, target: WriteTarget) {
    this.#link = link;
    this.#syscall = syscall;
    this.#target = target;
  }

  /** Sends `bytes` (≤ CHUNK); resolves once fewer than IN_FLIGHT writes are outstanding. */
  async write(bytes: Uint8Array): Promise<void> {
    this.#check();
    const first = this.#sent === 0;
    const { path, mode, createParents } = this.#target;
    const req = { op: "write" as const, path, offset: this.#offset, create: first, truncate: first, createParents, ...(first && mode !== undefined ? { mode } : {}) };
    this.#offset += bytes.length;
    this.#sent++;
    const p: Promise<void> = call(this.#link, this.#syscall, req, "done", [bytes]).then(
      () => {
        this.#inFlight.delete(p);
      },
      (error) => {
        this.#inFlight.delete(p);
        this.#failure ??= { error };
      },
    );
    this.#inFlight.add(p);
    while (this.#inFlight.size >= IN_FLIGHT) await Promise.race(this.#inFlight);
    this.#check();
  }

  /** Waits for every write; an empty sequence still creates (truncates) the file. */
  async finish(): Promise<void> {
    if (this.#sent === 0) await this.write(new Uint8Array(0));
    await Promise.all(this.#inFlight);
    this.#check();
  }

  #check(): void {
    if (this.#failure) throw this.#failure.error;
  }
}

/** A web WritableStream over a RangeWriter, coalescing small writes into CHUNK-sized requests. */
export function writeStream(writer: RangeWriter): WritableStream<Uint8Array> {
  let parts: Uint8Array[] = [];
  let size = 0;
  const flush = async (all: boolean) => {
    while (size >= CHUNK || (all && size > 0)) {
      const joined = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      const take = Math.min(CHUNK, joined.length);
      const rest = joined.subarray(take);
      parts = rest.length > 0 ? [rest] : [];
      size = rest.length;
      await writer.write(joined.subarray(0, take));
    }
  };
  return new WritableStream<Uint8Array>(
    {
      async write(chunk) {
        if (!(chunk instanceof Uint8Array)) throw new TypeError(`createWriteStream() takes Uint8Array chunks, got ${typeof chunk}`);
        if (chunk.length === 0) return;
        parts.push(chunk);
        size += chunk.length;
        await flush(false);
      },
      async close() {
        await flush(true);
        await writer.finish();
      },
    },
    new CountQueuingStrategy({ highWaterMark: 1 }),
  );
}

/** A web ReadableStream over `readRanges`; it pulls only as the consumer reads. */
export function readStream(ranges: AsyncGenerator<Buffer>): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const { value, done } = await ranges.next();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch (err) {
          controller.error(err);
        }
      },
      async cancel() {
        await ranges.return(undefined);
      },
    },
    new CountQueuingStrategy({ highWaterMark: 0 }),
  );
}
