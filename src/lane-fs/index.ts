/**
 * `lane.fs`: the files of a running guest, read and changed by init itself
 * over the control channel — no guest tools, so it works on any image, and
 * on a read-only root, where changes outside tmpfs and mounts fail with EROFS.
 */
import { SandboxConfigError, SandboxFileSystemError } from "../errors.js";
import type { FileStat, FileType } from "../protocol/generated/wire.js";
import { checkInteger } from "../validate.js";
import { call, CHUNK, fileMode, guestPath, type FileLink } from "./requests.js";
import { RangeWriter, readRanges, readStream, writeStream } from "./streams.js";
import { GuestWatcher, type WatchOptions } from "./watch.js";

/** What a guest path is: `file`, `directory`, `symlink`, `block-device`, `character-device`, `fifo`, `socket` or `unknown`. */
export type GuestFileType = FileType;

/** What `lane.fs.stat` / `lstat` say about a guest path. */
export interface GuestFileStats {
  /** What the path is (for `lstat`, a link is `symlink`). */
  type: GuestFileType;
  /** Permission bits (`0o7777` at most), without the type bits. */
  mode: number;
  size: number;
  uid: number;
  gid: number;
  nlink: number;
  ino: number;
  /** Modification time in milliseconds since the epoch (fractional, to the nanosecond as far as a number holds). */
  mtimeMs: number;
  atimeMs: number;
  ctimeMs: number;
  /** `mtimeMs` as a Date. */
  mtime: Date;
}

/** One entry of `readdir(path, { withTypes: true })`. */
export interface GuestDirEntry {
  /** The entry's name (one path component). Names that are not UTF-8 in the guest have U+FFFD in place of the bad bytes. */
  name: string;
  /** What it is, as the directory says (links are not followed). */
  type: GuestFileType;
}

/** Options of `lane.fs.readFile`. */
export interface ReadFileOptions {
  /** First byte to read. Default 0. */
  start?: number;
  /** Byte after the last one to read (exclusive, like `Buffer.subarray`). Default: the end of the file. */
  end?: number;
}

/** Options of `lane.fs.writeFile` and `createWriteStream`. */
export interface WriteFileOptions {
  /** Permission bits of a file this call creates, exactly (no umask). An existing file keeps its mode. Default 0o644. */
  mode?: number;
  /** Create missing parent directories (0755). Default false: a missing parent is ENOENT. */
  createParents?: boolean;
}

/** Options of `lane.fs.mkdir`. */
export interface MkdirOptions {
  /** Create missing parents, and succeed when the directory exists. Default false. */
  recursive?: boolean;
  /** Permission bits of the new directory, exactly (no umask). Default 0o755. */
  mode?: number;
}

/** Options of `lane.fs.rm`. */
export interface RmOptions {
  /** Remove a directory and everything below it (links are removed, never followed). Default false: a directory is EISDIR. */
  recursive?: boolean;
  /** A missing path is a success. Default false. */
  force?: boolean;
}

/**
 * The files of a running lane (`lane.fs`). Every path is an absolute guest
 * path; every failure in the guest is a {@link SandboxFileSystemError} whose
 * `code` is the errno name. Operations run as root in the guest, one at a
 * time per lane in the order they were called, between the guest's other work.
 */
export class LaneFileSystem {
  readonly #link: FileLink;

  /** @internal A lane makes its own (`lane.fs`). */
  constructor(link: FileLink) {
    this.#link = link;
  }

