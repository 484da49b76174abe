import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Volume } from "memfs";
import { ERRNO, errnoOf, fsError } from "../../src/fs/errno.js";
import { NodeTable, ROOT_ID } from "../../src/fs/nodes.js";
import { MountServer, O, serveFileSystems, type FsRequest } from "../../src/fs/server.js";
import { connectFakeHelper } from "./fake-helper.js";
import { fs, SandboxConfigError, type SandboxFileSystem } from "../../src/index.js";
import { resolveArtifacts } from "../../src/artifacts.js";
import { loadedNative, loadNative } from "../../src/native.js";
import { helperServedDir } from "../../src/fs/host-dir.js";
import { launchSpec } from "../../src/boot/launch.js";

const RESOURCES = { cpus: 1, memoryMiB: 512, diskMiB: 0 } as never;

describe("errno mapping", () => {
  it("maps every errno name a JavaScript filesystem throws to its Linux number", () => {
    const table: [string, number][] = [
      ["EPERM", 1], ["ENOENT", 2], ["EIO", 5], ["EBADF", 9], ["EAGAIN", 11], ["ENOMEM", 12], ["EACCES", 13],
      ["EBUSY", 16], ["EEXIST", 17], ["EXDEV", 18], ["ENOTDIR", 20], ["EISDIR", 21], ["EINVAL", 22], ["EMFILE", 24],
      ["EFBIG", 27], ["ENOSPC", 28], ["EROFS", 30], ["EMLINK", 31], ["ENAMETOOLONG", 36], ["ENOSYS", 38],
      ["ENOTEMPTY", 39], ["ELOOP", 40], ["EOPNOTSUPP", 95], ["ENOTSUP", 95], ["EDQUOT", 122], ["ESTALE", 116],
    ];
    for (const [code, n] of table) {
      expect(errnoOf(Object.assign(new Error(code), { code })), code).toBe(n);
      expect(ERRNO[code]).toBe(n);
    }
  });

  it("falls back to a numeric errno, and to EIO for anything else", () => {
    expect(errnoOf({ errno: -13 })).toBe(13);
    expect(errnoOf({ errno: 28 })).toBe(28);
    expect(errnoOf({ code: "ERR_SOMETHING_NODE_SPECIFIC" })).toBe(5);
    expect(errnoOf(new TypeError("bug"))).toBe(5);
    expect(errnoOf(undefined)).toBe(5);
    expect(errnoOf("string")).toBe(5);
    expect(errnoOf({ errno: 0 })).toBe(5);
    expect(errnoOf({ errno: 99999 })).toBe(5);
    expect(fsError("EROFS", "x")).toMatchObject({ code: "EROFS", errno: -30 });
  });
});

describe("node table", () => {
  it("keeps one id per path, moves ids with renames and detaches replaced names", () => {
    const t = new NodeTable();
    const a = t.lookup("/a");
    const ab = t.lookup("/a/b");
    const c = t.lookup("/c");
    expect(t.lookup("/a")).toBe(a);
    t.rename("/a", "/c");
    expect(t.path(a)).toBe("/c");
    expect(t.path(ab)).toBe("/c/b");
    expect(() => t.path(c)).toThrow(expect.objectContaining({ code: "ENOENT" }));
    expect(t.isDetached(c)).toBe(true);
    t.detach("/c/b");
    expect(() => t.path(ab)).toThrow(expect.objectContaining({ code: "ENOENT" }));
    expect(t.path(ROOT_ID)).toBe("/");
  });

  it("forgets ids when the kernel drops its references", () => {
    const t = new NodeTable();
    const x = t.lookup("/x");
    t.lookup("/x");
    t.forget(x, 1);
    expect(t.path(x)).toBe("/x");
    t.forget(x, 1);
    expect(() => t.path(x)).toThrow(expect.objectContaining({ code: "ESTALE" }));
    expect(t.lookup("/x")).not.toBe(x);
    t.forget(ROOT_ID, 100);
    expect(t.path(ROOT_ID)).toBe("/");
    expect(t.size).toBe(2);
  });
});

