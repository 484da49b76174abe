import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DirectoryBlockStore, MemoryBlockStore, rootfs, SandboxConfigError } from "../../src/index.js";
import { BlockStoreFailures, serveBlockStore } from "../../src/rootfs/block-store.js";
import { BlockStoreError } from "../../src/errors.js";
import { decodeBlockPayload, encodeBlockPayload, Kind } from "../../src/protocol/frames.js";
import { EventEmitter } from "node:events";

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
  /** A stand-in HelperConnection that records replies. */
  function fakeConn() {
    const conn = Object.assign(new EventEmitter(), {
      replies: [] as { header: Record<string, unknown>; bytes: Buffer }[],
      send(kind: number, _ch: number, payload: Buffer) {
        expect(kind).toBe(Kind.BlockReply);
        const { header, bytes } = decodeBlockPayload(payload);
        this.replies.push({ header: header as Record<string, unknown>, bytes });
        return true;
      },
    });
    const request = (header: object, bytes: Uint8Array[] = []) =>
      conn.emit("blockRequest", { kind: Kind.BlockRequest, channel: 0, payload: encodeBlockPayload(header, bytes) });
    return { conn, request };
  }
  const settle = () => new Promise((r) => setTimeout(r, 20));

  it("answers list/read/write/flush and splits big replies into frames", async () => {
    const store = new MemoryBlockStore();
    const { conn, request } = fakeConn();
    const failures = new BlockStoreFailures();
    serveBlockStore(conn as never, store, ctx, { timeoutMs: 5000, failures });
    request({ id: 1, op: "write", blocks: [0, 1] }, [block(1), block(2)]);
    await settle();
    expect(conn.replies.pop()!.header).toEqual({ id: 1, ok: true });
    await store.write(Array.from({ length: 20 }, (_, i) => ({ index: BigInt(10 + i), bytes: block(i) })), ctx);
    request({ id: 2, op: "read", start: 0, count: 40 });
    await settle();
    const parts = conn.replies.splice(0);
    expect(parts.map((p) => p.header.more)).toEqual([true, false]);
    expect(parts.flatMap((p) => p.header.blocks)).toHaveLength(22);
    expect(parts[0]!.bytes.length).toBe(15 * BS);
    request({ id: 3, op: "list" });
    request({ id: 4, op: "flush" });
    await settle();
    expect(conn.replies.map((r) => r.header)).toEqual([
      { id: 3, ok: true, blocks: [0, 1, ...Array.from({ length: 20 }, (_, i) => 10 + i)], more: false },
      { id: 4, ok: true },
    ]);
    expect(failures.count).toBe(0);
  });

  it("turns store failures and malformed store answers into error replies", async () => {
    const store = new MemoryBlockStore();
    store.write = async () => {
      throw new Error("quota");
    };
    store.read = async () => [{ index: 99n, bytes: block(0) }];
    const { conn, request } = fakeConn();
    const seen: BlockStoreError[] = [];
    const failures = new BlockStoreFailures((e) => {
      seen.push(e);
      throw new Error("a throwing observer is ignored");
    });
    serveBlockStore(conn as never, store, ctx, { timeoutMs: 5000, failures });
    request({ id: 5, op: "write", blocks: [0] }, [block(0)]);
    request({ id: 6, op: "read", start: 0, count: 4 });
    request({ id: 7, op: "bogus" });
    await settle();
    const byId = Object.fromEntries(conn.replies.map((r) => [r.header.id, r.header]));
    expect(byId[5]).toMatchObject({ id: 5, ok: false, error: expect.stringMatching(/write\(1 blocks from 0\) failed: quota/) });
    expect(byId[6]).toMatchObject({ ok: false, error: expect.stringMatching(/outside/) });
    expect(byId[7]).toMatchObject({ ok: false });
    expect(seen.map((e) => e.op).sort()).toEqual(["bogus", "read", "write"].sort());
    expect(seen.every((e) => e instanceof BlockStoreError)).toBe(true);
    expect((seen.find((e) => e.op === "write")!.cause as Error).message).toBe("quota");
    expect(failures.count).toBe(3);
    expect(failures.first!.failures).toBe(3);
  });

  it("fails a call that misses its deadline, and drops the late answer", async () => {
    const store = new MemoryBlockStore();
    let release!: () => void;
    store.flush = () => new Promise<void>((r) => (release = r));
    const { conn, request } = fakeConn();
    const failures = new BlockStoreFailures();
    serveBlockStore(conn as never, store, ctx, { timeoutMs: 50, failures });
    request({ id: 8, op: "flush" });
    await new Promise((r) => setTimeout(r, 120));
    expect(conn.replies.map((r) => r.header)).toEqual([{ id: 8, ok: false, error: expect.stringMatching(/did not settle within 50 ms/) }]);
    expect(failures.first).toMatchObject({ op: "flush", timedOut: true });
    release();
    await settle();
    expect(conn.replies).toHaveLength(1);
  });

  it("answers the engine's first list from the boot's own list() call", async () => {
    const store = new MemoryBlockStore();
    let lists = 0;
    store.list = async () => {
      lists++;
      return [3n];
    };
    const { conn, request } = fakeConn();
    serveBlockStore(conn as never, store, ctx, { timeoutMs: 5000, failures: new BlockStoreFailures(), listed: [1, 2] });
    request({ id: 9, op: "list" });
    await settle();
    request({ id: 10, op: "list" });
    await settle();
    expect(conn.replies.map((r) => r.header.blocks)).toEqual([[1, 2], [3]]);
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
