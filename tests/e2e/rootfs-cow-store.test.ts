/**
 * What the host sees of a rootfs.cow block store: deadlines, failures during
 * boot, base mismatches, and lazy reads from a store holding 1 GiB of blocks.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  BlockStoreBaseMismatchError,
  BlockStoreError,
  defineSandbox,
  listBuiltInImages,
  MemoryBlockStore,
  rootfs,
  type SandboxBlockChunk,
  type SandboxBlockRange,
  type SandboxBlockStore,
  type SandboxBlockStoreContext,
} from "../../src/index.js";
import { artifactPaths } from "../../src/artifacts.js";
import { Qcow2Reader } from "../../src/rootfs/qcow2-reader.js";

const busybox = rootfs.builtIn("busybox");

/** A store whose writes never settle once `hang` is set. */
class HangingStore extends MemoryBlockStore {
  hang = false;
  override async write(chunks: readonly SandboxBlockChunk[], context: SandboxBlockStoreContext): Promise<void> {
    if (this.hang) return new Promise(() => {});
    return super.write(chunks, context);
  }
}

/** Remembers the first base it sees and refuses any other, as a store bound to one image would. */
class BoundStore extends MemoryBlockStore {
  boundTo: string | undefined;
  override async list(context: SandboxBlockStoreContext): Promise<readonly bigint[]> {
    this.boundTo ??= context.base;
    if (this.boundTo !== context.base) throw new BlockStoreBaseMismatchError(this.boundTo, context.base);
    return super.list(context);
  }
}

describe("rootfs.cow store failures on the host", () => {
  it("a store call past storeTimeoutMs is EIO in the guest, a timed-out BlockStoreError on the host", async () => {
    const store = new HangingStore();
    const seen: BlockStoreError[] = [];
    const lane = await defineSandbox({ rootfs: rootfs.cow({ base: busybox, writable: store, storeTimeoutMs: 2000, maxDirtyBytes: 1 << 20 }) }).boot({
      onError: (e) => seen.push(e),
    });
    store.hang = true;
    const r = await lane.exec("sh", ["-c", "dd if=/dev/zero of=/root/f bs=64k count=32 conv=fsync 2>&1; echo rc=$?"]);
    expect(r.stdout).toMatch(/Input\/output error/);
    expect(r.stdout).not.toContain("rc=0");
    expect(seen.length).toBeGreaterThan(0);
    expect(seen[0]!.timedOut).toBe(true);
    expect(seen[0]!.op).toBe("write");
    expect(seen[0]!.message).toMatch(/did not settle within 2000 ms/);
    const closed = await lane.close().then(() => undefined, (e: unknown) => e);
    expect(closed).toBeInstanceOf(BlockStoreError);
    expect((closed as BlockStoreError).timedOut).toBe(true);
  });

  it("a store that fails its first call fails boot with a BlockStoreError, and no VM starts", async () => {
    const store: SandboxBlockStore = {
      blockSize: 65536,
      list: async () => {
        throw new Error("bucket unreachable (test)");
      },
      read: async () => [],
      write: async () => {},
    };
    const err = await defineSandbox({ rootfs: rootfs.cow({ base: busybox, writable: store }) })
      .boot()
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BlockStoreError);
    expect((err as BlockStoreError).op).toBe("list");
    expect((err as Error).message).toMatch(/list\(\) failed: bucket unreachable \(test\)/);
    // The store is free again: the same object is accepted by a later boot attempt (same failure, not "already attached").
    await expect(defineSandbox({ rootfs: rootfs.cow({ base: busybox, writable: store }) }).boot()).rejects.toThrow(/bucket unreachable/);
  });

  it("a store failing reads while the guest mounts its root fails boot with that BlockStoreError", async () => {
    const store: SandboxBlockStore = {
      blockSize: 65536,
      list: async () => [0n], // block 0 holds the ext4 superblock: the mount must read it
      read: async () => {
        throw new Error("object storage unavailable (test)");
      },
      write: async () => {},
    };
    const err = await defineSandbox({ rootfs: rootfs.cow({ base: busybox, writable: store }) })
      .boot()
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BlockStoreError);
    expect((err as BlockStoreError).op).toBe("read");
    expect(((err as BlockStoreError).cause as Error).message).toBe("object storage unavailable (test)");
  });

  it("a store bound to another base image fails boot with BlockStoreBaseMismatchError naming both digests", async () => {
    const images = listBuiltInImages();
    const a = images.find((i) => i.name === "busybox")!;
    const b = images.find((i) => i.sha256 !== a.sha256)!;
    const store = new BoundStore();
    {
      await using lane = await defineSandbox({ rootfs: rootfs.cow({ base: busybox, writable: store }) }).boot();
      expect((await lane.exec("sh", ["-c", "echo x > /root/x"])).exitCode).toBe(0);
    }
    const err = await defineSandbox({ rootfs: rootfs.cow({ base: rootfs.builtIn(b.name), writable: store }) })
      .boot()
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BlockStoreBaseMismatchError);
    expect((err as BlockStoreBaseMismatchError).code).toBe("ERR_SANDBOX_BLOCK_STORE_BASE");
    expect((err as Error).message).toContain(`sha256:${a.sha256}`);
    expect((err as Error).message).toContain(`sha256:${b.sha256}`);
  });
});

