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
import { decodeHelperRequest, encodeBlockPayload, Kind, type Frame } from "../protocol/frames.js";
import { ERRNO, errnoOf, fsError } from "./errno.js";
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
export interface WireAttr {
  ino: number;
  size: number;
  blocks: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
}

export interface FsRequest {
  id: number;
  mount: number;
  op: string;
  uid?: number;
  gid?: number;
  node?: number;
  parent?: number;
  name?: string;
  newParent?: number;
  newName?: string;
  target?: string;
  mode?: number;
  rdev?: number;
  flags?: number;
  fh?: number;
  offset?: number;
  size?: number;
  count?: number;
  set?: { mode?: number; uid?: number; gid?: number; size?: number; atime?: number | "now"; mtime?: number | "now" };
}

export type FsAnswer = { header: Record<string, unknown>; bytes?: Uint8Array } | undefined;

interface OpenFile {
  handle: SandboxFileHandle;
  node: number;
}

interface OpenDir {
  path: string;
  names: string[];
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

  /** Answers one request; `undefined` for requests that take no answer (forget). */
  async handle(req: FsRequest, data: Uint8Array): Promise<FsAnswer> {
    try {
      return await this.#dispatch(req, data);
    } catch (err) {
      if (DEBUG) console.error("sandbox fs:", req.op, "failed:", err);
      const errno = errnoOf(err);
      const code = (err as { code?: unknown } | null)?.code;
      if (errno === ERRNO.EIO && code !== "EIO") {
        this.onProblem(`filesystem ${req.op} failed without an errno code (${String((err as Error)?.message ?? err)}); the guest got EIO`);
      }
      return { header: { id: req.id, errno } };
    }
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
    const id = req.id;
    const ok = (extra: Record<string, unknown> = {}, bytes?: Uint8Array): FsAnswer => ({ header: { id, ...extra }, bytes });
    switch (req.op) {
      case "forget":
        this.nodes.forget(num(req.node), num(req.count));
        return undefined;
      case "lookup": {
        const path = childPath(this.nodes.path(num(req.parent)), str(req.name));
        return ok(await this.#entry(path));
      }
      case "getattr": {
        const open = req.fh !== undefined ? this.#files.get(req.fh) : undefined;
        return ok({ attr: wireAttr(open ? await open.handle.stat() : await this.#statNode(num(req.node))) });
      }
      case "setattr":
        return ok({ attr: await this.#setattr(req) });
      case "readlink": {
        const target = await fs.readlink(this.nodes.path(num(req.node)));
        return ok({}, Buffer.from(target, "utf8"));
      }
      case "symlink": {
        const path = childPath(this.nodes.path(num(req.parent)), str(req.name));
        await fs.symlink(str(req.target), path);
        await this.#own(path, req);
        return ok(await this.#entry(path));
      }
      case "mknod": {
        const mode = num(req.mode);
        if ((mode & S_IFMT) !== S_IFREG) throw fsError("EPERM", "only regular files can be created with mknod on this filesystem");
        const path = childPath(this.nodes.path(num(req.parent)), str(req.name));
        const h = await fs.open(path, O.CREAT | O.EXCL | 1, mode & 0o7777);
        await h.close();
        await this.#mode(path, mode & 0o7777);
        await this.#own(path, req);
        return ok(await this.#entry(path));
      }
      case "mkdir": {
        const path = childPath(this.nodes.path(num(req.parent)), str(req.name));
        const mode = num(req.mode) & 0o7777;
        await fs.mkdir(path, mode);
        await this.#mode(path, mode);
        await this.#own(path, req);
        return ok(await this.#entry(path));
      }
      case "unlink":
      case "rmdir": {
        const path = childPath(this.nodes.path(num(req.parent)), str(req.name));
        await (req.op === "unlink" ? fs.unlink(path) : fs.rmdir(path));
        this.nodes.detach(path);
        return ok();
      }
      case "rename": {
        const from = childPath(this.nodes.path(num(req.parent)), str(req.name));
        const to = childPath(this.nodes.path(num(req.newParent)), str(req.newName));
        if (to.startsWith(`${from}/`)) throw fsError("EINVAL", "cannot move a directory into itself");
        // POSIX rules checked here, so every SandboxFileSystem behaves the same.
        const src = await fs.lstat(from);
        const dst = await lstatOrUndefined(fs, to);
        if (dst) {
          if ((num(req.flags) & RENAME_NOREPLACE) !== 0) throw fsError("EEXIST", `${to} exists`);
          const srcDir = (src.mode & S_IFMT) === S_IFDIR;
          const dstDir = (dst.mode & S_IFMT) === S_IFDIR;
          if (srcDir && !dstDir) throw fsError("ENOTDIR", `${to} is not a directory`);
          if (!srcDir && dstDir) throw fsError("EISDIR", `${to} is a directory`);
          if (dstDir && (await fs.readdir(to)).length > 0) throw fsError("ENOTEMPTY", `${to} is not empty`);
          // Two names of one file: POSIX says do nothing.
          if (!srcDir && Number(src.ino) === Number(dst.ino) && src.nlink > 1) return ok();
        }
        await fs.rename(from, to);
        this.nodes.rename(from, to);
        return ok();
      }
      case "link": {
        const existing = this.nodes.path(num(req.node));
        const path = childPath(this.nodes.path(num(req.newParent)), str(req.newName));
        await fs.link(existing, path);
        return ok(await this.#entry(path));
      }
      case "open": {
        const node = num(req.node);
        // Writes carry explicit offsets (the guest kernel resolves O_APPEND),
        // and truncation arrives as a separate setattr: only the access mode matters.
        const handle = await fs.open(this.nodes.path(node), num(req.flags) & O.ACCMODE);
        return ok({ fh: this.#addFile(handle, node) });
      }
      case "create": {
        const path = childPath(this.nodes.path(num(req.parent)), str(req.name));
        const flags = num(req.flags);
        const mode = num(req.mode) & 0o7777;
        const handle = await fs.open(path, O.CREAT | (flags & O.EXCL) | (flags & O.ACCMODE), mode);
        try {
          await this.#mode(path, mode);
          await this.#own(path, req);
          const entry = await this.#entry(path);
          return ok({ ...entry, fh: this.#addFile(handle, entry.node) });
        } catch (err) {
          await handle.close().catch(() => {});
          throw err;
        }
      }
      case "read": {
        const file = this.#file(req.fh);
        const size = num(req.size);
        const buf = Buffer.allocUnsafe(size);
        let got = 0;
        while (got < size) {
          const { bytesRead } = await file.handle.read(buf, got, size - got, num(req.offset) + got);
          if (!bytesRead) break;
          got += bytesRead;
        }
        return ok({}, buf.subarray(0, got));
      }
      case "write": {
        const file = this.#file(req.fh);
        let done = 0;
        while (done < data.length) {
          const { bytesWritten } = await file.handle.write(data, done, data.length - done, num(req.offset) + done);
          if (!bytesWritten) throw fsError("EIO", "the filesystem wrote nothing");
          done += bytesWritten;
        }
        return ok({ size: done });
      }
      case "flush":
        this.#file(req.fh);
        return ok();
      case "fsync": {
        const file = this.#file(req.fh);
        await file.handle.sync?.();
        return ok();
      }
      case "release": {
        const file = this.#files.get(num(req.fh));
        this.#files.delete(num(req.fh));
        await file?.handle.close();
        return ok();
      }
      case "opendir": {
        const path = this.nodes.path(num(req.node));
        const names = await fs.readdir(path);
        const fh = this.#nextFh++;
        this.#dirs.set(fh, { path, names: [".", "..", ...names.map(String)] });
        return ok({ fh });
      }
      case "readdir":
        return ok({ entries: await this.#readdir(req) });
      case "releasedir":
        this.#dirs.delete(num(req.fh));
        return ok();
      case "statfs":
        return ok({
          statfs: { blocks: 1 << 26, bfree: 1 << 25, bavail: 1 << 25, files: 1 << 24, ffree: 1 << 23, bsize: 4096, namelen: 255 },
        });
      default:
        throw fsError("ENOSYS", `operation ${req.op} is not supported`);
    }
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
      const fallback = (err as { code?: string }).code === "ENOENT" ? this.#openOf(node) : undefined;
      if (!fallback) throw err;
      return fallback.handle.stat();
    }
  }

  #file(fh: number | undefined): OpenFile {
    const f = fh === undefined ? undefined : this.#files.get(fh);
    if (!f) throw fsError("EBADF", `no open file ${fh}`);
    return f;
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

  async #setattr(req: FsRequest): Promise<WireAttr> {
    const set = req.set ?? {};
    const node = num(req.node);
    // A node removed while open (here or by another lane sharing the filesystem) is reached through its handle.
    let open = req.fh !== undefined ? this.#files.get(req.fh) : undefined;
    if (!open && !(await this.#hasPath(node))) open = this.#openOf(node);
    const fs = this.fs;
    const path = () => this.nodes.path(num(req.node));
    if (set.mode !== undefined) await fs.chmod(path(), set.mode & 0o7777);
    if (set.uid !== undefined || set.gid !== undefined) {
      if (!fs.lchown) throw fsError("EPERM", "this filesystem does not record owners");
      const st = await fs.lstat(path());
      await fs.lchown(path(), set.uid ?? st.uid, set.gid ?? st.gid);
    }
    if (set.size !== undefined) {
      if (open) await open.handle.truncate(set.size);
      else await fs.truncate(path(), set.size);
    }
    if (set.atime !== undefined || set.mtime !== undefined) {
      const st = open ? await open.handle.stat() : await fs.lstat(path());
      const sec = (t: number | "now" | undefined, keep: number) => (t === "now" ? Date.now() / 1000 : t === undefined ? keep / 1000 : t / 1000);
      const atime = sec(set.atime, st.atimeMs);
      const mtime = sec(set.mtime, st.mtimeMs);
      if (fs.lutimes) await fs.lutimes(path(), atime, mtime);
      else await fs.utimes(path(), atime, mtime);
    }
    const st = open ? await open.handle.stat() : await fs.lstat(path());
    return wireAttr(st);
  }

  async #readdir(req: FsRequest): Promise<{ ino: number; name: string; type: number; off: number }[]> {
    const dir = this.#dirs.get(num(req.fh));
    if (!dir) throw fsError("EBADF", `no open directory ${req.fh}`);
    const start = num(req.offset);
    // Each entry takes at least 32 bytes of the guest's buffer.
    const max = Math.max(1, Math.floor(num(req.size) / 32));
    const names = dir.names.slice(start, start + max);
    const stats = await Promise.all(
      names.map(async (name) => {
        try {
          const p = name === "." ? dir.path : name === ".." ? parentOf(dir.path) : childPath(dir.path, name);
          return await this.fs.lstat(p);
        } catch {
          return undefined; // removed since opendir: skip it
        }
      }),
    );
    const out: { ino: number; name: string; type: number; off: number }[] = [];
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
    if ((err as { code?: string }).code === "ENOENT") return undefined;
    throw err;
  }
}

function num(v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v)) throw fsError("EINVAL", "malformed request");
  return v;
}

function str(v: unknown): string {
  if (typeof v !== "string") throw fsError("EINVAL", "malformed request");
  return v;
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
  const onRequest = (frame: Frame) => {
    const decoded = decodeHelperRequest<FsRequest>(frame.payload);
    if (!decoded || !Number.isInteger(decoded.req.mount)) return;
    const { req, bytes } = decoded;
    const server = servers[req.mount];
    if (!server) {
      conn.send(Kind.FsReply, 0, encodeBlockPayload({ id: req.id, errno: 5 }));
      return;
    }
    // The helper answers EIO after its deadline; say so when the filesystem is that slow.
    const slow = setTimeout(() => warn(`mount ${req.mount}: filesystem ${req.op} has not answered within ${FS_DEADLINE_MS / 1000} s; the guest got EIO`), FS_DEADLINE_MS);
    slow.unref();
    void server.handle(req, bytes).then((answer) => {
      clearTimeout(slow);
      if (DEBUG) console.error("sandbox fs:", JSON.stringify(req), "→", JSON.stringify(answer?.header), answer?.bytes?.length ?? "");
      if (!answer) return;
      try {
        conn.send(Kind.FsReply, 0, encodeBlockPayload(answer.header, answer.bytes ? [answer.bytes] : []));
      } catch {
        // An answer too large for one frame (e.g. a huge link target): the guest gets EIO.
        conn.send(Kind.FsReply, 0, encodeBlockPayload({ id: req.id, errno: 5 }));
      }
    });
  };
  conn.on("fsRequest", onRequest);
  conn.once("exit", () => {
    conn.off("fsRequest", onRequest);
    for (const s of servers) void s.closeAll();
  });
  return servers;
}

export { ROOT_ID };
