import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DirectoryBlockStore, MemoryBlockStore, rootfs, SandboxConfigError } from "../../src/index.js";
import { BlockStoreFailures, serveBlockStore } from "../../src/rootfs/block-store.js";
import { BlockStoreError } from "../../src/errors.js";
import { connectFakeHelper } from "./fake-helper.js";
import { MAX_PAYLOAD } from "../../src/protocol/frames.js";

const BS = 65536;
const ctx = { base: "ab".repeat(32) };
const other = { base: "cd".repeat(32) };
const block = (fill: number) => new Uint8Array(BS).fill(fill);
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

for (const [name, make] of [
  ["MemoryBlockStore", () => new MemoryBlockStore()],
  [
    "DirectoryBlockStore",
    () => {
      const d = mkdtempSync(join(tmpdir(), "blockstore-"));
      dirs.push(d);
      return new DirectoryBlockStore(d);
    },
  ],
] as const) {
  describe(name, () => {
    it("stores, lists and reads whole blocks per base", async () => {
      const store = make();
      expect(store.blockSize).toBe(BS);
      expect(await store.list(ctx)).toEqual([]);
      await store.write([{ index: 7n, bytes: block(7) }, { index: 2n, bytes: block(2) }], ctx);
      await store.write([{ index: 7n, bytes: block(8) }], ctx);
      await store.flush(ctx);
      expect(await store.list(ctx)).toEqual([2n, 7n]);
      expect(await store.list(other)).toEqual([]);
      const got = await store.read({ start: 1n, count: 10 }, ctx);
      expect(got.map((c) => c.index)).toEqual([2n, 7n]);
      expect(got[1]!.bytes).toEqual(block(8));
      expect(await store.read({ start: 3n, count: 2 }, ctx)).toEqual([]);
      await expect(store.write([{ index: 1n, bytes: new Uint8Array(10) }], ctx)).rejects.toThrow(RangeError);
    });
  });
}

describe("DirectoryBlockStore on disk", () => {
  it("keeps one file per block and no temporary files", async () => {
    const d = mkdtempSync(join(tmpdir(), "blockstore-"));
    dirs.push(d);
    await new DirectoryBlockStore(d).write([{ index: 255n, bytes: block(1) }], ctx);
    expect(readdirSync(join(d, ctx.base))).toEqual(["00000000000000ff.blk"]);
    expect(await new DirectoryBlockStore(d).list(ctx)).toEqual([255n]);
    expect(() => new DirectoryBlockStore("")).toThrow(SandboxConfigError);
  });
  it("writes many blocks at once (in parallel) with the last chunk of a repeated index winning", async () => {
    const d = mkdtempSync(join(tmpdir(), "blockstore-"));
    dirs.push(d);
    const store = new DirectoryBlockStore(d);
    const chunks = Array.from({ length: 40 }, (_, i) => ({ index: BigInt(i), bytes: block(i + 1) }));
    chunks.push({ index: 7n, bytes: block(99) });
    await store.write(chunks, ctx);
    await store.flush(ctx);
    expect(await store.list(ctx)).toEqual(Array.from({ length: 40 }, (_, i) => BigInt(i)));
    const got = await store.read({ start: 0n, count: 40 }, ctx);
    expect(got.map((c) => c.bytes[0])).toEqual(Array.from({ length: 40 }, (_, i) => (i === 7 ? 99 : i + 1)));
    expect(readdirSync(join(d, ctx.base)).filter((n) => n.startsWith(".tmp"))).toEqual([]);
    // A wrong-sized chunk fails the whole call before anything is written.
    await expect(store.write([{ index: 100n, bytes: block(1) }, { index: 101n, bytes: new Uint8Array(10) }], ctx)).rejects.toThrow(RangeError);
    expect(await store.list(ctx)).not.toContain(100n);
  });
});