/**
 * Claims every block of the first GiB of debian:12 as stored (16384 × 64 KiB)
 * and answers reads with the base image's own bytes, so the guest sees an
 * intact disk while every block it touches in that GiB is a store read.
 */
class GibStore implements SandboxBlockStore {
  readonly blockSize = 65536;
  static readonly BLOCKS = 16384;
  blocksRead = 0;
  readCalls = 0;
  readonly #image: Qcow2Reader;
  readonly #written = new Map<bigint, Uint8Array>();
  constructor(image: Qcow2Reader) {
    this.#image = image;
  }
  async list(): Promise<readonly bigint[]> {
    const all = new Set(Array.from({ length: GibStore.BLOCKS }, (_, i) => BigInt(i)));
    for (const i of this.#written.keys()) all.add(i);
    return [...all];
  }
  async read(range: SandboxBlockRange): Promise<readonly SandboxBlockChunk[]> {
    this.readCalls++;
    const out: SandboxBlockChunk[] = [];
    for (let i = 0; i < range.count; i++) {
      const index = range.start + BigInt(i);
      const written = this.#written.get(index);
      if (written) out.push({ index, bytes: written });
      else if (index < BigInt(GibStore.BLOCKS)) out.push({ index, bytes: await this.#image.readAt(Number(index) * this.blockSize, this.blockSize) });
      else continue;
      this.blocksRead++;
    }
    return out;
  }
  async write(chunks: readonly SandboxBlockChunk[]): Promise<void> {
    for (const c of chunks) this.#written.set(c.index, c.bytes);
  }
}

/** Counts the blocks the runtime reads from the store. */
class CountingStore extends MemoryBlockStore {
  blocksRead = 0;
  override async read(range: SandboxBlockRange, context: SandboxBlockStoreContext): Promise<readonly SandboxBlockChunk[]> {
    const chunks = await super.read(range, context);
    this.blocksRead += chunks.length;
    return chunks;
  }
}

describe("rootfs.cow with 1 GiB of stored blocks", () => {
  it("real data: after a guest wrote 1 GiB, the next boot and a command read only what they touch", async () => {
    const store = new CountingStore();
    const sandbox = defineSandbox({ rootfs: rootfs.cow({ base: rootfs.builtIn("debian:12"), writable: store }) });
    {
      await using lane = await sandbox.boot();
      const w = await lane.exec("sh", ["-c", "dd if=/dev/urandom of=/root/big bs=1M count=1024 conv=fsync status=none && echo written"], {
        timeoutMs: 600_000,
      });
      expect(w.stdout).toBe("written\n");
    }
    expect(store.size).toBeGreaterThanOrEqual(16384);
    store.blocksRead = 0;
    {
      await using lane = await sandbox.boot();
      const r = await lane.exec("python3", ["-c", "print(6*7)"]);
      expect(r.stdout).toBe("42\n");
    }
    expect(store.blocksRead).toBeLessThan(store.size / 8);
    console.log(`1 GiB written by the guest: next boot + python3 read ${store.blocksRead} of ${store.size} stored blocks`);
  }, 900_000);

  it("boots debian:12 and runs a command reading only the blocks the guest touches", async () => {
    const image = listBuiltInImages().find((i) => i.name === "debian:12")!;
    const reader = await Qcow2Reader.openFile(join(artifactPaths().imagesDir, image.file));
    try {
      const store = new GibStore(reader);
      {
        await using lane = await defineSandbox({ rootfs: rootfs.cow({ base: rootfs.builtIn("debian:12"), writable: store }) }).boot();
        const r = await lane.exec("sh", ["-c", "python3 -c 'print(6*7)' && ls /usr/bin | wc -l"]);
        expect(r.exitCode).toBe(0);
        expect(r.stdout.split("\n")[0]).toBe("42");
      }
      // The guest read what booting and one command need: a small fraction of the GiB.
      expect(store.blocksRead).toBeGreaterThan(0);
      expect(store.blocksRead).toBeLessThan(GibStore.BLOCKS / 8);
      console.log(`1 GiB store: ${store.blocksRead} of ${GibStore.BLOCKS} blocks read in ${store.readCalls} calls`);
    } finally {
      await reader.close();
    }
  });
});