describe("node table against a plain scan of every path", () => {
  /** The table as it was before its tree index: every change scans all paths. */
  class ScanTable {
    readonly byPath = new Map<string, number>([["/", ROOT_ID]]);
    readonly paths = new Map<number, string | null>([[ROOT_ID, "/"]]);
    under(path: string) {
      const prefix = path === "/" ? "/" : `${path}/`;
      return [...this.byPath.keys()].filter((p) => p === path || p.startsWith(prefix));
    }
    add(path: string, id: number) {
      if (!this.byPath.has(path)) {
        this.byPath.set(path, id);
        this.paths.set(id, path);
      }
    }
    forget(id: number) {
      const p = this.paths.get(id);
      this.paths.delete(id);
      if (p != null && this.byPath.get(p) === id) this.byPath.delete(p);
    }
    detach(path: string) {
      for (const p of this.under(path)) {
        this.paths.set(this.byPath.get(p)!, null);
        this.byPath.delete(p);
      }
    }
    rename(from: string, to: string) {
      if (from === to) return;
      this.detach(to);
      for (const p of this.under(from)) {
        const id = this.byPath.get(p)!;
        this.byPath.delete(p);
        this.byPath.set(to + p.slice(from.length), id);
        this.paths.set(id, to + p.slice(from.length));
      }
    }
  }

  it("agrees on every id's path through random lookups, forgets, unlinks and renames", () => {
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
    const names = ["a", "b", "c", "d"];
    const randomPath = () => "/" + Array.from({ length: 1 + rand(4) }, () => names[rand(names.length)]).join("/");
    const t = new NodeTable();
    const ref = new ScanTable();
    const ids = new Set<number>();
    for (let step = 0; step < 20_000; step++) {
      const r = rand(10);
      const p = randomPath();
      if (r < 5) {
        const id = t.lookup(p);
        ids.add(id);
        ref.add(p, id);
      } else if (r < 7 && ids.size > 0) {
        const id = [...ids][rand(ids.size)]!;
        t.forget(id, Infinity);
        ref.forget(id);
        ids.delete(id);
      } else if (r < 8) {
        t.detach(p);
        ref.detach(p);
      } else {
        const to = randomPath();
        if (to.startsWith(`${p}/`) || p.startsWith(`${to}/`)) continue; // the kernel refuses these
        t.rename(p, to);
        ref.rename(p, to);
      }
    }
    for (const id of ids) {
      const want = ref.paths.get(id);
      if (want === null) expect(t.isDetached(id)).toBe(true);
      else expect(t.path(id)).toBe(want);
    }
    expect(t.size).toBe(ids.size + 1);
  });
});

/** The methods of a class-based filesystem as own, bound properties. */
function bindAll(inner: SandboxFileSystem): SandboxFileSystem {
  const keys = ["lstat", "readdir", "open", "mkdir", "rmdir", "unlink", "rename", "symlink", "readlink", "link", "chmod", "truncate", "utimes", "lutimes", "lchown"] as const;
  return Object.fromEntries(keys.map((k) => [k, (inner[k] as (...a: unknown[]) => unknown).bind(inner)])) as unknown as SandboxFileSystem;
}

/** Drives a MountServer the way the helper does. */
function driver(target: SandboxFileSystem) {
  const server = new MountServer(target);
  let id = 0;
  const call = async (op: string, fields: Record<string, unknown> = {}, data = new Uint8Array()) => {
    const { uid = 0, gid = 0, ...rest } = fields as { uid?: number; gid?: number };
    const req = { mount: 0, uid, gid, pid: ++id, call: { op, ...rest } } as unknown as FsRequest;
    const a = await server.handle(req, data);
    return { ...a.reply, bytes: a.bytes } as Record<string, unknown> & { bytes?: Uint8Array };
  };
  return { server, call };
}

