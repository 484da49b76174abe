/**
 * A SandboxBlockStore on object storage (any S3-compatible service), the kind
 * of store an application writes to keep `rootfs.cow` lanes durable beyond
 * one host.
 *
 * Layout under `keyPrefix`:
 *   manifest.json          { format, blockSize, base, blocks: [hex index…] }
 *   blocks/<16 hex digits> one object per 64 KiB block
 *
 * - The manifest records the base image (`context.base`) at the first flush;
 *   a later boot with another base is refused with BlockStoreBaseMismatchError
 *   before any VM starts, so blocks never land on the wrong image.
 * - write() only buffers (the runtime hands over the arrays for good, so the
 *   store may keep them) and uploads once `maxBufferedBlocks` are waiting;
 *   flush() uploads the rest, then rewrites the manifest. The manifest is
 *   the commit point: `list()` answers from it, so blocks uploaded after the
 *   last flush are invisible to the next boot, as a disk's unflushed writes are.
 * - One writer per keyPrefix at a time: the library enforces that only within
 *   one Node process. Across processes or hosts, give each lane its own prefix
 *   or hold a lease (e.g. a lock in your database) around boot() … close().
 */
import { GetObjectCommand, NoSuchKey, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import {
  BlockStoreBaseMismatchError,
  type SandboxBlockChunk,
  type SandboxBlockRange,
  type SandboxBlockStore,
  type SandboxBlockStoreContext,
} from "@torkbot/sandbox";

export interface S3BlockStoreOptions {
  client: S3Client;
  bucket: string;
  /** Where this lane's blocks live, e.g. `lanes/agent-42` (no trailing slash). */
  keyPrefix: string;
  /** Object requests in flight at once. Default 16. */
  concurrency?: number;
  /** Written blocks kept in memory before write() uploads them. Default 64 (4 MiB). */
  maxBufferedBlocks?: number;
}

interface Manifest {
  format: 1;
  blockSize: number;
  /** sha256 of the base image the blocks belong to. */
  base: string;
  /** Committed block indices, hexadecimal. */
  blocks: string[];
}

const BLOCK_SIZE = 64 * 1024;

export class S3BlockStore implements SandboxBlockStore {
  readonly blockSize = BLOCK_SIZE;
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #concurrency: number;
  readonly #maxBuffered: number;
  /** Base the store is bound to: from the manifest, or the first context seen. */
  #base: string | undefined;
  #opening: Promise<void> | undefined;
  /** Blocks that have an object (committed or uploaded since the last flush). */
  readonly #uploaded = new Set<bigint>();
  /** Written, not uploaded yet. */
  readonly #buffered = new Map<bigint, Uint8Array>();
  /** Blocks committed in the manifest. */
  #committed = new Set<bigint>();
  /** Uploads not yet in the manifest. */
  #uncommitted = false;
  /** The PUT in flight per block: overlapping uploads (writes and flushes overlap) must not land an older copy last. */
  readonly #putting = new Map<bigint, Promise<void>>();

  /** Object requests made, for tests and metrics. */
  readonly stats = { gets: 0, puts: 0 };

  constructor(options: S3BlockStoreOptions) {
    this.#client = options.client;
    this.#bucket = options.bucket;
    this.#prefix = options.keyPrefix.replace(/\/+$/, "");
    this.#concurrency = options.concurrency ?? 16;
    this.#maxBuffered = options.maxBufferedBlocks ?? 64;
  }

  async list(context: SandboxBlockStoreContext): Promise<readonly bigint[]> {
    await this.#open(context);
    const all = new Set([...this.#committed, ...this.#buffered.keys()]);
    return [...all].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  async read(range: SandboxBlockRange, context: SandboxBlockStoreContext): Promise<readonly SandboxBlockChunk[]> {
    await this.#open(context);
    const wanted: bigint[] = [];
    for (let i = 0n; i < BigInt(range.count); i++) wanted.push(range.start + i);
    const found = await pool(wanted, this.#concurrency, async (index): Promise<SandboxBlockChunk | undefined> => {
      const buffered = this.#buffered.get(index);
      if (buffered) return { index, bytes: buffered };
      if (!this.#uploaded.has(index) && !this.#committed.has(index)) return undefined;
      const bytes = await this.#get(this.#blockKey(index));
      if (!bytes) throw new Error(`block object ${this.#blockKey(index)} is listed but missing from the bucket`);
      if (bytes.length !== BLOCK_SIZE) throw new Error(`block object ${this.#blockKey(index)} has ${bytes.length} bytes, not ${BLOCK_SIZE}`);
      return { index, bytes };
    });
    return found.filter((c): c is SandboxBlockChunk => c !== undefined);
  }

  async write(chunks: readonly SandboxBlockChunk[], context: SandboxBlockStoreContext): Promise<void> {
    await this.#open(context);
    for (const { index, bytes } of chunks) {
      if (bytes.length !== BLOCK_SIZE) throw new RangeError(`block ${index} has ${bytes.length} bytes, not ${BLOCK_SIZE}`);
      this.#buffered.set(index, bytes);
    }
    if (this.#buffered.size >= this.#maxBuffered) await this.#upload();
  }

  async flush(context: SandboxBlockStoreContext): Promise<void> {
    await this.#open(context);
    await this.#upload();
    if (!this.#uncommitted && this.#committed.size === this.#uploaded.size) return;
    const manifest: Manifest = {
      format: 1,
      blockSize: BLOCK_SIZE,
      base: context.base,
      blocks: [...this.#uploaded].sort((a, b) => (a < b ? -1 : 1)).map((i) => i.toString(16)),
    };
    await this.#put(this.#manifestKey(), new TextEncoder().encode(JSON.stringify(manifest)), "application/json");
    this.#committed = new Set(this.#uploaded);
    this.#uncommitted = false;
  }

  /** Loads the manifest once and binds the store to one base image. */
  async #open(context: SandboxBlockStoreContext): Promise<void> {
    this.#opening ??= (async () => {
      const raw = await this.#get(this.#manifestKey());
      if (!raw) return;
      const manifest = JSON.parse(new TextDecoder().decode(raw)) as Manifest;
      if (manifest.format !== 1 || manifest.blockSize !== BLOCK_SIZE) {
        throw new Error(`${this.#manifestKey()} is not a format-1 manifest of ${BLOCK_SIZE}-byte blocks`);
      }
      this.#base = manifest.base;
      this.#committed = new Set(manifest.blocks.map((hex) => BigInt(`0x${hex}`)));
      for (const i of this.#committed) this.#uploaded.add(i);
    })();
    try {
      await this.#opening;
    } catch (err) {
      this.#opening = undefined; // let the next boot retry a failed manifest read
      throw err;
    }
    this.#base ??= context.base;
    if (this.#base !== context.base) throw new BlockStoreBaseMismatchError(this.#base, context.base);
  }

  /** Uploads every buffered block; a block rewritten meanwhile stays buffered. */
  async #upload(): Promise<void> {
    const batch = [...this.#buffered];
    await pool(batch, this.#concurrency, async ([index]) => {
      const before = this.#putting.get(index);
      const put = (async () => {
        await before?.catch(() => {});
        // The newest copy: another upload may have stored it meanwhile (then
        // it is no longer buffered), or a later write replaced it.
        const bytes = this.#buffered.get(index);
        if (bytes === undefined) return;
        await this.#put(this.#blockKey(index), bytes, "application/octet-stream");
        this.#uploaded.add(index);
        this.#uncommitted = true;
        if (this.#buffered.get(index) === bytes) this.#buffered.delete(index);
      })();
      this.#putting.set(index, put);
      try {
        await put;
      } finally {
        if (this.#putting.get(index) === put) this.#putting.delete(index);
      }
    });
  }

  #manifestKey(): string {
    return `${this.#prefix}/manifest.json`;
  }

  #blockKey(index: bigint): string {
    return `${this.#prefix}/blocks/${index.toString(16).padStart(16, "0")}`;
  }

  async #get(key: string): Promise<Uint8Array | undefined> {
    this.stats.gets++;
    try {
      const res = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: key }));
      if (!res.Body) throw new Error(`GET ${key} returned no body`);
      return await res.Body.transformToByteArray();
    } catch (err) {
      if (err instanceof NoSuchKey || (err as { name?: string }).name === "NoSuchKey") return undefined;
      throw err;
    }
  }

  async #put(key: string, body: Uint8Array, contentType: string): Promise<void> {
    this.stats.puts++;
    await this.#client.send(new PutObjectCommand({ Bucket: this.#bucket, Key: key, Body: body, ContentType: contentType }));
  }
}

/** Maps `items` through `fn` with at most `limit` calls in flight, keeping order. */
async function pool<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const at = next++;
      out[at] = await fn(items[at] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
