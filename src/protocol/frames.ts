/**
 * Framing shared with the Rust side (crates/sandbox-protocol):
 * `u32 BE length | u8 kind | u32 BE channel | payload`, length counting the
 * kind, channel and payload bytes.
 */

export const Kind = {
  Hello: 0x01,
  Configure: 0x02,
  Ready: 0x03,
  InitError: 0x04,
  Shutdown: 0x05,
  Start: 0x10,
  Started: 0x11,
  StartFailed: 0x12,
  Stdin: 0x13,
  StdinEof: 0x14,
  Stdout: 0x15,
  Stderr: 0x16,
  Exit: 0x17,
  Signal: 0x18,
  Credit: 0x19,
  StdinAck: 0x1a,
  Resize: 0x1b,
  Launch: 0x80,
  Launched: 0x81,
  VmExited: 0x82,
  HelperError: 0x83,
  BlockRequest: 0x84,
  BlockReply: 0x85,
  NetRequest: 0x90,
  NetReply: 0x91,
  NetAudit: 0x92,
  PortForward: 0x93,
  PortForwarded: 0x94,
  FsRequest: 0xa0,
  FsReply: 0xa1,
} as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

export const HEADER_LEN = 9;
export const MAX_PAYLOAD = 1 << 20;

export interface Frame {
  kind: number;
  channel: number;
  payload: Buffer;
}

export class FrameError extends Error {
  override name = "FrameError";
}

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

export function encodeJson(kind: Kind, channel: number, body: unknown): Buffer {
  return encodeFrame(kind, channel, Buffer.from(JSON.stringify(body)));
}

const EMPTY = new Uint8Array(0);

/** Incremental decoder: feed socket chunks, get whole frames. */
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

/** Block frame payload (BlockRequest/BlockReply): `u32 BE header length | JSON header | block bytes`. */
export function encodeBlockPayload(header: unknown, blocks: readonly Uint8Array[] = []): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(json.length, 0);
  return Buffer.concat([len, json, ...blocks]);
}

export function decodeBlockPayload(payload: Buffer): { header: unknown; bytes: Buffer } {
  if (payload.length < 4) throw new FrameError("block payload shorter than its header length");
  const len = payload.readUInt32BE(0);
  if (4 + len > payload.length) throw new FrameError(`block header length ${len} exceeds the payload`);
  return { header: JSON.parse(payload.subarray(4, 4 + len).toString("utf8")), bytes: payload.subarray(4 + len) };
}

/**
 * A request from the helper (block store or filesystem call): its JSON header
 * and trailing bytes, or undefined when it cannot be decoded or has no integer
 * `id` — nothing can be answered without one, and only our own helper sends these.
 */
export function decodeHelperRequest<T extends { id: number }>(payload: Buffer): { req: T; bytes: Buffer } | undefined {
  try {
    const { header, bytes } = decodeBlockPayload(payload);
    const req = header as T;
    return Number.isInteger(req?.id) ? { req, bytes } : undefined;
  } catch {
    return undefined;
  }
}
