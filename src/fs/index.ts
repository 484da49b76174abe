/** The `fs` namespace: filesystems the guest mounts, implemented in JavaScript on the host. */
import { hostDir } from "./host-dir.js";
import { memory } from "./memory.js";
import { readOnly as readOnlyView } from "./read-only.js";
import type { FileSystemSource, SandboxFileSystem } from "./types.js";
import { asFileSystem, virtual } from "./virtual.js";

/**
 * Filesystems served from JavaScript and mounted in the guest as real POSIX
 * mounts (virtio-fs): `fs.memory` (memfs), `fs.hostDir` (a confined host
 * folder), `fs.readOnly` (an EROFS view), `fs.virtual` (any of them, or your own
 * `SandboxFileSystem`, as a mount for `boot({ mounts })`).
 */
export const fs = Object.freeze({
  /** An in-memory POSIX filesystem (memfs), usable from the host while a guest has it mounted. */
  memory,
  /** Adapts a memfs volume or any {@link SandboxFileSystem} into a guest mount for `boot({ mounts })`. */
  virtual,
  /** A view refusing every change with EROFS; `fs.virtual` mounts it read-only. */
  readOnly: (inner: FileSystemSource): SandboxFileSystem => readOnlyView(inner, asFileSystem),
  /** One host directory, confined to itself (no escape through "..", symlinks or renames). */
  hostDir,
});

export type { SandboxFileSystem, SandboxFileHandle, SandboxFileStats, SandboxDirEntry, VirtualMount, FileSystemSource } from "./types.js";
export type { MemoryFileSystem, MemoryFileSystemOptions } from "./memory.js";
export type { VirtualOptions } from "./virtual.js";
export type { HostDirOptions } from "./host-dir.js";
export { ERRNO, errnoOf } from "./errno.js";
