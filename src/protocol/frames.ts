/**
 * Framing shared with the Rust side (crates/sandbox-protocol):
 * `u32 BE length | u8 kind | u32 BE channel | payload`, length counting the
 * kind, channel and payload bytes. Kinds and limits come from the generated
 * contract (src/protocol/generated/wire.ts).
 */
import { Kind, WIRE } from "./generated/wire.js";

export { Kind };
export const HEADER_LEN = WIRE.headerLen;
export const MAX_PAYLOAD = WIRE.maxPayload;

export interface Frame {
  kind: number;
  channel: number;
  payload: Buffer;
}

/** The byte stream is broken (a length no frame can have); the connection cannot continue. */
export class FrameError extends Error {
  override name = "FrameError";
}

const EMPTY = new Uint8Array(0);

/** One frame; throws FrameError for a payload over MAX_PAYLOAD (callers check sizes first). */
export function encodeFrame(kind: Kind, channel: number, payload: Uint8Array = EMPTY): Buffer {
  if (payload.length > MAX_PAYLOAD) {
    throw new FrameError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  }
  const out = Buffer.allocUnsafe(HEADER_LEN + payload.length);
  out.writeUInt32BE(payload.length + 5, 0);
  out.writeUInt8(kind, 4);
  out.writeUInt32BE(channel >>> 0, 5);
  out.set(payload, HEADER_LEN);
  return out;
}

/** Incremental decoder: feed socket chunks, get whole frames. Throws FrameError on a broken stream. */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;

  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    while (this.#buffered >= 4) {
      const head = this.#peek(Math.min(this.#buffered, HEADER_LEN));
      const len = head.readUInt32BE(0);
      if (len < 5) throw new FrameError(`frame length ${len} is shorter than its header`);
      if (len - 5 > MAX_PAYLOAD) throw new FrameError(`frame payload of ${len - 5} bytes is over the limit`);
      if (this.#buffered < 4 + len) break;
      const whole = this.#take(4 + len);
      frames.push({
        kind: whole.readUInt8(4),
        channel: whole.readUInt32BE(5),
        payload: whole.subarray(HEADER_LEN),
      });
    }
    return frames;
  }

  #peek(n: number): Buffer {
    if (this.#chunks[0]!.length >= n) return this.#chunks[0]!;
    const joined = Buffer.concat(this.#chunks);
    this.#chunks = [joined];
    return joined;
  }

  #take(n: number): Buffer {
    const first = this.#peek(n);
    const taken = first.subarray(0, n);
    const rest = first.subarray(n);
    this.#chunks[0] = rest;
    if (rest.length === 0) this.#chunks.shift();
    this.#buffered -= n;
    return taken;
  }
}
