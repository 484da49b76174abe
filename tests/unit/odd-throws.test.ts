/**
 * User callbacks may throw anything: `null`, `undefined`, a string, a
 * null-prototype object, an object whose `code` or `message` getter throws.
 * Filesystems answer EIO and report the problem; block stores fail the one
 * call with a BlockStoreError; nothing escapes and the process lives.
 */
import { afterAll, describe, expect, it } from "vitest";
import { BlockStoreError, MemoryBlockStore } from "../../src/index.js";
import { describeThrown } from "../../src/errors.js";
import { errnoOf } from "../../src/fs/errno.js";
import { MountServer, type FsRequest } from "../../src/fs/server.js";
import { fs } from "../../src/fs/index.js";
import type { SandboxFileSystem } from "../../src/fs/types.js";
import { BlockStoreFailures, serveBlockStore } from "../../src/rootfs/block-store.js";
import { connectFakeHelper } from "./fake-helper.js";

const odd = (): [string, unknown][] => [
  ["null", null],
  ["undefined", undefined],
  ["a string", "just a string"],
  ["a null-prototype object", Object.assign(Object.create(null), { code: 5 })],
  [
    "an object whose code and message getters throw",
    {
      get code() {
        throw new Error("code getter");
      },
      get message() {
        throw new Error("message getter");
      },
    },
  ],
  [
    "an Error whose code getter throws",
    Object.defineProperty(new Error("e"), "code", {
      get() {
        throw new Error("boom");
      },
    }),
  ],
];

describe("odd thrown values", () => {
  it("describeThrown and errnoOf never throw, and unknown failures are EIO", () => {
    for (const [what, v] of odd()) {
      expect(typeof describeThrown(v), what).toBe("string");
      expect(errnoOf(v), what).toBe(5);
    }
  });

  it("a filesystem that throws them answers EIO and reports the problem", async () => {
    for (const [what, thrown] of odd()) {
      const problems: string[] = [];
      const vol = fs.memory({ files: { "/a": "a" } }).promises as unknown as SandboxFileSystem;
      const broken = new Proxy(vol, {
        get: (t, k) => (k === "lstat" ? () => Promise.reject(thrown) : Reflect.get(t, k)),
      });
      const server = new MountServer(broken, (m) => problems.push(m));
      const req = { mount: 0, uid: 0, gid: 0, pid: 1, call: { op: "lookup", parent: 1, name: "a" } } as FsRequest;
      const a = await server.handle(req, new Uint8Array());
      expect(a.reply, what).toEqual({ result: "error", errno: 5 });
      expect(problems, what).toHaveLength(1);
    }
  });

  const closers: (() => void)[] = [];
  afterAll(() => closers.forEach((c) => c()));

  it("a block store that throws them fails that call with a BlockStoreError and the bridge carries on", async () => {
    for (const [what, thrown] of odd()) {
      const link = await connectFakeHelper();
      closers.push(link.close);
      const store = new MemoryBlockStore();
      store.write = () => Promise.reject(thrown);
      store.flush = () => {
        throw thrown;
      };
      const seen: unknown[] = [];
      const failures = new BlockStoreFailures((e) => seen.push(e));
      serveBlockStore(link.conn, store, { base: "ab".repeat(32) }, { timeoutMs: 2000, failures });
      const w = await link.helper.call("BlockRequest", "BlockReply", 1, { op: "write", blocks: [0] }, [new Uint8Array(65536)]);
      expect(w.header.status, what).toBe("failed");
      const f = await link.helper.call("BlockRequest", "BlockReply", 2, { op: "flush" });
      expect(f.header.status, what).toBe("failed");
      expect(seen.every((e) => e instanceof BlockStoreError), what).toBe(true);
      expect(failures.first, what).toBeInstanceOf(BlockStoreError);
      expect(typeof failures.first!.message).toBe("string");
      expect(link.conn.closed).toBe(false);
    }
  });
});
