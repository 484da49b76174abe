/** `fs.virtual(...)`: adapts a JavaScript filesystem into a guest mount. */
import { SandboxConfigError } from "../errors.js";
import { isReadOnly } from "./read-only.js";
import type { FileSystemSource, SandboxFileSystem, VirtualMount } from "./types.js";

const REQUIRED = ["lstat", "readdir", "open", "mkdir", "rmdir", "unlink", "rename", "symlink", "readlink", "link", "chmod", "truncate", "utimes"] as const;

/** Options of `fs.virtual`. */
export interface VirtualOptions {
  /** Mount read-only in the guest: writes fail with EROFS there. Default: true for `fs.readOnly(...)` filesystems, else false. */
  readOnly?: boolean;
}

/**
 * Accepts a memfs volume or `fs` object (its `promises` API is used), or any
 * object implementing {@link SandboxFileSystem}.
 */
export function virtual(fs: FileSystemSource, options: VirtualOptions = {}): VirtualMount {
  const impl = asFileSystem(fs);
  const readOnly = options.readOnly ?? isReadOnly(impl);
  if (typeof readOnly !== "boolean") throw new SandboxConfigError("fs.virtual(fs, { readOnly }) must be a boolean");
  return Object.freeze({ kind: "virtual" as const, fs: impl, readOnly });
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
  return candidate as SandboxFileSystem;
}

function hasMethods(o: object): boolean {
  return REQUIRED.every((m) => typeof (o as Record<string, unknown>)[m] === "function");
}

export function isVirtualMount(v: unknown): v is VirtualMount {
  return typeof v === "object" && v !== null && (v as VirtualMount).kind === "virtual" && typeof (v as VirtualMount).fs === "object";
}
