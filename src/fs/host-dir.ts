/**
 * `fs.hostDir(root)`: one host directory given to the guest, confined to it.
 *
 * Confinement, without openat2 in Node:
 * - paths come from the guest kernel's own lookups, one component at a time;
 *   "", ".", ".." and names with "/" are refused before any host call;
 * - the host never follows a symbolic link: lstat instead of stat, O_NOFOLLOW
 *   on every open, lutimes, no chown at all; a guest symlink (even to "/")
 *   is stored as text and resolved by the *guest* kernel, inside the guest;
 * - before each path operation every directory on the way from the root must
 *   be a real directory (not a symlink): one openat2(RESOLVE_NO_SYMLINKS) walk
 *   through the addon once a lane loaded it, else an lstat of each;
 * - every path operation, checks included, is one synchronous step, so the
 *   check and the use cannot be interleaved with a guest rename that swaps a
 *   directory for a symlink. Reads and writes on open handles are not
 *   serialised (the descriptor is already resolved).
 * Limit: another *host* process changing the tree under the root at the same
 * moment is outside this model (as for any path-based tool).
 */
import * as nfs from "node:fs";
import { constants, realpathSync, statSync } from "node:fs";
import { SandboxConfigError } from "../errors.js";
import { loadedNative } from "../native.js";
import { ERRNO, fsError } from "./errno.js";
import { readOnly as readOnlyView } from "./read-only.js";
import type { SandboxDirEntry, SandboxFileHandle, SandboxFileStats, SandboxFileSystem } from "./types.js";
import { asFileSystem } from "./virtual.js";

/** Reads and writes up to this size run as synchronous calls; larger ones on libuv's pool. */
export const HOST_DIR_SYNC_IO_BYTES = 64 * 1024;

/** Options of `fs.hostDir`. */
export interface HostDirOptions {
  /** Refuse every change with EROFS (and mount read-only). Default false. */
  readOnly?: boolean;
}

export function hostDir(root: string, options: HostDirOptions = {}): SandboxFileSystem {
  if (typeof root !== "string" || root === "") throw new SandboxConfigError("fs.hostDir(root) needs a directory path");
  let real: string;
  try {
    real = realpathSync(root);
    if (!statSync(real).isDirectory()) throw new Error("not a directory");
  } catch (err) {
    throw new SandboxConfigError(`fs.hostDir(${JSON.stringify(root)}): ${(err as Error).message}; pass an existing directory`);
  }
  const fs = new HostDirFileSystem(real);
  const served = options.readOnly ? readOnlyView(fs, asFileSystem) : fs;
  SERVED_BY_HELPER.set(served, { path: real, readOnly: options.readOnly === true });
  return served;
}

/**
 * `fs.hostDir` filesystems the helper can serve itself, without a request
 * reaching Node (see docs/decisions.md, "Issue 19: `fs.hostDir` in the helper").
 * The JavaScript implementation above stays for every other use: direct calls,
 * objects wrapping it, and hosts without `openat2`.
 */
const SERVED_BY_HELPER = new WeakMap<SandboxFileSystem, { path: string; readOnly: boolean }>();

/**
 * The directory for the helper to serve when `fs` is an `fs.hostDir(...)` and this
 * host confines paths with `openat2` (Linux 5.6+, not refused by seccomp); else undefined.
 */
export function helperServedDir(fs: SandboxFileSystem): { path: string; readOnly: boolean } | undefined {
  const dir = SERVED_BY_HELPER.get(fs);
  const probe = nativeLstat();
  if (!dir || !probe) return undefined;
  const r = probe(dir.path, "");
  if (r.length > 1) return dir;
  nativeMissing(r[0]!);
  return undefined;
}

/**
 * Path operations are synchronous system calls (see docs/decisions.md, "Issue 19:
 * mounts"): each FUSE request would otherwise cross libuv's thread pool once per
 * call (2–4 calls per request with the confinement checks), and on a busy host
 * those hops cost more than the calls. Being synchronous also makes each check
 * and its use one uninterruptible step of the event loop, so no queue is needed.
 */
function listNames(path: string, host: string): string[] {
  if (nfs.lstatSync(host).isSymbolicLink()) throw fsError("ENOTDIR", `${path} is a symbolic link`);
  return nfs.readdirSync(host);
}

class HostDirFileSystem implements SandboxFileSystem {
  readonly #root: string;

  constructor(root: string) {
    this.#root = root;
  }

