/**
 * `fs.hostDir(root)`: one host directory given to the guest, confined to it.
 *
 * Confinement, without openat2 in Node:
 * - paths come from the guest kernel's own lookups, one component at a time;
 *   "", ".", ".." and names with "/" are refused before any host call;
 * - the host never follows a symbolic link: lstat instead of stat, O_NOFOLLOW
 *   on every open, lutimes, no chown at all; a guest symlink (even to "/")
 *   is stored as text and resolved by the *guest* kernel, inside the guest;
 * - before each path operation every directory on the way from the root is
 *   lstat-ed and must be a real directory (not a symlink);
 * - all path operations of one adapter run one at a time, so the check and
 *   the use cannot be interleaved with a guest rename that swaps a directory
 *   for a symlink. Reads and writes on open handles are not serialised (the
 *   descriptor is already resolved).
 * Limit: another *host* process changing the tree under the root at the same
 * moment is outside this model (as for any path-based tool).
 */
import { constants, realpathSync, statSync } from "node:fs";
import * as fsp from "node:fs/promises";
import { SandboxConfigError } from "../errors.js";
import { fsError } from "./errno.js";
import { readOnly as readOnlyView } from "./read-only.js";
import type { SandboxFileHandle, SandboxFileStats, SandboxFileSystem } from "./types.js";
import { asFileSystem } from "./virtual.js";

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
  return options.readOnly ? readOnlyView(fs, asFileSystem) : fs;
}

class HostDirFileSystem implements SandboxFileSystem {
  readonly #root: string;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(root: string) {
    this.#root = root;
  }

  /** Runs `fn` after every earlier path operation finished, with `path` checked and mapped to the host. */
  #run<T>(path: string, fn: (host: string) => Promise<T>): Promise<T> {
    const result = this.#queue.then(async () => fn(await this.#resolve(path)));
    this.#queue = result.catch(() => {});
    return result;
  }

  #run2<T>(a: string, b: string, fn: (ha: string, hb: string) => Promise<T>): Promise<T> {
    const result = this.#queue.then(async () => fn(await this.#resolve(a), await this.#resolve(b)));
    this.#queue = result.catch(() => {});
    return result;
  }

  async #resolve(path: string): Promise<string> {
    if (typeof path !== "string" || !path.startsWith("/")) throw fsError("EINVAL", `not an absolute path: ${String(path)}`);
    const parts = path.split("/").filter((p) => p !== "");
    for (const p of parts) {
      if (p === "." || p === ".." || p.includes("\0")) throw fsError("EINVAL", `path component ${JSON.stringify(p)} is not allowed`);
    }
    let at = this.#root;
    for (const p of parts.slice(0, -1)) {
      at = `${at}/${p}`;
      const st = await fsp.lstat(at);
      if (st.isSymbolicLink()) throw fsError("ELOOP", `${path}: a directory on the way is a symbolic link`);
      if (!st.isDirectory()) throw fsError("ENOTDIR", `${path}: not a directory on the way`);
    }
    return parts.length ? `${at}/${parts[parts.length - 1]}` : this.#root;
  }

  lstat(path: string): Promise<SandboxFileStats> {
    return this.#run(path, (h) => fsp.lstat(h));
  }

  readdir(path: string): Promise<string[]> {
    return this.#run(path, async (h) => {
      if ((await fsp.lstat(h)).isSymbolicLink()) throw fsError("ENOTDIR", `${path} is a symbolic link`);
      return fsp.readdir(h);
    });
  }

  open(path: string, flags: number, mode?: number): Promise<SandboxFileHandle> {
    // Guest (Linux) flag values → this host's constants; never follow a final symlink.
    let f = flags & 3;
    if (flags & 0o100) f |= constants.O_CREAT;
    if (flags & 0o200) f |= constants.O_EXCL;
    f |= constants.O_NOFOLLOW;
    return this.#run(path, async (h) => {
      const handle = await fsp.open(h, f, mode);
      return {
        read: (b, o, l, p) => handle.read(b, o, l, p),
        write: (b, o, l, p) => handle.write(b, o, l, p),
        stat: () => handle.stat(),
        truncate: (len) => handle.truncate(len),
        sync: () => handle.sync(),
        close: () => handle.close(),
      };
    });
  }

  mkdir(path: string, mode?: number): Promise<unknown> {
    return this.#run(path, (h) => fsp.mkdir(h, { mode }));
  }
  rmdir(path: string): Promise<void> {
    return this.#run(path, (h) => fsp.rmdir(h));
  }
  unlink(path: string): Promise<void> {
    return this.#run(path, (h) => fsp.unlink(h));
  }
  rename(from: string, to: string): Promise<void> {
    return this.#run2(from, to, (a, b) => fsp.rename(a, b));
  }
  symlink(target: string, path: string): Promise<void> {
    return this.#run(path, (h) => fsp.symlink(target, h));
  }
  readlink(path: string): Promise<string> {
    return this.#run(path, (h) => fsp.readlink(h));
  }
  link(existing: string, path: string): Promise<void> {
    // link(2) does not follow a symlink at `existing`.
    return this.#run2(existing, path, (a, b) => fsp.link(a, b));
  }
  chmod(path: string, mode: number): Promise<void> {
    return this.#run(path, async (h) => {
      if ((await fsp.lstat(h)).isSymbolicLink()) throw fsError("EOPNOTSUPP", "symbolic links have no mode of their own");
      await fsp.chmod(h, mode);
    });
  }
  truncate(path: string, length: number): Promise<void> {
    return this.#run(path, async (h) => {
      const handle = await fsp.open(h, constants.O_WRONLY | constants.O_NOFOLLOW);
      try {
        await handle.truncate(length);
      } finally {
        await handle.close();
      }
    });
  }
  utimes(path: string, atime: number, mtime: number): Promise<void> {
    return this.lutimes(path, atime, mtime);
  }
  lutimes(path: string, atime: number, mtime: number): Promise<void> {
    return this.#run(path, (h) => fsp.lutimes(h, atime, mtime));
  }
}