  /** The bytes of a file, or of the range `start`..`end` of it. */
  readFile(path: string, options?: ReadFileOptions): Promise<Buffer>;
  /** The text of a file (or of a byte range of it) decoded with `encoding`. */
  readFile(path: string, options: ReadFileOptions & { encoding: BufferEncoding }): Promise<string>;
  async readFile(path: string, options: ReadFileOptions & { encoding?: BufferEncoding } = {}): Promise<Buffer | string> {
    const p = guestPath("path", path);
    const { start, end } = range(options);
    const parts: Buffer[] = [];
    for await (const chunk of readRanges(this.#link, "readFile", p, start, end)) parts.push(chunk);
    const bytes = Buffer.concat(parts);
    return options.encoding === undefined ? bytes : bytes.toString(checkEncoding(options.encoding));
  }

  /** Writes a whole file (strings as UTF-8), replacing what it held. */
  async writeFile(path: string, data: string | Uint8Array, options: WriteFileOptions = {}): Promise<void> {
    const p = guestPath("path", path);
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data instanceof Uint8Array ? data : badData(data);
    const writer = new RangeWriter(this.#link, "writeFile", writeTarget(p, options));
    const pieces = Math.max(1, Math.ceil(bytes.length / CHUNK));
    for (let i = 0; i < pieces; i++) await writer.write(bytes.subarray(i * CHUNK, (i + 1) * CHUNK));
    await writer.finish();
  }

  /** A web stream of a file's bytes (or of `start`..`end`), read from the guest only as fast as it is consumed. */
  createReadStream(path: string, options: ReadFileOptions = {}): ReadableStream<Uint8Array> {
    const p = guestPath("path", path);
    const { start, end } = range(options);
    return readStream(readRanges(this.#link, "createReadStream", p, start, end));
  }

  /**
   * A web stream that writes a file (created or truncated by the first write, or
   * at `close()` when nothing was written). A write resolves once the guest has
   * room for more, so a fast producer waits instead of filling memory.
   */
  createWriteStream(path: string, options: WriteFileOptions = {}): WritableStream<Uint8Array> {
    const p = guestPath("path", path);
    return writeStream(new RangeWriter(this.#link, "createWriteStream", writeTarget(p, options)));
  }

  /** stat(2): follows symbolic links. */
  async stat(path: string): Promise<GuestFileStats> {
    const { reply } = await call(this.#link, "stat", { op: "stat", path: guestPath("path", path), follow: true }, "stat");
    return stats(reply.stat);
  }

  /** lstat(2): a symbolic link is described itself. */
  async lstat(path: string): Promise<GuestFileStats> {
    const { reply } = await call(this.#link, "lstat", { op: "stat", path: guestPath("path", path), follow: false }, "stat");
    return stats(reply.stat);
  }

  /** Whether `path` exists (following links: a dangling link does not). Other failures, such as EACCES, reject. */
  async exists(path: string): Promise<boolean> {
    try {
      await call(this.#link, "exists", { op: "stat", path: guestPath("path", path), follow: true }, "stat");
      return true;
    } catch (err) {
      if (err instanceof SandboxFileSystemError && (err.code === "ENOENT" || err.code === "ENOTDIR")) return false;
      throw err;
    }
  }

  /** The names in a directory, sorted. */
  readdir(path: string, options?: { withTypes?: false }): Promise<string[]>;
  /** The entries of a directory with what each is, sorted by name. */
  readdir(path: string, options: { withTypes: true }): Promise<GuestDirEntry[]>;
  async readdir(path: string, options: { withTypes?: boolean } = {}): Promise<string[] | GuestDirEntry[]> {
    const p = guestPath("path", path);
    const entries: GuestDirEntry[] = [];
    for (;;) {
      const { reply } = await call(this.#link, "readdir", { op: "readdir", path: p, skip: entries.length }, "dir");
      for (const e of reply.entries) entries.push({ name: e.name, type: e.type });
      if (!reply.more || reply.entries.length === 0) break;
    }
    return options.withTypes ? entries : entries.map((e) => e.name);
  }

  /** Makes a directory; with `recursive`, its missing parents too (and an existing directory is fine). */
  async mkdir(path: string, options: MkdirOptions = {}): Promise<void> {
    const mode = options.mode === undefined ? undefined : fileMode("mode", options.mode);
    await call(this.#link, "mkdir", { op: "mkdir", path: guestPath("path", path), recursive: options.recursive === true, ...(mode === undefined ? {} : { mode }) }, "done");
  }

  /** Removes a file, link or (with `recursive`) a directory tree. */
  async rm(path: string, options: RmOptions = {}): Promise<void> {
    await call(this.#link, "rm", { op: "rm", path: guestPath("path", path), recursive: options.recursive === true, force: options.force === true }, "done");
  }

  /** rename(2): moves `from` to `to`, replacing a file (or empty directory) there. */
  async rename(from: string, to: string): Promise<void> {
    await call(this.#link, "rename", { op: "rename", from: guestPath("from", from), to: guestPath("to", to) }, "done");
  }

  /** chmod(2): sets the permission bits (follows links). */
  async chmod(path: string, mode: number): Promise<void> {
    await call(this.#link, "chmod", { op: "chmod", path: guestPath("path", path), mode: fileMode("mode", mode) }, "done");
  }

  /** Makes a symbolic link at `path` pointing to `target` (relative or absolute; not checked to exist). */
  async symlink(target: string, path: string): Promise<void> {
    if (typeof target !== "string" || target === "" || target.includes("\0") || Buffer.byteLength(target) > 4096) {
      throw new SandboxConfigError(`symlink target must be a non-empty string of at most 4096 bytes without NUL, got ${JSON.stringify(target)}`);
    }
    await call(this.#link, "symlink", { op: "symlink", target, path: guestPath("path", path) }, "done");
  }

  /**
   * Watches `path` (a directory, with `recursive` the whole tree below it, or
   * a file) for changes, from inotify in the guest: `for await (const e of
   * lane.fs.watch("/workspace", { recursive: true }))` yields `{ type, path }`
   * with `type` one of `create`, `modify`, `delete`, `rename` (each side of a
   * move), and `overflow` when events were lost (the guest's queue of
   * `maxQueued` events, or the kernel's, was full: re-scan what you track).
   * Repeats of a path's pending event are coalesced. `break`, `close()`, the
   * `signal` or the lane's end finish the iteration cleanly; a path that cannot
   * be watched rejects it (and `ready`) with a SandboxFileSystemError, e.g. ENOENT.
   */
  watch(path: string, options: WatchOptions = {}): GuestWatcher {
    return new GuestWatcher(this.#link, guestPath("path", path), options);
  }

  /** The target of a symbolic link, as stored. */
  async readlink(path: string): Promise<string> {
    const { reply } = await call(this.#link, "readlink", { op: "readlink", path: guestPath("path", path) }, "link");
    return reply.target;
  }
}

function range(o: ReadFileOptions): { start: number; end: number | undefined } {
  const start = checkInteger("start", o.start ?? 0, 0, Number.MAX_SAFE_INTEGER);
  const end = o.end === undefined ? undefined : checkInteger("end", o.end, start, Number.MAX_SAFE_INTEGER);
  return { start, end };
}

function writeTarget(path: string, o: WriteFileOptions) {
  return { path, mode: o.mode === undefined ? undefined : fileMode("mode", o.mode), createParents: o.createParents === true };
}

function checkEncoding(e: unknown): BufferEncoding {
  if (typeof e !== "string" || !Buffer.isEncoding(e)) throw new SandboxConfigError(`encoding must be a Buffer encoding such as "utf8", got ${JSON.stringify(e)}`);
  return e;
}

function badData(d: unknown): never {
  throw new SandboxConfigError(`writeFile data must be a string or Uint8Array, got ${d === null ? "null" : typeof d}`);
}

function stats(s: FileStat): GuestFileStats {
  const mtimeMs = s.mtimeMs + s.mtimeNs / 1e6;
  return {
    type: s.type,
    mode: s.mode,
    size: s.size,
    uid: s.uid,
    gid: s.gid,
    nlink: s.nlink,
    ino: s.ino,
    mtimeMs,
    atimeMs: s.atimeMs,
    ctimeMs: s.ctimeMs,
    mtime: new Date(mtimeMs),
  };
}
