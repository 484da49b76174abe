/**
 * `SandboxBlockStore`: where `rootfs.cow` keeps the blocks the guest changed,
 * and the Node side of the helper's block bridge (BlockRequest → store call →
 * BlockReply).
 */
import { BlockStoreBaseMismatchError, BlockStoreError, describeThrown, describeValue, SandboxConfigError, type BlockStoreOp } from "../errors.js";
import type { StoreRetryPolicy } from "../rootfs.js";
import type { HelperConnection } from "../helper-connection.js";
import { MAX_PAYLOAD } from "../protocol/frames.js";
import type { BlockReply, BlockRequest } from "../protocol/contract.js";

/** What every store call is about: the base image its blocks belong to. */
export interface SandboxBlockStoreContext {
  /** sha256 of the built-in base image the blocks belong to. */
  readonly base: string;
}

/** One whole block: its index and its `blockSize` bytes. */
export interface SandboxBlockChunk {
  /** Block number (byte offset / blockSize). */
  readonly index: bigint;
  readonly bytes: Uint8Array;
}

/** The blocks `start` … `start + count - 1`. */
export interface SandboxBlockRange {
  readonly start: bigint;
  readonly count: number;
}

/**
 * Where `rootfs.cow` keeps the blocks a guest changed. The runtime calls it
 * from the Node process that booted the lane:
 *
 * - `list` once per boot, before the VM starts; a rejection fails `boot()`
 *   (throw `BlockStoreBaseMismatchError` when `context.base` is not the image
 *   your blocks belong to). Blocks are then `read` lazily, only when the guest
 *   touches them, and `write`n in batches when the dirty-bytes budget fills
 *   and before each `flush`, which follows the guest's `sync` and shutdown:
 *   `lane.close()` resolves after the last `flush`.
 * - Calls may overlap. A `read` must return what the last resolved `write`
 *   of that block stored; a block is replaced whole or not at all.
 * - Durability: when `flush` resolves, every block written before it must
 *   survive a crash of this process or host; until then the store may buffer.
 *   A store without durable storage (memory) may make `flush` a no-op.
 * - Across processes: attach a store's blocks to one running lane at a time.
 *   The library refuses a second lane on the same store object in one
 *   process; between processes or hosts your storage layer must enforce it
 *   (a lease or lock held from `boot()` to `close()`, or one key space per lane).
 *   A second writer would interleave two filesystems' blocks: corruption.
 * - A call that rejects or does not settle within `storeTimeoutMs` fails
 *   alone: the guest sees an I/O error for that request and the host gets a
 *   `BlockStoreError` (`boot({ onError })`, then `lane.close()` rejects).
 *
 * See docs/rootfs.md for the full contract and examples/s3-block-store for a
 * store on object storage.
 */
export interface SandboxBlockStore {
  /** Must equal the engine's block size, 65536. */
  readonly blockSize: number;
  /** Every block index the store holds for `context.base`, in any order. */
  list(context: SandboxBlockStoreContext): Promise<readonly bigint[]>;
  /** The stored blocks within the range; blocks never written are simply absent. Treat returned arrays as immutable. */
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

/** Room for a reply's JSON header within one frame. */
const HEADER_ROOM = 64 * 1024;
/** Block indices per `list` reply frame (JSON numbers of at most ~16 characters). */
const LIST_PER_FRAME = 32 * 1024;

/** Default deadline of one store call. */
export const DEFAULT_STORE_TIMEOUT_MS = 30_000;

/**
 * The failures of one lane's store: kept for `close()` (the first one, with
 * a running count) and passed to the user's `onError` as they happen.
 */
export class BlockStoreFailures {
  first: BlockStoreError | undefined;
  count = 0;
  /** `performance.now()` when a store call last succeeded (close() waits while this advances; failures are no progress). */
  lastProgressAt = 0;
  readonly #onError: ((error: BlockStoreError) => void) | undefined;

  constructor(onError?: (error: BlockStoreError) => void) {
    this.#onError = onError;
  }

