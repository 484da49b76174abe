/**
 * A SandboxBlockStore on the host filesystem: one file per block under
 * `<directory>/<base sha256>/`, each written to a temporary file, fsynced and
 * renamed into place (a block file is always whole); `flush` fsyncs the
 * directory so the renames are durable too. Blocks of one `write()` go to disk
 * several at a time, so their fsyncs overlap instead of queueing one by one.
 */
import { mkdir, open, readdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { SandboxConfigError } from "../errors.js";
import { COW_BLOCK_SIZE } from "../rootfs.js";
import type { SandboxBlockChunk, SandboxBlockRange, SandboxBlockStore, SandboxBlockStoreContext } from "./block-store.js";

const BLOCK_FILE = /^([0-9a-f]{16})\.blk$/;
/** Blocks of one write() in flight at once (open + write + fsync + rename each). */
const WRITE_PARALLELISM = 8;

/**
 * A `SandboxBlockStore` in a host directory, one file per block (written whole:
 * temp file, fsync, rename), namespaced by base image; survives the process and
 * the host restarting. One lane at a time may use a directory.
 */
export class DirectoryBlockStore implements SandboxBlockStore {
  readonly blockSize: number = COW_BLOCK_SIZE;
  /** The host directory holding the blocks (one subdirectory per base image). */
  readonly directory: string;
  #tmp = 0;

  constructor(directory: string) {
    if (typeof directory !== "string" || directory === "") {
      throw new SandboxConfigError("new DirectoryBlockStore(directory) needs a directory path");
    }
    this.directory = directory;
  }

  async #dir(context: SandboxBlockStoreContext): Promise<string> {
    if (!/^[0-9a-zA-Z._-]+$/.test(context.base)) throw new Error(`unusable base id ${JSON.stringify(context.base)}`);
    const dir = join(this.directory, context.base);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  static #name(index: bigint): string {
    return `${index.toString(16).padStart(16, "0")}.blk`;
  }

  async list(context: SandboxBlockStoreContext): Promise<readonly bigint[]> {
    const names = await readdir(await this.#dir(context));
    return names
      .map((n) => BLOCK_FILE.exec(n)?.[1])
      .filter((hex): hex is string => hex !== undefined)
      .map((hex) => BigInt(`0x${hex}`))
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  async read(range: SandboxBlockRange, context: SandboxBlockStoreContext): Promise<readonly SandboxBlockChunk[]> {
    const dir = await this.#dir(context);
    const out: SandboxBlockChunk[] = [];
    for (let i = 0; i < range.count; i++) {
      const index = range.start + BigInt(i);
      try {
        const bytes = await readFile(join(dir, DirectoryBlockStore.#name(index)));
        out.push({ index, bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length) });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
    return out;
  }

  async write(chunks: readonly SandboxBlockChunk[], context: SandboxBlockStoreContext): Promise<void> {
    const dir = await this.#dir(context);
    for (const { index, bytes } of chunks) {
      if (bytes.length !== this.blockSize) throw new RangeError(`block ${index} has ${bytes.length} bytes, expected ${this.blockSize}`);
    }
    // One file per index, the last chunk for an index winning, as if written in order.
    const blocks = [...new Map(chunks.map((c) => [c.index, c.bytes] as const))];
    let next = 0;
    const worker = async () => {
      while (next < blocks.length) {
        const [index, bytes] = blocks[next++]!;
        await this.#writeBlock(dir, index, bytes);
      }
    };
    await Promise.all(Array.from({ length: Math.min(WRITE_PARALLELISM, blocks.length) }, worker));
  }

  async #writeBlock(dir: string, index: bigint, bytes: Uint8Array): Promise<void> {
    const tmp = join(dir, `.tmp-${process.pid}-${this.#tmp++}`);
    const file = await open(tmp, "w");
    try {
      await file.writeFile(bytes);
      await file.sync();
    } catch (err) {
      await file.close();
      await rm(tmp, { force: true });
      throw err;
    }
    await file.close();
    await rename(tmp, join(dir, DirectoryBlockStore.#name(index)));
  }

  async flush(context: SandboxBlockStoreContext): Promise<void> {
    const dir = await open(await this.#dir(context), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
