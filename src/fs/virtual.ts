/** `fs.virtual(...)`: adapts a JavaScript filesystem into a guest mount. */
import { SandboxConfigError } from "../errors.js";
import { isReadOnly } from "./read-only.js";
import { mountedAs } from "./memory.js";
import type { FileSystemSource, SandboxFileSystem, VirtualMount } from "./types.js";

const REQUIRED = ["lstat", "readdir", "open", "mkdir", "rmdir", "unlink", "rename", "symlink", "readlink", "link", "chmod", "truncate", "utimes"] as const;

/** Options of `fs.virtual`. */
export interface VirtualOptions {
  /** Mount read-only in the guest: writes fail with EROFS there. Default: true for `fs.readOnly(...)` filesystems, else false. */
  readOnly?: boolean;
  /**
   * How long (ms, 0–60000) the guest kernel may keep a file's size, mode and
   * times before asking again. Default 0: a host change is seen by the next
   * guest `stat`. With N > 0, stat-based tools (`git status`, `make`) run
   * several times faster, but a change made around the guest — by the host or
   * another lane — can take up to N ms to show in `stat`; file contents are
   * still read fresh at every open. The C virtiofsd's `cache=auto` is 1000.
   */
  attributeCacheMs?: number;
}

/**
 * Accepts a memfs volume or `fs` object (its `promises` API is used), or any
 * object implementing {@link SandboxFileSystem}.
 */
export function virtual(fs: FileSystemSource, options: VirtualOptions = {}): VirtualMount {
  const impl = asFileSystem(fs);
  const readOnly = options.readOnly ?? isReadOnly(impl);
  if (typeof readOnly !== "boolean") throw new SandboxConfigError("fs.virtual(fs, { readOnly }) must be a boolean");
  const attributeCacheMs = options.attributeCacheMs ?? 0;
  if (!Number.isInteger(attributeCacheMs) || attributeCacheMs < 0 || attributeCacheMs > 60_000) {
    throw new SandboxConfigError(`fs.virtual(fs, { attributeCacheMs }) must be an integer from 0 to 60000, got ${String(attributeCacheMs)}`);
  }
  return Object.freeze({ kind: "virtual" as const, fs: impl, readOnly, attributeCacheMs });
}

export function asFileSystem(fs: unknown): SandboxFileSystem {
  if (typeof fs !== "object" || fs === null) {
    throw new SandboxConfigError("fs.virtual(fs) needs a filesystem: fs.memory(...), a memfs volume, or an object implementing SandboxFileSystem");
  }
  // A memfs `fs`/Volume also has callback-style methods of the same names: use its promises API.
  const promises = (fs as { promises?: unknown }).promises;
  const candidate = typeof promises === "object" && promises !== null ? promises : fs;
  if (typeof candidate !== "object" || candidate === null || !hasMethods(candidate)) {
    const missing = REQUIRED.filter((m) => typeof (candidate as Record<string, unknown> | undefined)?.[m] !== "function");
    throw new SandboxConfigError(
      `fs.virtual(fs): the object is not a compatible filesystem (missing ${missing.join(", ")}); pass fs.memory(...), a memfs volume or a SandboxFileSystem`,
    );
  }
  // fs.memory(): its synchronous calls plus a listing from memfs' tree (see memory-direct.ts).
  return mountedAs(fs) ?? (candidate as SandboxFileSystem);
}

function hasMethods(o: object): boolean {
  return REQUIRED.every((m) => typeof (o as Record<string, unknown>)[m] === "function");
}

export function isVirtualMount(v: unknown): v is VirtualMount {
  return typeof v === "object" && v !== null && (v as VirtualMount).kind === "virtual" && typeof (v as VirtualMount).fs === "object";
}
