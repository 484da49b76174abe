/**
 * How a mount serves `fs.memory()`: through memfs' synchronous calls, the
 * same code its promises API runs. The promises API defers every call to a
 * `setImmediate` (one event-loop turn per call, and a create is three calls)
 * and captures a stack trace for every ENOENT a guest lookup gets; at a few
 * hundred microseconds per guest operation both showed in the mounts bench.
 * `lstat`, the most frequent call (every lookup, getattr and create), reads
 * memfs' tree directly (see `treeLstat`).
 */
import type { IFs } from "memfs";
import { fsError } from "./errno.js";
import type { SandboxDirEntry, SandboxFileHandle, SandboxFileStats, SandboxFileSystem } from "./types.js";

/**
 * Runs one memfs call at once. Its errors only carry an errno code to the
 * guest, so they are made without a stack trace (the limit is restored before
 * anything else runs: the call is synchronous).
 */
function now<T>(call: () => T): Promise<T> {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return Promise.resolve(call());
  } catch (err) {
    return Promise.reject(err);
  } finally {
    Error.stackTraceLimit = limit;
  }
}

function handle(vol: IFs, fd: number): SandboxFileHandle {
  return {
    read: (buffer, offset, length, position) => now(() => ({ bytesRead: vol.readSync(fd, buffer, offset, length, position) })),
    write: (buffer, offset, length, position) => now(() => ({ bytesWritten: vol.writeSync(fd, buffer, offset, length, position) })),
    stat: () => now(() => vol.fstatSync(fd) as SandboxFileStats),
    truncate: (length) => now(() => vol.ftruncateSync(fd, length)),
    sync: () => now(() => vol.fsyncSync(fd)),
    close: () => now(() => vol.closeSync(fd)),
  };
}

interface MemfsNode {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  atime: Date;
  mtime: Date;
  ctime: Date;
  getSize(): number;
  isDirectory(): boolean;
}

interface MemfsLink {
  children: Map<string, MemfsLink | undefined>;
  getNode(): MemfsNode;
}

/**
 * `lstat` from memfs' tree: the mount server's paths are absolute and
 * normalised, so the walk is one Map lookup per name, and the answer takes
 * no `Stats` object with its eight `Date`s. The same values memfs' `lstat`
 * reports (blocks included); a name missing from a directory is ENOENT, as
 * there. Anything but a plain walk through directories (a "." or ".." name,
 * a symbolic link or a file on the way) goes to memfs' own `lstatSync`. Uses internals of the
 * exactly pinned memfs, as `memfsLister` does; without them, `lstatSync`.
 */
function treeLstat(vol: IFs, volume: object): (path: string) => SandboxFileStats {
  const root = (volume as { _core?: { root?: MemfsLink } })._core?.root;
  const slow = (path: string) => vol.lstatSync(path) as SandboxFileStats;
  if (!root || !(root.children instanceof Map) || typeof root.getNode !== "function") return slow;
  return (path) => {
    let link = root;
    for (let start = 1; start < path.length; ) {
      let end = path.indexOf("/", start);
      if (end < 0) end = path.length;
      const name = path.slice(start, end);
      if (name === "." || name === ".." || !link.getNode().isDirectory()) return slow(path);
      const next = link.children.get(name);
      // A name missing from a directory: what a guest lookup of a new name gets, so made here.
      if (!next) throw fsError("ENOENT", `no such file or directory, lstat '${path}'`);
      link = next;
      start = end + 1;
    }
    const n = link.getNode();
    return {
      ino: n.ino,
      size: n.getSize(),
      mode: n.mode,
      nlink: n.nlink,
      uid: n.uid,
      gid: n.gid,
      rdev: n.rdev,
      blocks: 1,
      atimeMs: n.atime.getTime(),
      mtimeMs: n.mtime.getTime(),
      ctimeMs: n.ctime.getTime(),
    };
  };
}

/**
 * `vol` (an `fs.memory()` filesystem) as a mount's filesystem, with `list` as
 * its `listDirectory`; `volume` is the memfs `Volume` behind it, whose tree
 * `lstat` reads (the filesystem object only has the volume's bound methods).
 */
export function directMemoryFileSystem(vol: IFs, volume: object, list: ((path: string) => SandboxDirEntry[]) | undefined): SandboxFileSystem {
  const lstat = treeLstat(vol, volume);
  const direct: SandboxFileSystem = {
    lstat: (path) => now(() => lstat(path)),
    readdir: (path) => now(() => vol.readdirSync(path).map(String)),
    open: (path, flags, mode) => now(() => handle(vol, vol.openSync(path, flags, mode))),
    mkdir: (path, mode) => now(() => vol.mkdirSync(path, mode)),
    rmdir: (path) => now(() => vol.rmdirSync(path)),
    unlink: (path) => now(() => vol.unlinkSync(path)),
    rename: (from, to) => now(() => vol.renameSync(from, to)),
    symlink: (target, path) => now(() => vol.symlinkSync(target, path)),
    readlink: (path) => now(() => String(vol.readlinkSync(path))),
    link: (existing, path) => now(() => vol.linkSync(existing, path)),
    chmod: (path, mode) => now(() => vol.chmodSync(path, mode)),
    truncate: (path, length) => now(() => vol.truncateSync(path, length)),
    utimes: (path, atime, mtime) => now(() => vol.utimesSync(path, atime, mtime)),
    lutimes: (path, atime, mtime) => now(() => vol.lutimesSync(path, atime, mtime)),
    lchown: (path, uid, gid) => now(() => vol.lchownSync(path, uid, gid)),
  };
  if (list) direct.listDirectory = (path) => now(() => list(path));
  return direct;
}