  /** Runs `fn` on `path` checked and mapped to the host, as one synchronous step. */
  #run<T>(path: string, fn: (host: string) => T): Promise<T> {
    try {
      return Promise.resolve(fn(this.#resolve(path)));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #run2<T>(a: string, b: string, fn: (ha: string, hb: string) => T): Promise<T> {
    try {
      return Promise.resolve(fn(this.#resolve(a), this.#resolve(b)));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #resolve(path: string): string {
    const parts = components(path);
    const dirs = parts.slice(0, -1);
    const native = nativeLstat();
    if (native && dirs.length > 0) {
      // One openat2 walk checks every directory on the way.
      const dir = `${this.#root}/${dirs.join("/")}`;
      const r = native(dir, "");
      if (r.length > 1) return `${dir}/${parts[parts.length - 1]}`;
      if (!nativeMissing(r[0]!)) throw failure(r[0]!, path, "a directory on the way");
    }
    let at = this.#root;
    for (const p of dirs) {
      at = `${at}/${p}`;
      const st = nfs.lstatSync(at);
      if (st.isSymbolicLink()) throw fsError("ELOOP", `${path}: a directory on the way is a symbolic link`);
      if (!st.isDirectory()) throw fsError("ENOTDIR", `${path}: not a directory on the way`);
    }
    return parts.length ? `${at}/${parts[parts.length - 1]}` : this.#root;
  }

  lstat(path: string): Promise<SandboxFileStats> {
    const native = nativeLstat();
    if (native) {
      try {
        const parts = components(path);
        const dir = parts.length > 1 ? `${this.#root}/${parts.slice(0, -1).join("/")}` : this.#root;
        const r = native(dir, parts.length ? parts[parts.length - 1]! : "");
        if (r.length > 1) return Promise.resolve(statsOf(r));
        if (!nativeMissing(r[0]!)) throw failure(r[0]!, path, "lstat");
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.#run(path, (h) => nfs.lstatSync(h));
  }

  readdir(path: string): Promise<string[]> {
    return this.#run(path, (h) => listNames(path, h));
  }

  /** One getdents sweep through the addon once a lane loaded it; else an lstat per entry. */
  listDirectory(path: string): Promise<SandboxDirEntry[]> {
    return this.#run(path, (h) => {
      const listing = loadedNative()?.listDirectory(h);
      if (listing) return listing.names.map((name, i) => ({ name, ino: listing.inos[i]!, mode: listing.modes[i]! }));
      const out: SandboxDirEntry[] = [];
      for (const name of listNames(path, h)) {
        const st = nfs.lstatSync(`${h}/${name}`, { throwIfNoEntry: false });
        if (st) out.push({ name, ino: st.ino, mode: st.mode }); // else removed meanwhile
      }
      return out;
    });
  }

  open(path: string, flags: number, mode?: number): Promise<SandboxFileHandle> {
    // Guest (Linux) flag values → this host's constants; never follow a final symlink.
    let f = flags & 3;
    if (flags & 0o100) f |= constants.O_CREAT;
    if (flags & 0o200) f |= constants.O_EXCL;
    f |= constants.O_NOFOLLOW;
    return this.#run(path, (h) => fdHandle(nfs.openSync(h, f, mode)));
  }

  mkdir(path: string, mode?: number): Promise<unknown> {
    return this.#run(path, (h) => nfs.mkdirSync(h, { mode }));
  }
  rmdir(path: string): Promise<void> {
    return this.#run(path, (h) => nfs.rmdirSync(h));
  }
  unlink(path: string): Promise<void> {
    return this.#run(path, (h) => nfs.unlinkSync(h));
  }
  rename(from: string, to: string): Promise<void> {
    return this.#run2(from, to, (a, b) => nfs.renameSync(a, b));
  }
  symlink(target: string, path: string): Promise<void> {
    return this.#run(path, (h) => nfs.symlinkSync(target, h));
  }
  readlink(path: string): Promise<string> {
    return this.#run(path, (h) => nfs.readlinkSync(h));
  }
  link(existing: string, path: string): Promise<void> {
    // link(2) does not follow a symlink at `existing`.
    return this.#run2(existing, path, (a, b) => nfs.linkSync(a, b));
  }
  chmod(path: string, mode: number): Promise<void> {
    return this.#run(path, (h) => {
      if (nfs.lstatSync(h).isSymbolicLink()) throw fsError("EOPNOTSUPP", "symbolic links have no mode of their own");
      nfs.chmodSync(h, mode);
    });
  }
  truncate(path: string, length: number): Promise<void> {
    return this.#run(path, (h) => {
      const fd = nfs.openSync(h, constants.O_WRONLY | constants.O_NOFOLLOW);
      try {
        nfs.ftruncateSync(fd, length);
      } finally {
        nfs.closeSync(fd);
      }
    });
  }
  utimes(path: string, atime: number, mtime: number): Promise<void> {
    return this.lutimes(path, atime, mtime);
  }
  lutimes(path: string, atime: number, mtime: number): Promise<void> {
    return this.#run(path, (h) => nfs.lutimesSync(h, atime, mtime));
  }
}

/** A guest path's components; "", ".", ".." and NUL are refused before any host call. */
function components(path: string): string[] {
  if (typeof path !== "string" || !path.startsWith("/")) throw fsError("EINVAL", `not an absolute path: ${String(path)}`);
  const parts = path.split("/").filter((p) => p !== "");
  for (const p of parts) {
    if (p === "." || p === ".." || p.includes("\0")) throw fsError("EINVAL", `path component ${JSON.stringify(p)} is not allowed`);
  }
  return parts;
}

/** Set once the kernel turned `openat2` down: Node's calls from then on. */
let openat2Missing = false;

/**
 * The addon's `lstat` that follows no symbolic link anywhere on the path
 * (openat2 RESOLVE_NO_SYMLINKS: the kernel checks every directory in the same
 * walk), once a lane loaded the addon; one call instead of an `lstatSync` and a
 * `Stats` object per directory on the way.
 */
function nativeLstat(): ((dir: string, name: string) => Float64Array) | undefined {
  if (openat2Missing) return undefined;
  return loadedNative()?.lstatNoSymlinks;
}

/** Whether the addon's answer says "no openat2 here" (old kernel, seccomp); remembers it. */
function nativeMissing(errno: number): boolean {
  if (errno !== ERRNO.ENOSYS && errno !== ERRNO.EPERM) return false;
  openat2Missing = true;
  return true;
}

const CODE_OF = new Map(Object.entries(ERRNO).map(([code, n]) => [n, code]));

function failure(errno: number, path: string, what: string): Error {
  const code = CODE_OF.get(errno) ?? "EIO";
  const why = code === "ELOOP" ? "a symbolic link on the way (never followed)" : code === "ENOTDIR" ? "not a directory on the way" : `errno ${errno}`;
  return fsError(code, `${path}: ${what}: ${why}`);
}

/** The addon's `[dev, ino, mode, nlink, uid, gid, rdev, size, blocks, atimeMs, mtimeMs, ctimeMs]`. */
function statsOf(r: Float64Array): SandboxFileStats {
  return { ino: r[1]!, mode: r[2]!, nlink: r[3]!, uid: r[4]!, gid: r[5]!, rdev: r[6]!, size: r[7]!, blocks: r[8]!, atimeMs: r[9]!, mtimeMs: r[10]!, ctimeMs: r[11]! };
}

/** Wraps `fn` so a throw becomes a rejected promise. */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err);
  }
}

