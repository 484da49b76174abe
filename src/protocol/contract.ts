/**
 * Typed, validated payloads. Every message is checked by the validator
 * generated from the Rust types (types, integer ranges, enum values, no
 * unknown fields) before any code uses it; a payload that fails throws a
 * ContractViolation naming the frame kind and what was wrong.
 */
import { encodeFrame, FrameError, HEADER_LEN, MAX_PAYLOAD } from "./frames.js";
import * as validators from "./generated/validators.js";
import { Kind, KINDS, type KindInfo, type KindMessages, type KindName, type MessageName, type Messages } from "./generated/wire.js";

export * from "./generated/wire.js";

/** A frame that breaks the wire contract. */
export class ContractViolation extends Error {
  override name = "ContractViolation";
  constructor(
    readonly kind: number,
    readonly channel: number,
    readonly reason: string,
  ) {
    super(`${describeKind(kind)} on channel ${channel}: ${reason}`);
  }
}

const BY_VALUE: (KindInfo | undefined)[] = [];
for (const k of KINDS) BY_VALUE[k.value] = k;

/** The contract's entry for a kind byte; undefined for bytes no kind has. */
export function kindInfo(value: number): KindInfo | undefined {
  return BY_VALUE[value];
}

/** "Exit frame (0x17)", or "frame kind 0x7f" for bytes no kind has. */
export function describeKind(value: number): string {
  const hex = `0x${value.toString(16).padStart(2, "0")}`;
  const k = kindInfo(value);
  return k ? `${k.name} frame (${hex})` : `frame kind ${hex}`;
}

/** Kind names whose payload is one JSON message, or a framed header + bytes. */
type JsonKind = { [K in KindName]: KindMessages[K] extends null ? never : K }[KindName];

interface Validator {
  (data: unknown): boolean;
  errors?: { instancePath?: string; message?: string }[] | null;
}

const VALIDATORS = validators as unknown as Record<MessageName, Validator>;

/** Validates `value` as message `name`; callers type the result (a generic return type here is a union too large for tsc). */
function check(name: MessageName, value: unknown, kind: number, channel: number): unknown {
  const validate = VALIDATORS[name];
  if (!validate(value)) {
    const e = validate.errors?.[0];
    const where = e?.instancePath ? `${e.instancePath} ` : "";
    throw new ContractViolation(kind, channel, `not a valid ${name}: ${where}${e?.message ?? "invalid"}`);
  }
  return value;
}

function parse(bytes: Uint8Array, kind: number, channel: number): unknown {
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8"));
  } catch {
    throw new ContractViolation(kind, channel, "the payload is not JSON");
  }
}

const MESSAGE = {} as Record<JsonKind, MessageName>;
for (const k of KINDS) if (k.message) MESSAGE[k.name as JsonKind] = k.message;

/** Decodes and validates the JSON payload of a `kind` frame. */
export function decodeJson<K extends JsonKind>(kind: K, payload: Uint8Array, channel = 0): KindMessages[K] {
  const value = Kind[kind];
  return check(MESSAGE[kind], parse(payload, value, channel), value, channel) as KindMessages[K];
}

/** Decodes and validates a framed payload: `u32 BE header length | JSON header | bytes`. */
export function decodeFramed<K extends JsonKind>(kind: K, payload: Buffer, channel = 0): { header: KindMessages[K]; bytes: Buffer } {
  const value = Kind[kind];
  if (payload.length < 4) throw new ContractViolation(value, channel, "the payload is shorter than its header length");
  const len = payload.readUInt32BE(0);
  if (4 + len > payload.length) throw new ContractViolation(value, channel, `header length ${len} exceeds the payload`);
  const header = check(MESSAGE[kind], parse(payload.subarray(4, 4 + len), value, channel), value, channel);
  return { header: header as KindMessages[K], bytes: payload.subarray(4 + len) };
}

/** One frame carrying `msg` as JSON. */
export function encodeJson<K extends JsonKind>(kind: K, channel: number, msg: KindMessages[K]): Buffer {
  return encodeFrame(Kind[kind], channel, Buffer.from(JSON.stringify(msg)));
}

/** One frame carrying `header` and `bytes` as a framed payload. Throws FrameError past MAX_PAYLOAD. */
export function encodeFramed<K extends JsonKind>(kind: K, channel: number, header: KindMessages[K], bytes: readonly Uint8Array[] = []): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const total = 4 + json.length + bytes.reduce((n, b) => n + b.length, 0);
  if (total > MAX_PAYLOAD) throw new FrameError(`${kind} payload of ${total} bytes exceeds ${MAX_PAYLOAD}`);
  const out = Buffer.allocUnsafe(HEADER_LEN + total);
  out.writeUInt32BE(total + 5, 0);
  out.writeUInt8(Kind[kind], 4);
  out.writeUInt32BE(channel >>> 0, 5);
  out.writeUInt32BE(json.length, HEADER_LEN);
  json.copy(out, HEADER_LEN + 4);
  let at = HEADER_LEN + 4 + json.length;
  for (const b of bytes) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}
