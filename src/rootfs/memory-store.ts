/** An in-memory SandboxBlockStore: blocks live as long as the object (and the process). */
import { COW_BLOCK_SIZE } from "../rootfs.js";
import type { SandboxBlockChunk, SandboxBlockRange, SandboxBlockStore, SandboxBlockStoreContext } from "./block-store.js";

/**
 * A `SandboxBlockStore` in this process' memory: blocks survive across boots of
 * the same process, not across processes (`flush` has nothing to make durable).
 */
export class MemoryBlockStore implements SandboxBlockStore {
  readonly blockSize: number = COW_BLOCK_SIZE;
  /** Blocks per base image (context.base), so different bases never mix. */
  readonly #bases = new Map<string, Map<bigint, Uint8Array>>();

  #blocks(context: SandboxBlockStoreContext): Map<bigint, Uint8Array> {
    let blocks = this.#bases.get(context.base);
    if (!blocks) this.#bases.set(context.base, (blocks = new Map()));
    return blocks;
  }

  /** Number of blocks held for all bases. */
  get size(): number {
    let n = 0;
    for (const blocks of this.#bases.values()) n += blocks.size;
    return n;
  }

  async list(context: SandboxBlockStoreContext): Promise<readonly bigint[]> {
    return [...this.#blocks(context).keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  async read(range: SandboxBlockRange, context: SandboxBlockStoreContext): Promise<readonly SandboxBlockChunk[]> {
    const blocks = this.#blocks(context);
    const out: SandboxBlockChunk[] = [];
    for (let i = 0; i < range.count; i++) {
      const index = range.start + BigInt(i);
      const bytes = blocks.get(index);
      if (bytes) out.push({ index, bytes });
    }
    return out;
  }

  async write(chunks: readonly SandboxBlockChunk[], context: SandboxBlockStoreContext): Promise<void> {
    const blocks = this.#blocks(context);
    for (const { index, bytes } of chunks) {
      if (bytes.length !== this.blockSize) throw new RangeError(`block ${index} has ${bytes.length} bytes, expected ${this.blockSize}`);
      blocks.set(index, bytes);
    }
  }

  async flush(): Promise<void> {}
}