describe("rootfs.cow validation", () => {
  const base = rootfs.builtIn("busybox");
  it("accepts a store and applies the maxDirtyBytes rules of ephemeral", () => {
    const spec = rootfs.cow({ base, writable: new MemoryBlockStore(), maxDirtyBytes: 3 * BS + 5 });
    expect(spec).toMatchObject({ kind: "cow", maxDirtyBytes: 3 * BS });
    expect(rootfs.cow({ base, writable: new MemoryBlockStore() }).maxDirtyBytes).toBe(64 * 1024 * 1024);
    expect(() => rootfs.cow({ base, writable: new MemoryBlockStore(), maxDirtyBytes: 100 })).toThrow(/at least 65536/);
  });
  it("rejects a bad store shape, block size or base with typed errors", () => {
    const store = new MemoryBlockStore();
    expect(() => rootfs.cow({ base, writable: undefined as never })).toThrow(SandboxConfigError);
    expect(() => rootfs.cow({ base, writable: { ...bind(store), read: undefined } as never })).toThrow(/no read\(\) method/);
    expect(() => rootfs.cow({ base, writable: { ...bind(store), blockSize: 4096 } })).toThrow(/blockSize 4096.*65536/);
    expect(() => rootfs.cow({ base, writable: { ...bind(store), flush: 1 } as never })).toThrow(SandboxConfigError);
    expect(() => rootfs.cow({ base: "busybox" as never, writable: store })).toThrow(/rootfs.builtIn/);
  });
});

function bind(s: MemoryBlockStore) {
  return { blockSize: s.blockSize, list: s.list.bind(s), read: s.read.bind(s), write: s.write.bind(s), flush: s.flush.bind(s) };
}

