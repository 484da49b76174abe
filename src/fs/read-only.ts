/** `fs.readOnly(...)`: a view of a filesystem that refuses every change with EROFS. */
import { fsError } from "./errno.js";
import { O } from "./server.js";
import type { FileSystemSource, SandboxFileHandle, SandboxFileSystem } from "./types.js";

const READ_ONLY = Symbol("sandbox.readOnly");

export function isReadOnly(fs: SandboxFileSystem): boolean {
  return (fs as { [READ_ONLY]?: boolean })[READ_ONLY] === true;
}

const refuse = (what: string) => () => Promise.reject(fsError("EROFS", `${what}: the filesystem is read-only`));

export function readOnly(inner: FileSystemSource, asFs: (x: unknown) => SandboxFileSystem): SandboxFileSystem {
  const fs = asFs(inner);
  const view: SandboxFileSystem & { [READ_ONLY]: true } = {
    [READ_ONLY]: true,
    lstat: (p) => fs.lstat(p),
    readdir: (p) => fs.readdir(p),
    ...(fs.listDirectory ? { listDirectory: (p: string) => fs.listDirectory!(p) } : {}),
    readlink: (p) => fs.readlink(p),
    async open(p, flags, mode) {
      if ((flags & O.ACCMODE) !== 0 || (flags & (O.CREAT | O.TRUNC | O.APPEND)) !== 0) {
        throw fsError("EROFS", `open ${p} for writing: the filesystem is read-only`);
      }
      const h = await fs.open(p, flags, mode);
      const ro: SandboxFileHandle = {
        read: (b, o, l, pos) => h.read(b, o, l, pos),
        stat: () => h.stat(),
        close: () => h.close(),
        write: refuse("write"),
        truncate: refuse("truncate"),
      };
      return ro;
    },
    mkdir: refuse("mkdir"),
    rmdir: refuse("rmdir"),
    unlink: refuse("unlink"),
    rename: refuse("rename"),
    symlink: refuse("symlink"),
    link: refuse("link"),
    chmod: refuse("chmod"),
    truncate: refuse("truncate"),
    utimes: refuse("utimes"),
    lutimes: refuse("utimes"),
    lchown: refuse("chown"),
  };
  return view;
}
