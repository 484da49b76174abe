/**
 * `SandboxBlockStore`: where `rootfs.cow` keeps the blocks the guest changed,
 * and the Node side of the helper's block bridge (BlockRequest → store call →
 * BlockReply).
 */
import { SandboxConfigError } from "../errors.js";
import type { HelperConnection } from "../helper-connection.js";
import { decodeBlockPayload, encodeBlockPayload, Kind, MAX_PAYLOAD, type Frame } from "../protocol/frames.js";

export interface SandboxBlockStoreContext {
  /** sha256 of the built-in base image the blocks belong to. */
  readonly base: string;
}

export interface SandboxBlockChunk {
  /** Block number (byte offset / blockSize). */
  readonly index: bigint;
  readonly bytes: Uint8Array;
}

export interface SandboxBlockRange {
  readonly start: bigint;
  readonly count: number;
}

export interface SandboxBlockStore {
  /** Must equal the engine's block size, 65536. */
  readonly blockSize: number;
  list(context: SandboxBlockStoreContext): Promise<readonly bigint[]>;
  /** The stored blocks within the range; blocks never written are simply absent. */
  read(range: SandboxBlockRange, context: SandboxBlockStoreContext): Promise<readonly SandboxBlockChunk[]>;
  /** The runtime never mutates `chunks` after passing them: a store may keep them. */
  write(chunks: readonly SandboxBlockChunk[], context: SandboxBlockStoreContext): Promise<void>;
  /** Make every block written so far durable. */
  flush?(context: SandboxBlockStoreContext): Promise<void>;
}

/** Throws a SandboxConfigError unless `store` looks like a SandboxBlockStore of `blockSize` blocks. */
export function checkBlockStore(store: unknown, blockSize: number): SandboxBlockStore {
  const s = store as Partial<Record<keyof SandboxBlockStore, unknown>> | null;
  if (typeof s !== "object" || s === null) {
    throw new SandboxConfigError("rootfs.cow({ writable }) needs a SandboxBlockStore object (e.g. new MemoryBlockStore())");
  }
  for (const m of ["list", "read", "write"] as const) {
    if (typeof s[m] !== "function") throw new SandboxConfigError(`the writable block store has no ${m}() method`);
  }
  if (s.flush !== undefined && typeof s.flush !== "function") {
    throw new SandboxConfigError("the writable block store's flush must be a method when present");
  }
  if (s.blockSize !== blockSize) {
    throw new SandboxConfigError(
      `the writable block store has blockSize ${String(s.blockSize)}, but the copy-on-write engine uses ${blockSize}-byte blocks`,
    );
  }
  return store as SandboxBlockStore;
}

interface BlockRequest {
  id: number;
  op: "list" | "read" | "write" | "flush";
  start?: number;
  count?: number;
  blocks?: number[];
}

/** Room for a reply's JSON header within one frame. */
const HEADER_ROOM = 64 * 1024;
/** Block indices per `list` reply frame (JSON numbers of at most ~16 characters). */
const LIST_PER_FRAME = 32 * 1024;

/**
 * Answers the helper's BlockRequests from `store` until the connection ends.
 * A store failure (or a malformed answer) becomes `{ ok: false, error }`,
 * which the guest sees as an I/O error.
 */
export function serveBlockStore(conn: HelperConnection, store: SandboxBlockStore, context: SandboxBlockStoreContext): void {
  const bs = store.blockSize;
  const reply = (header: object, blocks: readonly Uint8Array[] = []) =>
    conn.send(Kind.BlockReply, 0, encodeBlockPayload(header, blocks));

  const handle = async (req: BlockRequest, bytes: Buffer) => {
    switch (req.op) {
      case "list": {
        const listed = (await store.list(context)).map((i) => toIndex(i, "list()"));
        for (let at = 0; at === 0 || at < listed.length; at += LIST_PER_FRAME) {
          const more = at + LIST_PER_FRAME < listed.length;
          reply({ id: req.id, ok: true, blocks: listed.slice(at, at + LIST_PER_FRAME), more });
        }
        return;
      }
      case "read": {
        const start = req.start ?? 0;
        const count = req.count ?? 0;
        const chunks = await store.read({ start: BigInt(start), count }, context);
        const out: { index: number; bytes: Uint8Array }[] = [];
        for (const c of chunks) {
          const index = toIndex(c?.index, "read()");
          if (index < start || index >= start + count) throw new Error(`read() returned block ${index}, outside ${start}+${count}`);
          if (!(c.bytes instanceof Uint8Array) || c.bytes.length !== bs) {
            throw new Error(`read() returned block ${index} with ${c.bytes?.length ?? "no"} bytes instead of ${bs}`);
          }
          out.push({ index, bytes: c.bytes });
        }
        const perFrame = Math.max(1, Math.floor((MAX_PAYLOAD - HEADER_ROOM) / bs));
        for (let at = 0; at === 0 || at < out.length; at += perFrame) {
          const part = out.slice(at, at + perFrame);
          const more = at + perFrame < out.length;
          reply({ id: req.id, ok: true, blocks: part.map((c) => c.index), more }, part.map((c) => c.bytes));
        }
        return;
      }
      case "write": {
        const indices = req.blocks ?? [];
        if (bytes.length !== indices.length * bs) throw new Error("write request with a bad byte count");
        // Fresh copies: the store owns them and nothing else references them.
        const chunks = indices.map((index, k) => ({
          index: BigInt(index),
          bytes: new Uint8Array(bytes.subarray(k * bs, (k + 1) * bs)),
        }));
        await store.write(chunks, context);
        reply({ id: req.id, ok: true });
        return;
      }
      case "flush":
        await store.flush?.(context);
        reply({ id: req.id, ok: true });
        return;
      default:
        throw new Error(`unknown block operation ${JSON.stringify((req as { op: unknown }).op)}`);
    }
  };

  const onRequest = (frame: Frame) => {
    let req: BlockRequest;
    let bytes: Buffer;
    try {
      const decoded = decodeBlockPayload(frame.payload);
      req = decoded.header as BlockRequest;
      bytes = decoded.bytes;
      if (!Number.isInteger(req?.id)) throw new Error("no id");
    } catch {
      return; // Only our own helper sends these; nothing to answer without an id.
    }
    handle(req, bytes).catch((err: unknown) => {
      reply({ id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) });
    });
  };
  conn.on("blockRequest", onRequest);
  conn.once("exit", () => conn.off("blockRequest", onRequest));
}

function toIndex(value: unknown, what: string): number {
  if (typeof value !== "bigint" || value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Error(`${what} returned ${String(value)}, not a block index (a non-negative bigint)`);
  }
  return Number(value);
}