describe("MountServer over memfs", () => {
  it("creates, writes, reads, renames and reports errno like POSIX", async () => {
    const vol = fs.memory({ files: { "/dir/old": "old" } });
    const { server, call } = driver(vol.promises as unknown as SandboxFileSystem);
    const created = await call("create", { parent: ROOT_ID, name: "f", mode: 0o640, flags: O.EXCL | 2, uid: 1000, gid: 1001 });
    expect(created).toMatchObject({ node: expect.any(Number), fh: expect.any(Number), attr: { mode: 0o100640, uid: 1000, gid: 1001 } });
    expect(await call("write", { node: created.node as number, fh: created.fh as number, offset: 3 }, Buffer.from("abc"))).toMatchObject({ size: 3 });
    const read = await call("read", { node: created.node as number, fh: created.fh as number, offset: 0, size: 100 });
    expect(Buffer.from(read.bytes!)).toEqual(Buffer.from("\0\0\0abc"));
    expect(await call("create", { parent: ROOT_ID, name: "f", mode: 0o644, flags: O.EXCL | 1 })).toMatchObject({ errno: 17 });
    const dir = await call("lookup", { parent: ROOT_ID, name: "dir" });
    expect(await call("rename", { parent: ROOT_ID, name: "f", newParent: dir.node as number, newName: "old", flags: 0 })).not.toHaveProperty("errno");
    expect(vol.readFileSync("/dir/old", "utf8")).toBe("\0\0\0abc");
    expect(await call("rename", { parent: ROOT_ID, name: "dir", newParent: ROOT_ID, newName: "x", flags: 0 })).not.toHaveProperty("errno");
    expect(await call("rmdir", { parent: ROOT_ID, name: "x" })).toMatchObject({ errno: 39 });
    expect(await call("lookup", { parent: ROOT_ID, name: ".." })).toMatchObject({ errno: 22 });
    expect(await call("lookup", { parent: ROOT_ID, name: "missing" })).toMatchObject({ errno: 2 });
    expect(await call("read", { fh: 999, offset: 0, size: 1 })).toMatchObject({ errno: 9 });
    expect(await call("bogus")).toMatchObject({ errno: 38 });
    expect(await call("release", { fh: created.fh as number })).not.toHaveProperty("errno");
    expect(server.openHandles).toBe(0);
  });

  it("lists directories in pages with stable offsets", async () => {
    const files = Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`/d/f${i}`, `${i}`]));
    const vol = fs.memory({ files });
    const { call } = driver(vol.promises as unknown as SandboxFileSystem);
    const d = await call("lookup", { parent: ROOT_ID, name: "d" });
    const { fh } = await call("opendir", { node: d.node as number });
    const names: string[] = [];
    let offset = 0;
    for (;;) {
      const page = (await call("readdir", { node: d.node as number, fh: fh as number, offset, size: 320 })).entries as { name: string; off: number; type: number }[];
      if (page.length === 0) break;
      expect(page.length).toBeLessThanOrEqual(10);
      names.push(...page.map((e) => e.name));
      offset = page.at(-1)!.off;
    }
    expect(names.slice(0, 2)).toEqual([".", ".."]);
    expect(names.length).toBe(52);
  });

  it("reports failures without an errno code (bugs) besides answering EIO", async () => {
    const problems: string[] = [];
    const vol = fs.memory({ files: { "/a": "a" } });
    const inner = vol.promises as unknown as SandboxFileSystem;
    const buggy: SandboxFileSystem = { ...bindAll(inner), readlink: () => Promise.reject(new TypeError("boom")) };
    const server = new MountServer(buggy, (m) => problems.push(m));
    const req = (call: object) => ({ mount: 0, uid: 0, gid: 0, pid: 1, call }) as FsRequest;
    const a = await server.handle(req({ op: "readlink", node: ROOT_ID }), new Uint8Array());
    expect(a.reply).toEqual({ result: "error", errno: 5 });
    const b = await server.handle(req({ op: "lookup", parent: ROOT_ID, name: "missing" }), new Uint8Array());
    expect(b.reply).toEqual({ result: "error", errno: 2 });
    expect(problems).toEqual(["filesystem readlink failed without an errno code (boom); the guest got EIO"]);
  });

  it("keeps a readdir answer far below the frame limit whatever size the guest asks for", async () => {
    const long = "n".repeat(250);
    const files = Object.fromEntries(Array.from({ length: 3000 }, (_, i) => [`/big/${long}${i}`, ""]));
    const vol = fs.memory({ files });
    const { call } = driver(vol.promises as unknown as SandboxFileSystem);
    const d = await call("lookup", { parent: ROOT_ID, name: "big" });
    const { fh } = await call("opendir", { node: d.node as number });
    const page = await call("readdir", { node: d.node as number, fh: fh as number, offset: 0, size: 512 * 1024 });
    const entries = page.entries as unknown[];
    expect(entries.length).toBeGreaterThan(10);
    expect(entries.length).toBeLessThan(3002);
    expect(JSON.stringify(page).length).toBeLessThan(512 * 1024);
  });

  it("fs.memory lets guest root through permission bits the guest kernel already checked", async () => {
    const vol = fs.memory({ files: { "/ro.txt": "x" } });
    vol.chmodSync("/ro.txt", 0o000);
    vol.chownSync("/ro.txt", 4242, 4242);
    const { call } = driver(vol.promises as unknown as SandboxFileSystem);
    const f = await call("lookup", { parent: ROOT_ID, name: "ro.txt" });
    const opened = await call("open", { node: f.node as number, flags: 0 });
    expect(opened).toHaveProperty("fh");
  });
});