  report(error: BlockStoreError): void {
    this.count++;
    error.failures = this.count;
    this.first ??= error;
    if (this.first !== error) this.first.failures = this.count;
    try {
      this.#onError?.(error);
    } catch {
      // A throwing observer must not take the block bridge down with it.
    }
  }
}

/** What a failed store call did to the lane, for messages: a guest I/O error, or a failed checkpoint. */
export type StoreCallEffect = "the guest saw an I/O error" | "the checkpoint failed";

/** A store's rejection as a BlockStoreError naming the call (a BlockStoreError thrown by the store passes through). */
export function storeCallError(op: BlockStoreOp, what: string, cause: unknown, effect: StoreCallEffect = "the guest saw an I/O error"): BlockStoreError {
  if (cause instanceof BlockStoreError) return cause;
  const why = describeThrown(cause);
  return new BlockStoreError(op, `the writable block store's ${what} failed: ${why}; ${effect}`, { cause });
}

/** One retry of a failed store call, as the lane reports it (`boot({ onEvent })`). */
export interface StoreRetryEvent {
  type: "store-retry";
  op: BlockStoreOp;
  /** The attempt that failed (1 = the first). */
  attempt: number;
  /** How long until the next attempt. */
  delayMs: number;
  error: BlockStoreError;
}

/**
 * Calls `fn` under the store's retry policy: a failed attempt is tried again
 * after a growing delay while attempts remain and `timeoutMs` (the whole call's
 * deadline) allows; the last failure, or the deadline, is the call's error.
 */
export async function callStore<T>(
  op: BlockStoreOp,
  what: string,
  timeoutMs: number,
  policy: StoreRetryPolicy,
  onRetry: ((event: StoreRetryEvent) => void) | undefined,
  fn: () => Promise<T>,
  effect?: StoreCallEffect,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let delay = policy.initialDelayMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await withStoreDeadline(op, what, Math.max(1, deadline - performance.now()), fn, timeoutMs, effect);
    } catch (err) {
      const error = err as BlockStoreError;
      const wait = Math.min(delay, policy.maxDelayMs);
      // A call that ran out of time, a store bound to another base, or the last attempt: no retry.
      if (error.timedOut || error instanceof BlockStoreBaseMismatchError || attempt >= policy.attempts || performance.now() + wait >= deadline) {
        throw error;
      }
      try {
        onRetry?.({ type: "store-retry", op, attempt, delayMs: wait, error });
      } catch {
        // An observer that throws changes nothing.
      }
      await new Promise((r) => setTimeout(r, wait));
      delay *= 2;
    }
  }
}

/** Calls `fn` with a deadline: past it, rejects with a timed-out BlockStoreError. */
export async function withStoreDeadline<T>(
  op: BlockStoreOp,
  what: string,
  timeoutMs: number,
  fn: () => Promise<T>,
  namedTimeoutMs = timeoutMs,
  effect: StoreCallEffect = "the guest saw an I/O error",
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new BlockStoreError(
            op,
            `the writable block store's ${what} did not settle within ${namedTimeoutMs} ms; ${effect}. ` +
              "Make the store answer faster or raise rootfs.cow({ storeTimeoutMs })",
            { timedOut: true },
          ),
        ),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([Promise.resolve().then(fn), deadline]);
  } catch (err) {
    throw storeCallError(op, what, err, effect);
  } finally {
    clearTimeout(timer);
  }
}

/** Checks a `list()` answer and converts it to numbers. */
export function checkListed(listed: unknown): number[] {
  if (!Array.isArray(listed)) throw new Error(`list() returned ${typeof listed}, not an array of block indices`);
  return listed.map((i) => toIndex(i, "list()"));
}

export interface BlockBridgeOptions {
  /** Deadline of each store call, retries included. */
  timeoutMs: number;
  /** Default: one attempt. */
  retry?: StoreRetryPolicy;
  onRetry?: (event: StoreRetryEvent) => void;
  failures: BlockStoreFailures;
  /** The boot's own `list()` answer, served to the engine's first `list` request instead of calling the store again. */
  listed?: readonly number[];
}

type Reply = [header: BlockReply, blocks: readonly Uint8Array[]];

/**
 * Answers the helper's BlockRequests from `store` until the connection ends.
 * A store failure, a malformed answer or a missed deadline becomes
 * `{ ok: false, error }` (an I/O error in the guest) and is reported to
 * `options.failures`.
 */
