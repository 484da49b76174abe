/**
 * The Node side of the FUSE engine: answers the helper's FsRequest frames
 * (one per guest filesystem operation) from each mount's SandboxFileSystem.
 *
 * Node ids and open handles live here, per lane and mount: the same
 * SandboxFileSystem mounted in two lanes gets two independent tables over
 * one shared tree. Every failure is answered with an errno (see errno.ts);
 * nothing a filesystem throws can take the lane down.
 */
import type { HelperConnection } from "../helper-connection.js";
import type { Attr, DirEntry, FsReply, FsRequest, Op } from "../protocol/contract.js";
import { describeThrown } from "../errors.js";
import { ERRNO, errnoOf, fsError, property } from "./errno.js";
import { childPath, NodeTable, ROOT_ID } from "./nodes.js";
import type { SandboxFileHandle, SandboxFileStats, SandboxFileSystem } from "./types.js";

/** Linux open(2) flag values (the guest's, whatever the host OS). */
export const O = {
  ACCMODE: 0o3,
  CREAT: 0o100,
  EXCL: 0o200,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
} as const;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const RENAME_NOREPLACE = 1;
/** Bytes of JSON one readdir answer may use (names count ×6: worst-case JSON escaping). */
const READDIR_JSON_BUDGET = 256 * 1024;
/** The helper's per-operation deadline (crates/sandbox-host/src/fs_bridge.rs). */
const FS_DEADLINE_MS = 30_000;
const MAX_WARNINGS = 20;
/** SANDBOX_FS_DEBUG=1 logs every operation and its answer to stderr. */
const DEBUG = Boolean(process.env.SANDBOX_FS_DEBUG);

/** What the engine expects back for a FUSE attribute. */
export type WireAttr = Attr;

export type { FsRequest };

/** One answer: the reply header and, for read and readlink, the bytes after it. */
export interface FsAnswer {
  reply: FsReply;
  bytes?: Uint8Array;
}

/** An operation of one kind, e.g. `OpOf<"rename">`. */
type OpOf<K extends Op["op"]> = Extract<Op, { op: K }>;

interface OpenFile {
  handle: SandboxFileHandle;
  node: number;
}

interface OpenDir {
  path: string;
  names: string[];
  /** Inode and type of `names[i]` from `listDirectory` ("." and ".." are still lstat-ed); absent: lstat each. */
  listed?: { ino: number | bigint; mode: number }[];
}

/** One mount's state for one lane: node ids, open files and directories. */
export class MountServer {
  readonly nodes = new NodeTable();
  readonly #files = new Map<number, OpenFile>();
  readonly #dirs = new Map<number, OpenDir>();
  #nextFh = 1;

  /** `onProblem` hears about failures that are bugs rather than errno answers (the guest got EIO). */
  constructor(
    readonly fs: SandboxFileSystem,
    private readonly onProblem: (message: string) => void = () => {},
  ) {}

  get openHandles(): number {
    return this.#files.size + this.#dirs.size;
  }

  /** Answers one request; every failure becomes an errno answer. */
  async handle(req: FsRequest, data: Uint8Array): Promise<FsAnswer> {
    const op = req.call.op;
    try {
      return await this.#dispatch(req, data);
    } catch (err) {
      if (DEBUG) console.error("sandbox fs:", op, "failed:", err);
      const errno = errnoOf(err);
      if (errno === ERRNO.EIO && property(err, "code") !== "EIO") {
        this.onProblem(`filesystem ${op} failed without an errno code (${describeThrown(err)}); the guest got EIO`);
      }
      return { reply: { result: "error", errno } };
    }
  }

  /** The guest kernel dropped `count` references to `node`. */
  forget(node: number, count: number): void {
    this.nodes.forget(node, count);
  }