/** An open host file: small reads and writes synchronous, large ones, fsync and close on libuv's pool. */
function fdHandle(fd: number): SandboxFileHandle {
  let closed = false;
  const check = () => {
    if (closed) throw fsError("EBADF", "file is closed");
  };
  // Calls on the pool still running: close waits for them, so the descriptor number
  // is never reused under one of them.
  let pending: Promise<unknown> = Promise.resolve();
  const cb = <T>(run: (done: (err: NodeJS.ErrnoException | null, v: T) => void) => void) => {
    const p = new Promise<T>((resolve, reject) => run((err, v) => (err ? reject(err) : resolve(v))));
    const prev = pending;
    pending = Promise.allSettled([prev, p]);
    return p;
  };
  return {
    read: (b, o, l, p) =>
      l <= HOST_DIR_SYNC_IO_BYTES
        ? settle(() => (check(), { bytesRead: nfs.readSync(fd, b, o, l, p) }))
        : settle(check).then(() => cb<number>((d) => nfs.read(fd, b, o, l, p, d)).then((bytesRead) => ({ bytesRead }))),
    write: (b, o, l, p) =>
      l <= HOST_DIR_SYNC_IO_BYTES
        ? settle(() => (check(), { bytesWritten: nfs.writeSync(fd, b, o, l, p) }))
        : settle(check).then(() => cb<number>((d) => nfs.write(fd, b, o, l, p, d)).then((bytesWritten) => ({ bytesWritten }))),
    stat: () => settle(() => (check(), nfs.fstatSync(fd))),
    truncate: (len) => settle(() => (check(), nfs.ftruncateSync(fd, len))),
    sync: () => settle(check).then(() => cb<void>((d) => nfs.fsync(fd, d))),
    close: () => {
      if (closed) return Promise.resolve();
      closed = true;
      return pending.then(() => new Promise<void>((resolve, reject) => nfs.close(fd, (err) => (err ? reject(err) : resolve()))));
    },
  };
}