/** Every entry of one directory listing through `server`: name → [ino, d_type]. */
async function listing(target: SandboxFileSystem, dir: string): Promise<Record<string, [number, number]>> {
  const { call } = driver(target);
  const d = await call("lookup", { parent: ROOT_ID, name: dir });
  const { fh } = await call("opendir", { node: d.node as number });
  const out: Record<string, [number, number]> = {};
  for (let offset = 0; ; ) {
    const page = (await call("readdir", { node: d.node as number, fh: fh as number, offset, size: 4096 })).entries as { name: string; ino: number; type: number; off: number }[];
    if (page.length === 0) break;
    for (const e of page) out[e.name] = [e.ino, e.type];
    offset = page.at(-1)!.off;
  }
  await call("releasedir", { fh: fh as number });
  return out;
}

describe("directory listings without an lstat per entry", () => {
  const expectLikeLstat = async (target: SandboxFileSystem) => {
    expect(typeof target.listDirectory).toBe("function");
    const listed = await listing(target, "d");
    // The same filesystem without listDirectory: the lstat-per-entry path.
    const unlisted = Object.fromEntries(
      ["lstat", "readdir", "open", "mkdir", "rmdir", "unlink", "rename", "symlink", "readlink", "link", "chmod", "truncate", "utimes"].map((k) => [k, (target as unknown as Record<string, (...a: unknown[]) => unknown>)[k]!.bind(target)]),
    );
    const lstated = await listing(unlisted as unknown as SandboxFileSystem, "d");
    expect(listed).toEqual(lstated);
    expect(Object.keys(listed).sort()).toEqual([".", "..", ...Array.from({ length: 300 }, (_, i) => `f${i}`), "link", "sub"].sort());
    expect(listed.sub![1]).toBe(4);
    expect(listed.link![1]).toBe(10);
    expect(listed.f7![1]).toBe(8);
    expect(new Set(Object.values(listed).map(([ino]) => ino)).size).toBe(Object.keys(listed).length);
  };

  it("fs.memory lists from memfs' tree", async () => {
    const files: Record<string, string | null> = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`/d/f${i}`, `${i}`]));
    files["/d/sub"] = null;
    const mem = fs.memory({ files });
    mem.symlinkSync("f1", "/d/link");
    await expectLikeLstat(fs.virtual(mem).fs);
    await expect(fs.virtual(mem).fs.listDirectory!("/d/f1")).rejects.toMatchObject({ code: "ENOTDIR" });
    await expect(fs.virtual(mem).fs.listDirectory!("/missing")).rejects.toMatchObject({ code: "ENOENT" });
  });

  const hostTree = () => {
    const root = mkdtempSync(join(tmpdir(), "sbx-list-"));
    mkdirSync(join(root, "d", "sub"), { recursive: true });
    for (let i = 0; i < 300; i++) writeFileSync(join(root, "d", `f${i}`), `${i}`);
    symlinkSync("f1", join(root, "d", "link"));
    symlinkSync("d", join(root, "alias"));
    return root;
  };

  /** What fs.hostDir answers for lstat and path checks; the same before and after the addon is loaded. */
  const probeHostDir = async (root: string) => {
    const h = fs.hostDir(root);
    const paths = ["/", "/d", "/d/f1", "/d/link", "/alias", "/alias/f1", "/d/f1/x", "/missing", "/d/missing", "/d/sub"];
    const out: Record<string, unknown> = {};
    for (const p of paths) {
      out[`lstat ${p}`] = await h.lstat(p).then(
        // Directory times move with the probe's own mkdirs.
        (st) => ({ ino: Number(st.ino), mode: st.mode, size: Number(st.size), nlink: st.nlink, uid: st.uid, mtimeMs: st.mode & 0o040000 ? 0 : st.mtimeMs }),
        (err: { code: string }) => err.code,
      );
      out[`mkdir ${p}/new`] = await h.mkdir(`${p === "/" ? "" : p}/new`).then(
        () => (rmSync(join(root, p, "new"), { recursive: true }), "made"),
        (err: { code: string }) => err.code,
      );
    }
    return out;
  };
  let portable: Record<string, unknown> | undefined;
  let probedRoot: string | undefined;

  it("fs.hostDir answers lstat and path checks with Node's calls before the addon is loaded", async () => {
    expect(loadedNative()).toBeUndefined();
    probedRoot = hostTree();
    portable = await probeHostDir(probedRoot);
    expect(portable["lstat /alias/f1"]).toBe("ELOOP");
    expect(portable["lstat /d/f1/x"]).toBe("ENOTDIR");
    expect(portable["mkdir /alias/new"]).toBe("ELOOP");
    expect(portable["mkdir /d/new"]).toBe("made");
  });

  it("fs.hostDir lists with an lstat per entry before the addon is loaded", async () => {
    expect(loadedNative()).toBeUndefined();
    const root = hostTree();
    try {
      await expectLikeLstat(fs.hostDir(root));
      await expect(fs.hostDir(root).listDirectory!("/alias")).rejects.toMatchObject({ code: "ENOTDIR" });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("fs.hostDir lists through the addon's getdents sweep, never through a final symlink", async () => {
    const addon = loadNative(resolveArtifacts());
    const root = hostTree();
    try {
      expect(addon.listDirectory(join(root, "alias"))).toBeNull();
      expect(addon.listDirectory(join(root, "missing"))).toBeNull();
      expect(addon.listDirectory(join(root, "d"))!.names.length).toBe(302);
      await expectLikeLstat(fs.hostDir(root));
      await expect(fs.hostDir(root).listDirectory!("/alias")).rejects.toMatchObject({ code: "ENOTDIR" });
      await expect(fs.hostDir(root).listDirectory!("/missing")).rejects.toMatchObject({ code: "ENOENT" });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
  it("fs.hostDir's lstat and path checks through the addon's openat2 answer exactly as Node's calls did", async () => {
    expect(loadedNative()?.lstatNoSymlinks).toBeTypeOf("function");
    try {
      expect(await probeHostDir(probedRoot!)).toEqual(portable);
      // Through a symlinked directory the kernel refuses the whole walk.
      expect(loadedNative()!.lstatNoSymlinks!(join(probedRoot!, "alias"), "f1")).toEqual(new Float64Array([40]));
    } finally {
      rmSync(probedRoot!, { recursive: true, force: true });
    }
  });
});

describe("fs.hostDir served by the helper", () => {
  it("goes into the Launch as the resolved directory only for fs.hostDir objects themselves", () => {
    loadNative(resolveArtifacts());
    const base = mkdtempSync(join(tmpdir(), "sandbox-served-"));
    try {
      mkdirSync(join(base, "real"));
      symlinkSync("real", join(base, "alias"));
      const rw = fs.hostDir(join(base, "alias"));
      const ro = fs.hostDir(join(base, "real"), { readOnly: true });
      const methods = ["lstat", "readdir", "open", "mkdir", "rmdir", "unlink", "rename", "symlink", "readlink", "link", "chmod", "truncate", "utimes"] as const;
      const call = rw as unknown as Record<string, (...a: unknown[]) => unknown>;
      const wrapped = Object.fromEntries(methods.map((m) => [m, (...a: unknown[]) => call[m]!(...a)])) as unknown as SandboxFileSystem;
      const mounts = [fs.virtual(rw), fs.virtual(ro), fs.virtual(rw, { readOnly: true }), fs.virtual(wrapped), fs.virtual(fs.memory())];
      const spec = launchSpec(resolveArtifacts(), { name: "debian:12", path: "/x", format: "raw" } as never, RESOURCES, { backend: "qemu", accel: "tcg" } as never, undefined, mounts);
      const real = realpathSync(join(base, "real"));
      expect(spec.mounts.map((m) => m.hostDir)).toEqual([{ path: real, readOnly: false }, { path: real, readOnly: true }, { path: real, readOnly: true }, undefined, undefined]);
      expect(helperServedDir(wrapped)).toBeUndefined();
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe("fs.virtual / fs.readOnly", () => {
  it("accepts memfs volumes and SandboxFileSystem objects, rejects the rest with a typed error", async () => {
    const vol = fs.memory();
    // fs.memory() is served through the volume's own synchronous calls, with its directory listing.
    const served = fs.virtual(vol).fs;
    const h = await served.open("/new", O.CREAT | 1, 0o640);
    expect(await h.write(Buffer.from("hi"), 0, 2, 0)).toEqual({ bytesWritten: 2 });
    await h.close();
    expect(vol.readFileSync("/new", "utf8")).toBe("hi");
    expect((await served.lstat("/new")).mode & 0o777).toBe(0o640);
    expect(await served.listDirectory!("/")).toEqual([expect.objectContaining({ name: "new" })]);
    await expect(served.lstat("/missing")).rejects.toMatchObject({ code: "ENOENT" });
    await expect(served.mkdir("/new")).rejects.toMatchObject({ code: "EEXIST" });
    expect(Error.stackTraceLimit).toBeGreaterThan(0);
    // Its lstat reads memfs' tree and answers exactly as memfs' lstat, symbolic links on the way included.
    vol.mkdirSync("/a/b", { recursive: true });
    vol.writeFileSync("/a/b/f", "12345");
    vol.symlinkSync("/a", "/ln");
    const keys = ["ino", "size", "mode", "nlink", "uid", "gid", "rdev", "blocks", "atimeMs", "mtimeMs", "ctimeMs"] as const;
    for (const p of ["/", "/a", "/a/b", "/a/b/f", "/ln", "/ln/b/f", "/a/../a/b/f"]) {
      const got = await served.lstat(p);
      const want = vol.lstatSync(p)!;
      for (const k of keys) expect([p, k, got[k]]).toEqual([p, k, want[k]]);
    }
    await expect(served.lstat("/a/b/f/x")).rejects.toMatchObject({ code: "ENOTDIR" });
    for (const p of ["/a/nope", "/nope/deeper", "/ln/nope"]) await expect(served.lstat(p)).rejects.toMatchObject({ code: "ENOENT" });
    // The tree answers plain paths itself; memfs' lstatSync only sees the unusual ones.
    const slow: string[] = [];
    const lstatSync = vol.lstatSync;
    vol.lstatSync = ((p: string) => (slow.push(p), lstatSync(p))) as typeof vol.lstatSync;
    try {
      for (const p of ["/", "/a", "/a/b/f", "/ln", "/ln/b/f", "/a/../a/b/f"]) await served.lstat(p);
      await expect(served.lstat("/a/nope")).rejects.toMatchObject({ code: "ENOENT" });
    } finally {
      vol.lstatSync = lstatSync;
    }
    expect(slow).toEqual(["/ln/b/f", "/a/../a/b/f"]);
    // Any other memfs volume: its promises API.
    const other = new Volume();
    expect(fs.virtual(other).fs).toBe(other.promises);
    expect(fs.virtual(vol).readOnly).toBe(false);
    expect(fs.virtual(fs.readOnly(vol)).readOnly).toBe(true);
    expect(() => fs.virtual({} as never)).toThrow(SandboxConfigError);
    expect(() => fs.virtual({ lstat() {} } as never)).toThrow(/missing readdir, open/);
    expect(() => fs.memory({ files: { "relative.txt": "x" } })).toThrow(SandboxConfigError);
  });

  it("takes an attribute cache time of 0-60000 ms, default 0 (never cached)", () => {
    const vol = fs.memory();
    expect(fs.virtual(vol).attributeCacheMs).toBe(0);
    expect(fs.virtual(vol, { attributeCacheMs: 1000 }).attributeCacheMs).toBe(1000);
    for (const bad of [-1, 60_001, 1.5, "1000"]) expect(() => fs.virtual(vol, { attributeCacheMs: bad as never })).toThrow(SandboxConfigError);
  });

  it("refuses every change with EROFS and still reads", async () => {
    const vol = fs.memory({ files: { "/a": "a" } });
    const ro = fs.readOnly(vol);
    await expect(ro.open("/a", O.ACCMODE & 1)).rejects.toMatchObject({ code: "EROFS" });
    await expect(ro.open("/a", O.CREAT)).rejects.toMatchObject({ code: "EROFS" });
    await expect(ro.unlink("/a")).rejects.toMatchObject({ code: "EROFS" });
    await expect(ro.rename("/a", "/b")).rejects.toMatchObject({ code: "EROFS" });
    const h = await ro.open("/a", 0);
    const buf = Buffer.alloc(1);
    await h.read(buf, 0, 1, 0);
    expect(buf.toString()).toBe("a");
    await expect(h.write(buf, 0, 1, 0)).rejects.toMatchObject({ code: "EROFS" });
    await h.close();
  });
});

describe("fs.hostDir confinement", () => {
  let base: string;
  let root: string;
  let outside: string;
  const snapshot = () =>
    readdirSync(outside)
      .sort()
      .map((n) => `${n}:${createHash("sha256").update(readFileSync(join(outside, n))).digest("hex")}`);
  beforeEach(() => {
    base = mkdtempSync(join(tmpdir(), "hostdir-"));
    root = join(base, "root");
    outside = join(base, "outside");
    mkdirSync(join(root, "sub"), { recursive: true });
    mkdirSync(outside);
    writeFileSync(join(outside, "secret"), "secret");
    writeFileSync(join(root, "inside"), "inside");
  });
  afterEach(() => rmSync(base, { recursive: true, force: true }));

  it("never resolves '..', follows no symlink to outside the root, and leaves the outside untouched", async () => {
    const before = snapshot();
    const h = fs.hostDir(root);
    await expect(h.lstat("/../outside/secret")).rejects.toMatchObject({ code: "EINVAL" });
    await expect(h.open("/sub/../../outside/secret", 0)).rejects.toMatchObject({ code: "EINVAL" });
    // Symlinks the guest makes are stored as text; the host never follows them.
    await h.symlink(outside, "/out");
    await h.symlink("/", "/rootlink");
    await h.symlink("../outside/secret", "/rel");
    await expect(h.open("/out/secret", 0)).rejects.toMatchObject({ code: "ELOOP" });
    await expect(h.open("/rel", 1)).rejects.toMatchObject({ code: "ELOOP" });
    await expect(h.open("/rootlink/etc/passwd", 0)).rejects.toMatchObject({ code: "ELOOP" });
    await expect(h.truncate("/rel", 0)).rejects.toMatchObject({ code: "ELOOP" });
    await expect(h.chmod("/rel", 0o777)).rejects.toMatchObject({ code: "EOPNOTSUPP" });
    await expect(h.readdir("/out")).rejects.toMatchObject({ code: "ENOTDIR" });
    await expect(h.mkdir("/out/newdir")).rejects.toMatchObject({ code: "ELOOP" });
    await expect(h.rename("/inside", "/out/moved")).rejects.toMatchObject({ code: "ELOOP" });
    await expect(h.link("/rel", "/hard")).resolves.toBeUndefined(); // links the symlink itself, not its target
    expect((await h.lstat("/hard")).mode & 0o170000).toBe(0o120000);
    await h.lutimes!("/rel", 1, 1);
    expect(statSync(join(outside, "secret")).mtimeMs).toBeGreaterThan(1000);
    expect(snapshot()).toEqual(before);
  });

  it("serialises path operations, so a directory swapped for a symlink mid-flight is never followed", async () => {
    const before = snapshot();
    const h = fs.hostDir(root);
    // Many creates under /sub race with renames that swap /sub for a symlink to the outside.
    const attacks: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++) {
      attacks.push(h.open(`/sub/f${i}`, O.CREAT | 1, 0o644).then((f) => f.close(), () => undefined));
      if (i % 2 === 0) {
        attacks.push(
          h
            .rename("/sub", "/sub.away")
            .then(() => h.symlink(outside, "/sub"))
            .then(() => h.unlink("/sub"))
            .then(() => h.rename("/sub.away", "/sub"))
            .catch(() => undefined),
        );
      }
    }
    // And the same race made from outside the adapter's view of the tree:
    // the path the server holds for /sub now names a symlink.
    await Promise.all(attacks);
    rmSync(join(root, "sub"), { recursive: true, force: true });
    symlinkSync(outside, join(root, "sub"));
    await expect(h.open("/sub/pwned", O.CREAT | 1, 0o644)).rejects.toMatchObject({ code: "ELOOP" });
    expect(snapshot()).toEqual(before);
  });

  it("read-only host directories refuse changes with EROFS", async () => {
    const h = fs.hostDir(root, { readOnly: true });
    await expect(h.open("/inside", 1)).rejects.toMatchObject({ code: "EROFS" });
    await expect(h.mkdir("/x")).rejects.toMatchObject({ code: "EROFS" });
    expect(fs.virtual(h).readOnly).toBe(true);
    expect(() => fs.hostDir(join(base, "missing"))).toThrow(SandboxConfigError);
  });
});

describe("serving a lane's mounts", () => {
  it("warns once, through one sweep, of an operation still unanswered at the helper's deadline", async () => {
    const link = await connectFakeHelper();
    const warnings: string[] = [];
    const onWarning = (w: Error & { code?: string }) => {
      if (w.code === "SANDBOX_FS") warnings.push(w.message);
    };
    process.on("warning", onWarning);
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "performance"] });
    try {
      const hanging = { ...fs.virtual(fs.memory()).fs, lstat: () => new Promise<never>(() => {}) } as SandboxFileSystem;
      serveFileSystems(link.conn, [hanging]);
      link.helper.framed("FsRequest", 7, { mount: 0, uid: 0, gid: 0, pid: 1, call: { op: "lookup", parent: 1, name: "x" } });
      const answered = link.helper.call("FsRequest", "FsReply", 8, { mount: 0, uid: 0, gid: 0, pid: 1, call: { op: "statfs", node: 1 } });
      expect((await answered).header).toMatchObject({ result: "statfs" });
      vi.advanceTimersByTime(29_000);
      await new Promise((r) => setImmediate(r));
      expect(warnings).toEqual([]);
      vi.advanceTimersByTime(3_000);
      vi.advanceTimersByTime(10_000);
      await new Promise((r) => setImmediate(r));
      expect(warnings).toEqual(["mount 0: filesystem lookup has not answered within 30 s; the guest got EIO"]);
    } finally {
      vi.useRealTimers();
      process.off("warning", onWarning);
      link.close();
    }
  });
});