export function serveBlockStore(
  conn: HelperConnection,
  store: SandboxBlockStore,
  context: SandboxBlockStoreContext,
  options: BlockBridgeOptions,
): void {
  const bs = store.blockSize;
  let listed = options.listed;
  const retry = options.retry ?? { attempts: 1, initialDelayMs: 1, maxDelayMs: 1 };
  // The write of each block still in the store's hands: a later write of the
  // same block waits for it, so an abandoned (timed-out) write can never land
  // after a newer copy of the block.
  const writing = new Map<number, Promise<unknown>>();

  const handle = async (req: BlockRequest, bytes: Buffer): Promise<Reply[]> => {
    switch (req.op) {
      case "list": {
        const all = listed ?? checkListed(await store.list(context));
        listed = undefined;
        const replies: Reply[] = [];
        for (let at = 0; at === 0 || at < all.length; at += LIST_PER_FRAME) {
          const more = at + LIST_PER_FRAME < all.length;
          replies.push([{ status: "ok", blocks: all.slice(at, at + LIST_PER_FRAME), more }, []]);
        }
        return replies;
      }
      case "read": {
        const { start, count } = req;
        const chunks = await store.read({ start: BigInt(start), count }, context);
        if (!Array.isArray(chunks)) throw new Error(`read() returned ${typeof chunks}, not an array of chunks`);
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
        const replies: Reply[] = [];
        for (let at = 0; at === 0 || at < out.length; at += perFrame) {
          const part = out.slice(at, at + perFrame);
          const more = at + perFrame < out.length;
          replies.push([{ status: "ok", blocks: part.map((c) => c.index), more }, part.map((c) => c.bytes)]);
        }
        return replies;
      }
      case "write": {
        const indices = req.blocks;
        if (bytes.length !== indices.length * bs) throw new Error("write request with a bad byte count");
        // Fresh copies: the store owns them and nothing else references them.
        const chunks = indices.map((index, k) => ({
          index: BigInt(index),
          bytes: new Uint8Array(bytes.subarray(k * bs, (k + 1) * bs)),
        }));
        const earlier = [...new Set(indices.map((i) => writing.get(i)).filter((p) => p !== undefined))];
        if (earlier.length > 0) await Promise.allSettled(earlier);
        const pending = Promise.resolve().then(() => store.write(chunks, context));
        for (const i of indices) writing.set(i, pending);
        const forget = () => indices.forEach((i) => writing.get(i) === pending && writing.delete(i));
        pending.then(forget, forget);
        await pending;
        return [[{ status: "ok" }, []]];
      }
      case "flush":
        await store.flush?.(context);
        return [[{ status: "ok" }, []]];
    }
  };

  const failed = (id: number, error: string) => conn.sendFramed("BlockReply", id, { status: "failed", error: error.slice(0, 4096) });
  conn.serve("BlockRequest", {
    handle: (req, bytes, id) => {
      // A checkpoint copying the store: its failure fails the checkpoint, not the lane.
      const forSnapshot = req.op === "read" && req.snapshot === true;
      const effect = forSnapshot ? "the checkpoint failed" : "the guest saw an I/O error";
      return callStore(req.op, describe(req), options.timeoutMs, retry, options.onRetry, () => handle(req, bytes), effect).then(
        (replies) => {
          options.failures.lastProgressAt = performance.now();
          replies.forEach(([header, blocks]) => conn.sendFramed("BlockReply", id, header, blocks));
        },
        (err: BlockStoreError) => {
          if (!forSnapshot) options.failures.report(err);
          failed(id, err.message);
        },
      );
    },
    malformed: (id, reason) => {
      options.failures.report(new BlockStoreError("request", `the helper sent a block request that could not be read (${reason}); the guest saw an I/O error`));
      failed(id, reason);
    },
  });
}

/** `read(blocks 5-8)`, for messages. */
function describe(req: BlockRequest): string {
  switch (req.op) {
    case "read":
      return `read(blocks ${req.start}+${req.count})`;
    case "write":
      return `write(${req.blocks.length} blocks from ${req.blocks[0]})`;
    default:
      return `${req.op}()`;
  }
}

function toIndex(value: unknown, what: string): number {
  if (typeof value !== "bigint" || value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Error(`${what} returned ${describeValue(value)}, not a block index (a non-negative bigint)`);
  }
  return Number(value);
}
