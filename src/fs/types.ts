/**
 * The filesystem interface guest mounts are served from. It is a small
 * subset of `node:fs/promises` (path-based calls plus file handles), so a
 * memfs volume's `promises` API, `node:fs/promises` itself and the adapters
 * in this directory all satisfy it. Paths are absolute POSIX paths inside the
 * filesystem ("/" is the mount's root). Failures must be errors whose `code`
 * is an errno name (`ENOENT`, `EEXIST`…): the guest sees that errno.
 */

export interface SandboxFileStats {
  ino: number | bigint;
  size: number | bigint;
  /** Type and permission bits, as in `fs.Stats.mode`. */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev?: number;
  blocks?: number | bigint;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
}

/** One entry of `SandboxFileSystem.listDirectory`. */
export interface SandboxDirEntry {
  name: string;
  /** The entry's inode number, as `lstat` reports it. */
  ino: number | bigint;
  /** At least the type bits (`S_IFMT`) of the entry's `lstat` mode. */
  mode: number;
}

/** An open file of a `SandboxFileSystem` (the subset of `fs/promises`' FileHandle mounts use). */
export interface SandboxFileHandle {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  stat(): Promise<SandboxFileStats>;
  truncate(length: number): Promise<void>;
  /** Make written data durable (guest `fsync`). Optional. */
  sync?(): Promise<void>;
  close(): Promise<void>;
}

/**
 * What a mount is served from: a subset of `node:fs/promises` (a memfs volume's
 * `promises`, `node:fs/promises` itself, or your own object). A thrown error's
 * `code` (`ENOENT`…) is the guest's errno; anything else is EIO.
 */
export interface SandboxFileSystem {
  /** Stats of `path` itself (symbolic links are not followed). */
  lstat(path: string): Promise<SandboxFileStats>;
  /** Entry names of a directory, without "." and "..". */
  readdir(path: string): Promise<string[]>;
  /**
   * Optional: a directory's entries with inode number and type, without "." and "..".
   * With it a guest readdir costs one call instead of an `lstat` per entry.
   */
  listDirectory?(path: string): Promise<SandboxDirEntry[]>;
  /**
   * Opens a regular file. `flags` are numeric Linux `O_*` values: the access mode,
   * plus `O_CREAT`/`O_EXCL` when the guest creates the file. The guest kernel resolves
   * symbolic links itself, so `path` never needs to be followed through one.
   */
  open(path: string, flags: number, mode?: number): Promise<SandboxFileHandle>;
  mkdir(path: string, mode?: number): Promise<unknown>;
  rmdir(path: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** POSIX rename: replaces an existing file or empty directory at `to`. */
  rename(from: string, to: string): Promise<void>;
  symlink(target: string, path: string): Promise<void>;
  readlink(path: string): Promise<string>;
  link(existingPath: string, newPath: string): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  truncate(path: string, length: number): Promise<void>;
  /** Times in seconds since the epoch (fractional), like `fs.utimes`. Should not follow symbolic links (`lutimes`). */
  lutimes?(path: string, atime: number, mtime: number): Promise<void>;
  utimes(path: string, atime: number, mtime: number): Promise<void>;
  /** Ownership changes (guest `chown`, and the owner of files the guest creates). Without it, guest chown fails with EPERM. */
  lchown?(path: string, uid: number, gid: number): Promise<void>;
}

/** What `boot({ mounts })` takes: a filesystem adapted by `fs.virtual(...)`. */
export interface VirtualMount {
  readonly kind: "virtual";
  readonly fs: SandboxFileSystem;
  /** Mounted read-only in the guest (writes fail with EROFS before reaching the filesystem). */
  readonly readOnly: boolean;
  /** How long the guest may keep file attributes (see `VirtualOptions.attributeCacheMs`); 0: never. */
  readonly attributeCacheMs: number;
}

/**
 * What `fs.virtual` and `fs.readOnly` accept: a {@link SandboxFileSystem}, or an
 * object whose `promises` property is one (a memfs volume or `fs` object, e.g.
 * `fs.memory()`); the methods are checked when the filesystem is adapted.
 */
export type FileSystemSource = SandboxFileSystem | { readonly promises: object };