  /** Closes every handle still open (the lane ended). */
  async closeAll(): Promise<void> {
    const files = [...this.#files.values()];
    this.#files.clear();
    this.#dirs.clear();
    await Promise.allSettled(files.map((f) => f.handle.close()));
  }

  async #dispatch(req: FsRequest, data: Uint8Array): Promise<FsAnswer> {
    const fs = this.fs;
    const op = req.call;
    const done: FsAnswer = { reply: { result: "done" } };
    const entry = async (path: string): Promise<FsAnswer> => ({ reply: { result: "entry", ...(await this.#entry(path)) } });
    switch (op.op) {
      case "lookup":
        return entry(childPath(this.nodes.path(op.parent), op.name));
      case "getattr": {
        const open = op.fh !== undefined && op.fh !== null ? this.#files.get(op.fh) : undefined;
        return { reply: { result: "attr", attr: wireAttr(open ? await open.handle.stat() : await this.#statNode(op.node)) } };
      }
      case "setattr":
        return { reply: { result: "attr", attr: await this.#setattr(op) } };
      case "readlink": {
        const target = await fs.readlink(this.nodes.path(op.node));
        return { reply: { result: "data" }, bytes: Buffer.from(target, "utf8") };
      }
      case "symlink": {
        const path = childPath(this.nodes.path(op.parent), op.name);
        await fs.symlink(op.target, path);
        await this.#own(path, req);
        return entry(path);
      }
      case "mknod": {
        if ((op.mode & S_IFMT) !== S_IFREG) throw fsError("EPERM", "only regular files can be created with mknod on this filesystem");
        const path = childPath(this.nodes.path(op.parent), op.name);
        const h = await fs.open(path, O.CREAT | O.EXCL | 1, op.mode & 0o7777);
        await h.close();
        await this.#mode(path, op.mode & 0o7777);
        await this.#own(path, req);
        return entry(path);
      }
      case "mkdir": {
        const path = childPath(this.nodes.path(op.parent), op.name);
        const mode = op.mode & 0o7777;
        await fs.mkdir(path, mode);
        return { reply: { result: "entry", ...(await this.#settle(path, mode, req)) } };
      }
      case "unlink":
      case "rmdir": {
        const path = childPath(this.nodes.path(op.parent), op.name);
        await (op.op === "unlink" ? fs.unlink(path) : fs.rmdir(path));
        this.nodes.detach(path);
        return done;
      }
      case "rename":
        await this.#rename(op);
        return done;
      case "link": {
        const existing = this.nodes.path(op.node);
        const path = childPath(this.nodes.path(op.newParent), op.newName);
        await fs.link(existing, path);
        return entry(path);
      }
      case "open": {
        // Writes carry explicit offsets (the guest kernel resolves O_APPEND),
        // and truncation arrives as a separate setattr: only the access mode matters.
        const handle = await fs.open(this.nodes.path(op.node), op.flags & O.ACCMODE);
        return { reply: { result: "open", fh: this.#addFile(handle, op.node) } };
      }
      case "create": {
        const path = childPath(this.nodes.path(op.parent), op.name);
        const mode = op.mode & 0o7777;
        const handle = await fs.open(path, O.CREAT | (op.flags & O.EXCL) | (op.flags & O.ACCMODE), mode);
        try {
          const e = await this.#settle(path, mode, req);
          return { reply: { result: "created", ...e, fh: this.#addFile(handle, e.node) } };
        } catch (err) {
          await handle.close().catch(() => {});
          throw err;
        }
      }
      case "read": {
        const file = this.#file(op.fh);
        const buf = Buffer.allocUnsafe(op.size);
        let got = 0;
        while (got < op.size) {
          const { bytesRead } = await file.handle.read(buf, got, op.size - got, op.offset + got);
          if (!bytesRead) break;
          got += bytesRead;
        }
        return { reply: { result: "data" }, bytes: buf.subarray(0, got) };
      }
      case "write": {
        const file = this.#file(op.fh);
        let written = 0;
        while (written < data.length) {
          const { bytesWritten } = await file.handle.write(data, written, data.length - written, op.offset + written);
          if (!bytesWritten) throw fsError("EIO", "the filesystem wrote nothing");
          written += bytesWritten;
        }
        return { reply: { result: "written", size: written } };
      }
      case "flush":
        this.#file(op.fh);
        return done;
      case "fsync":
        await this.#file(op.fh).handle.sync?.();
        return done;
      case "release": {
        const file = this.#files.get(op.fh);
        this.#files.delete(op.fh);
        await file?.handle.close();
        return done;
      }
      case "opendir": {
        const path = this.nodes.path(op.node);
        const fh = this.#nextFh++;
        if (fs.listDirectory) {
          // A snapshot of the directory at opendir, as getdents may give (POSIX leaves later changes unspecified).
          const entries = await fs.listDirectory(path);
          const listed = [{ ino: 0, mode: S_IFDIR }, { ino: 0, mode: S_IFDIR }, ...entries.map((e) => ({ ino: e.ino, mode: e.mode }))];
          this.#dirs.set(fh, { path, names: [".", "..", ...entries.map((e) => String(e.name))], listed });
        } else {
          const names = await fs.readdir(path);
          this.#dirs.set(fh, { path, names: [".", "..", ...names.map(String)] });
        }
        return { reply: { result: "open", fh } };
      }
      case "readdir":
        return { reply: { result: "dir", entries: await this.#readdir(op) } };
      case "releasedir":
        this.#dirs.delete(op.fh);
        return done;
      case "statfs":
        return {
          reply: {
            result: "statfs",
            statfs: { blocks: 1 << 26, bfree: 1 << 25, bavail: 1 << 25, files: 1 << 24, ffree: 1 << 23, bsize: 4096, namelen: 255 },
          },
        };
      default:
        // The contract's validator admits only the operations above; this is for direct callers.
        throw fsError("ENOSYS", `operation ${(op as { op: string }).op} is not supported`);
    }
  }

  async #rename(op: OpOf<"rename">): Promise<void> {
    const fs = this.fs;
    const from = childPath(this.nodes.path(op.parent), op.name);
    const to = childPath(this.nodes.path(op.newParent), op.newName);
    if (to.startsWith(`${from}/`)) throw fsError("EINVAL", "cannot move a directory into itself");
    // POSIX rules checked here, so every SandboxFileSystem behaves the same.
    const src = await fs.lstat(from);
    const dst = await lstatOrUndefined(fs, to);
    if (dst) {
      if ((op.flags & RENAME_NOREPLACE) !== 0) throw fsError("EEXIST", `${to} exists`);
      const srcDir = (src.mode & S_IFMT) === S_IFDIR;
      const dstDir = (dst.mode & S_IFMT) === S_IFDIR;
      if (srcDir && !dstDir) throw fsError("ENOTDIR", `${to} is not a directory`);
      if (!srcDir && dstDir) throw fsError("EISDIR", `${to} is a directory`);
      if (dstDir && (await fs.readdir(to)).length > 0) throw fsError("ENOTEMPTY", `${to} is not empty`);
      // Two names of one file: POSIX says do nothing.
      if (!srcDir && Number(src.ino) === Number(dst.ino) && src.nlink > 1) return;
    }
    await fs.rename(from, to);
    this.nodes.rename(from, to);
  }

  async #entry(path: string): Promise<{ node: number; attr: WireAttr }> {
    const st = await this.fs.lstat(path);
    return { node: this.nodes.lookup(path), attr: wireAttr(st) };
  }

  #addFile(handle: SandboxFileHandle, node: number): number {
    const fh = this.#nextFh++;
    this.#files.set(fh, { handle, node });
    return fh;
  }

  #openOf(node: number): OpenFile | undefined {
    for (const f of this.#files.values()) if (f.node === node) return f;
    return undefined;
  }

  async #hasPath(node: number): Promise<boolean> {
    if (this.nodes.isDetached(node)) return false;
    return (await lstatOrUndefined(this.fs, this.nodes.path(node))) !== undefined;
  }

  /**
   * Attributes of a node: by path, or — when the path is gone (unlinked while
   * open, here or by another lane sharing the filesystem) — through an open handle.
   */
  async #statNode(node: number): Promise<SandboxFileStats> {
    const open = this.nodes.isDetached(node) ? this.#openOf(node) : undefined;
    if (open) return open.handle.stat();
    try {
      return await this.fs.lstat(this.nodes.path(node));
    } catch (err) {
      const fallback = property(err, "code") === "ENOENT" ? this.#openOf(node) : undefined;
      if (!fallback) throw err;
      return fallback.handle.stat();
    }
  }

  #file(fh: number | undefined): OpenFile {
    const f = fh === undefined ? undefined : this.#files.get(fh);
    if (!f) throw fsError("EBADF", `no open file ${fh}`);
    return f;
  }

  /**
   * A new file or directory gets exactly `mode` and the caller as owner (as
   * {@link #mode} and {@link #own}), and its entry: one lstat when nothing needs changing.
   */
  async #settle(path: string, mode: number, req: FsRequest): Promise<{ node: number; attr: WireAttr }> {
    const st = await this.fs.lstat(path);
    const wrongMode = (st.mode & 0o7777) !== mode && (st.mode & S_IFMT) !== S_IFLNK;
    const lchown = this.fs.lchown?.bind(this.fs);
    const wrongOwner = lchown !== undefined && req.uid !== undefined && req.gid !== undefined && (st.uid !== req.uid || st.gid !== req.gid);
    if (!wrongMode && !wrongOwner) return { node: this.nodes.lookup(path), attr: wireAttr(st) };
    if (wrongMode) await this.fs.chmod(path, mode);
    if (wrongOwner) await lchown(path, req.uid, req.gid);
    return this.#entry(path);
  }

  /** Sets exactly `mode` (the guest already applied its umask; host-side creation may not honour it). */
  async #mode(path: string, mode: number): Promise<void> {
    const st = await this.fs.lstat(path);
    if ((st.mode & 0o7777) !== mode && (st.mode & S_IFMT) !== S_IFLNK) await this.fs.chmod(path, mode);
  }

  /** New files belong to the guest process that created them, when the filesystem can record owners. */
  async #own(path: string, req: FsRequest): Promise<void> {
    if (!this.fs.lchown || req.uid === undefined || req.gid === undefined) return;
    const st = await this.fs.lstat(path);
    if (st.uid !== req.uid || st.gid !== req.gid) await this.fs.lchown(path, req.uid, req.gid);
  }

  async #setattr(op: OpOf<"setattr">): Promise<WireAttr> {
    const set = op.set;
    const node = op.node;
    // A node removed while open (here or by another lane sharing the filesystem) is reached through its handle.
    let open = op.fh !== undefined && op.fh !== null ? this.#files.get(op.fh) : undefined;
    if (!open && !(await this.#hasPath(node))) open = this.#openOf(node);
    const fs = this.fs;
    const path = () => this.nodes.path(node);
    if (set.mode !== undefined && set.mode !== null) await fs.chmod(path(), set.mode & 0o7777);
    if ((set.uid ?? undefined) !== undefined || (set.gid ?? undefined) !== undefined) {
      if (!fs.lchown) throw fsError("EPERM", "this filesystem does not record owners");
      const st = await fs.lstat(path());
      await fs.lchown(path(), set.uid ?? st.uid, set.gid ?? st.gid);
    }
    if (set.size !== undefined && set.size !== null) {
      if (open) await open.handle.truncate(set.size);
      else await fs.truncate(path(), set.size);
    }
    if ((set.atime ?? undefined) !== undefined || (set.mtime ?? undefined) !== undefined) {
      const st = open ? await open.handle.stat() : await fs.lstat(path());
      const sec = (t: number | "now" | null | undefined, keep: number) => (t === "now" ? Date.now() / 1000 : t === undefined || t === null ? keep / 1000 : t / 1000);
      const atime = sec(set.atime, st.atimeMs);
      const mtime = sec(set.mtime, st.mtimeMs);
      if (fs.lutimes) await fs.lutimes(path(), atime, mtime);
      else await fs.utimes(path(), atime, mtime);
    }
    const st = open ? await open.handle.stat() : await fs.lstat(path());
    return wireAttr(st);
  }

  async #readdir(op: OpOf<"readdir">): Promise<DirEntry[]> {
    const dir = this.#dirs.get(op.fh);
    if (!dir) throw fsError("EBADF", `no open directory ${op.fh}`);
    const start = op.offset;
    // Each entry takes at least 32 bytes of the guest's buffer.
    const max = Math.max(1, Math.floor(op.size / 32));
    const names = dir.names.slice(start, start + max);
    const lstat = async (name: string) => {
      try {
        const p = name === "." ? dir.path : name === ".." ? parentOf(dir.path) : childPath(dir.path, name);
        return await this.fs.lstat(p);
      } catch {
        return undefined; // removed since opendir: skip it
      }
    };
    const listed = dir.listed;
    let stats: ({ ino: number | bigint; mode: number } | undefined)[];
    if (listed) {
      stats = listed.slice(start, start + names.length);
      // Only "." and ".." (the first two offsets) are looked up.
      for (let i = 0; i < Math.min(names.length, 2 - start); i++) stats[i] = await lstat(names[i]!);
    } else {
      stats = await Promise.all(names.map(lstat));
    }
    const out: DirEntry[] = [];
    // Keep the JSON answer far below the frame limit whatever size the guest asked for.
    let budget = READDIR_JSON_BUDGET;
    for (const [i, name] of names.entries()) {
      const st = stats[i];
      budget -= Buffer.byteLength(name) * 6 + 80;
      if (budget < 0 && out.length > 0) break;
      if (st) out.push({ ino: Number(st.ino), name, type: dtype(st.mode), off: start + i + 1 });
    }
    return out;
  }
}

function parentOf(path: string): string {
  if (path === "/") return "/";
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

function dtype(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return 8;
    case S_IFDIR:
      return 4;
    case S_IFLNK:
      return 10;
    case 0o020000:
      return 2;
    case 0o060000:
      return 6;
    case 0o010000:
      return 1;
    case 0o140000:
      return 12;
    default:
      return 0;
  }
}

async function lstatOrUndefined(fs: SandboxFileSystem, path: string): Promise<SandboxFileStats | undefined> {
  try {
    return await fs.lstat(path);
  } catch (err) {
    if (property(err, "code") === "ENOENT") return undefined;
    throw err;
  }
}

export function wireAttr(st: SandboxFileStats): WireAttr {
  const size = Number(st.size);
  return {
    ino: Number(st.ino),
    size,
    blocks: st.blocks !== undefined ? Number(st.blocks) : Math.ceil(size / 512),
    atimeMs: st.atimeMs,
    mtimeMs: st.mtimeMs,
    ctimeMs: st.ctimeMs,
    mode: st.mode,
    nlink: st.nlink,
    uid: st.uid,
    gid: st.gid,
    rdev: st.rdev ?? 0,
  };
}

/**
 * Requests in flight, so one sweep a second can say which passed the helper's
 * deadline (it answered EIO): a timer per request cost more than many requests.
 */
class SlowRequests {
  readonly #inFlight = new Map<number, { mount: number; op: string; since: number }>();
  #sweep: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly warn: (message: string) => void) {}

  start(id: number, mount: number, op: string): void {
    this.#inFlight.set(id, { mount, op, since: performance.now() });
    if (this.#sweep) return;
    this.#sweep = setInterval(() => this.#check(), 1000);
    this.#sweep.unref();
  }

  end(id: number): void {
    this.#inFlight.delete(id);
  }

  #check(): void {
    if (this.#inFlight.size === 0) {
      clearInterval(this.#sweep);
      this.#sweep = undefined;
      return;
    }
    const late = performance.now() - FS_DEADLINE_MS;
    for (const [id, r] of this.#inFlight) {
      if (r.since > late) continue;
      this.#inFlight.delete(id); // said once
      this.warn(`mount ${r.mount}: filesystem ${r.op} has not answered within ${FS_DEADLINE_MS / 1000} s; the guest got EIO`);
    }
  }
}

/**
 * Serves the helper's FsRequests for one lane from `mounts` (index = mount
 * number in the Launch spec) until the connection ends, then closes every
 * handle the guest left open.
 */
export function serveFileSystems(conn: HelperConnection, mounts: readonly SandboxFileSystem[]): MountServer[] {
  // Problems are visible as process warnings (code SANDBOX_FS), a bounded number per lane.
  let warnings = 0;
  const warn = (message: string) => {
    if (warnings++ < MAX_WARNINGS) process.emitWarning(message, { code: "SANDBOX_FS" });
  };
  const servers = mounts.map((fs, i) => new MountServer(fs, (m) => warn(`mount ${i}: ${m}`)));
  const slow = new SlowRequests(warn);
  const eio = (id: number) => conn.sendFramed("FsReply", id, { result: "error", errno: ERRNO.EIO! });
  conn.serve("FsRequest", {
    handle: async (req, bytes, id) => {
      const server = servers[req.mount];
      if (!server) return void eio(id);
      slow.start(id, req.mount, req.call.op);
      const answer = await server.handle(req, bytes);
      slow.end(id);
      if (DEBUG) console.error("sandbox fs:", JSON.stringify(req), "→", JSON.stringify(answer.reply), answer.bytes?.length ?? "");
      try {
        conn.sendFramed("FsReply", id, answer.reply, answer.bytes ? [answer.bytes] : []);
      } catch {
        // An answer too large for one frame (e.g. a huge link target): the guest gets EIO.
        eio(id);
      }
    },
    malformed: (id) => void eio(id),
    forget: (msg) => servers[msg.mount]?.forget(msg.node, msg.count),
  });
  conn.once("exit", () => {
    for (const s of servers) void s.closeAll();
  });
  return servers;
}

export { ROOT_ID };