describe("serveBlockStore", () => {
  /** A real HelperConnection whose far end plays the helper; `call` sends one request and returns every reply frame. */
  async function served(store: Parameters<typeof serveBlockStore>[1], options: Parameters<typeof serveBlockStore>[3]) {
    const link = await connectFakeHelper();
    closers.push(link.close);
    serveBlockStore(link.conn, store, ctx, options);
    const call = async (id: number, header: object, bytes: Uint8Array[] = []) => {
      const replies = [await link.helper.call("BlockRequest", "BlockReply", id, header as never, bytes)];
      while (replies.at(-1)!.header.status === "ok" && (replies.at(-1)!.header as { more?: boolean }).more) {
        replies.push(await link.helper.call("BlockRequest", "BlockReply", id, { op: "flush" }).catch(() => undefined as never));
      }
      return replies;
    };
    return { ...link, call };
  }
  const closers: (() => void)[] = [];
  afterAll(() => closers.forEach((c) => c()));

  it("answers list/read/write/flush and splits big replies into frames", async () => {
    const store = new MemoryBlockStore();
    const failures = new BlockStoreFailures();
    const { helper } = await served(store, { timeoutMs: 5000, failures });
    expect((await helper.call("BlockRequest", "BlockReply", 1, { op: "write", blocks: [0, 1] }, [block(1), block(2)])).header).toEqual({ status: "ok" });
    await store.write(Array.from({ length: 20 }, (_, i) => ({ index: BigInt(10 + i), bytes: block(i) })), ctx);
    helper.framed("BlockRequest", 2, { op: "read", start: 0, count: 40 });
    const first = await helper.next(0x85, 2);
    const second = await helper.next(0x85, 2);
    const { decodeFramed } = await import("../../src/protocol/contract.js");
    const parts = [first, second].map((f) => decodeFramed("BlockReply", f.payload));
    expect(parts.map((p) => (p.header as { more: boolean }).more)).toEqual([true, false]);
    expect(parts.flatMap((p) => (p.header as { blocks: number[] }).blocks)).toHaveLength(22);
    // As many blocks as fit a frame with 64 KiB left for the header.
    expect(parts[0]!.bytes.length).toBe(Math.floor((MAX_PAYLOAD - 64 * 1024) / BS) * BS);
    expect((await helper.call("BlockRequest", "BlockReply", 3, { op: "list" })).header).toEqual({
      status: "ok",
      blocks: [0, 1, ...Array.from({ length: 20 }, (_, i) => 10 + i)],
      more: false,
    });
    expect((await helper.call("BlockRequest", "BlockReply", 4, { op: "flush" })).header).toEqual({ status: "ok" });
    expect(failures.count).toBe(0);
  });

  it("turns store failures, malformed store answers and unreadable requests into error replies", async () => {
    const store = new MemoryBlockStore();
    store.write = async () => {
      throw new Error("quota");
    };
    store.read = async () => [{ index: 99n, bytes: block(0) }];
    const seen: BlockStoreError[] = [];
    const failures = new BlockStoreFailures((e) => {
      seen.push(e);
      throw new Error("a throwing observer is ignored");
    });
    const { helper, conn } = await served(store, { timeoutMs: 5000, failures });
    const write = await helper.call("BlockRequest", "BlockReply", 5, { op: "write", blocks: [0] }, [block(0)]);
    expect(write.header).toMatchObject({ status: "failed", error: expect.stringMatching(/write\(1 blocks from 0\) failed: quota/) });
    const read = await helper.call("BlockRequest", "BlockReply", 6, { op: "read", start: 0, count: 4 });
    expect(read.header).toMatchObject({ status: "failed", error: expect.stringMatching(/outside/) });
    // Not a valid BlockRequest: the id is known from the channel, so it is answered at once.
    const bogus = await helper.call("BlockRequest", "BlockReply", 7, { op: "bogus" } as never);
    expect(bogus.header).toMatchObject({ status: "failed", error: expect.stringMatching(/not a valid BlockRequest/) });
    expect(seen.map((e) => e.op).sort()).toEqual(["read", "request", "write"]);
    expect(seen.every((e) => e instanceof BlockStoreError)).toBe(true);
    expect((seen.find((e) => e.op === "write")!.cause as Error).message).toBe("quota");
    expect(failures.count).toBe(3);
    expect(failures.first!.failures).toBe(3);
    expect(conn.closed).toBe(false);
  });

  it("a checkpoint's failed store read fails the checkpoint only: no lane failure is reported", async () => {
    const store = new MemoryBlockStore();
    store.read = async () => {
      throw new Error("store offline");
    };
    const failures = new BlockStoreFailures();
    const { helper } = await served(store, { timeoutMs: 5000, failures });
    const read = await helper.call("BlockRequest", "BlockReply", 8, { op: "read", start: 32, count: 2, snapshot: true });
    expect(read.header).toMatchObject({ status: "failed", error: expect.stringMatching(/read\(blocks 32\+2\) failed: store offline; the checkpoint failed$/) });
    expect(failures.count).toBe(0);
    const guest = await helper.call("BlockRequest", "BlockReply", 9, { op: "read", start: 32, count: 2 });
    expect(guest.header).toMatchObject({ status: "failed", error: expect.stringMatching(/the guest saw an I\/O error$/) });
    expect(failures.count).toBe(1);
  });

  it("fails a call that misses its deadline, and drops the late answer", async () => {
    const store = new MemoryBlockStore();
    let release!: () => void;
    store.flush = () => new Promise<void>((r) => (release = r));
    const failures = new BlockStoreFailures();
    const { helper } = await served(store, { timeoutMs: 50, failures });
    const reply = await helper.call("BlockRequest", "BlockReply", 8, { op: "flush" });
    expect(reply.header).toEqual({ status: "failed", error: expect.stringMatching(/did not settle within 50 ms/) });
    expect(failures.first).toMatchObject({ op: "flush", timedOut: true });
    release();
    await new Promise((r) => setTimeout(r, 30));
    expect(helper.frames).toHaveLength(0);
  });

  it("answers the engine's first list from the boot's own list() call", async () => {
    const store = new MemoryBlockStore();
    let lists = 0;
    store.list = async () => {
      lists++;
      return [3n];
    };
    const { helper } = await served(store, { timeoutMs: 5000, failures: new BlockStoreFailures(), listed: [1, 2] });
    expect((await helper.call("BlockRequest", "BlockReply", 9, { op: "list" })).header).toMatchObject({ blocks: [1, 2] });
    expect((await helper.call("BlockRequest", "BlockReply", 10, { op: "list" })).header).toMatchObject({ blocks: [3] });
    expect(lists).toBe(1);
  });
});

describe("rootfs.cow storeTimeoutMs", () => {
  it("defaults to 30 s and rejects non-positive or non-integer deadlines", () => {
    const base = rootfs.builtIn("busybox");
    expect(rootfs.cow({ base, writable: new MemoryBlockStore() }).storeTimeoutMs).toBe(30_000);
    expect(rootfs.cow({ base, writable: new MemoryBlockStore(), storeTimeoutMs: 500 }).storeTimeoutMs).toBe(500);
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      expect(() => rootfs.cow({ base, writable: new MemoryBlockStore(), storeTimeoutMs: bad })).toThrow(SandboxConfigError);
    }
  });
});
