/** `fs.memory(...)`: an in-memory POSIX filesystem (memfs) the host can use while a guest has it mounted. */
import { Buffer } from "node:buffer";
import { createFsFromVolume, Volume, type IFs } from "memfs";
import { SandboxConfigError } from "../errors.js";
import { fsError } from "./errno.js";
import { directMemoryFileSystem } from "./memory-direct.js";
import type { SandboxDirEntry, SandboxFileSystem } from "./types.js";

/** A memfs filesystem: the full `node:fs`-style API (`readFileSync`, `promises`…) over memory. */
export type MemoryFileSystem = IFs;

/** Options of `fs.memory`. */
export interface MemoryFileSystemOptions {
  /** Initial tree: absolute paths → file contents (`string` or bytes); `null` makes an empty directory. Parents are created. */
  files?: Record<string, string | Uint8Array | null>;
}

interface PermissionChecked {
  canRead(): boolean;
  canWrite(): boolean;
  canExecute(): boolean;
}

/**
 * Creates the filesystem. Permission checks are left to the guest kernel,
 * which enforces mode, uid and gid for every guest process (virtio-fs mounts
 * use `default_permissions`); the volume itself lets every caller through,
 * as a root-owned host process would. memfs would otherwise check modes
 * against the *host* process' uid and refuse what guest root may do.
 */
export function memory(options: MemoryFileSystemOptions = {}): MemoryFileSystem {
  if (typeof options !== "object" || options === null) throw new SandboxConfigError("fs.memory(options) needs an object");
  const vol = Volume.fromJSON({}, "/", { process: hostIdsReadOnce() });
  const core = (vol as unknown as { _core?: { inodes?: Record<string, PermissionChecked>; createNode?: (mode: number) => PermissionChecked } })._core;
  if (core?.createNode && core.inodes) {
    const allow = (node: PermissionChecked) => {
      node.canRead = node.canWrite = node.canExecute = () => true;
      return node;
    };
    Object.values(core.inodes).forEach(allow);
    const create = core.createNode.bind(core);
    core.createNode = (mode: number) => allow(create(mode));
  }
  const json: Record<string, string | Buffer | null> = {};
  for (const [path, content] of Object.entries(options.files ?? {})) {
    if (!path.startsWith("/")) throw new SandboxConfigError(`fs.memory({ files }): path ${JSON.stringify(path)} must be absolute`);
    if (content !== null && typeof content !== "string" && !(content instanceof Uint8Array)) {
      throw new SandboxConfigError(`fs.memory({ files }): ${path} must map to a string, a Uint8Array or null (directory)`);
    }
    json[path] = content instanceof Uint8Array ? Buffer.from(content) : content;
  }
  vol.fromJSON(json, "/");
  const fs = createFsFromVolume(vol);
  Object.defineProperty(fs, MOUNTED_AS, { value: directMemoryFileSystem(fs, vol, memfsLister(vol)) });
  return fs;
}

/**
 * The host process as memfs sees it, with its uid and gid read once. memfs
 * asks for both on every path walk and every new node (two system calls each
 * time, about a seventh of a guest create's JavaScript time); they only name
 * the owner of new nodes here, since the volume checks no permissions.
 */
function hostIdsReadOnce() {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  return {
    getuid: () => uid,
    getgid: () => gid,
    cwd: () => process.cwd(),
    platform: process.platform,
    emitWarning: (message: string, type: string) => process.emitWarning(message, type),
    env: process.env,
  };
}

/** Where `fs.memory()` keeps the filesystem its mounts are served from (see `asFileSystem`). */
export const MOUNTED_AS = Symbol("sandbox.mountedAs");

/** The filesystem a mount of `fs.memory()` result `source` is served from; undefined for anything else. */
export function mountedAs(source: object): SandboxFileSystem | undefined {
  return (source as { [MOUNTED_AS]?: SandboxFileSystem })[MOUNTED_AS];
}

interface MemfsLink {
  children: Map<string, MemfsLink | undefined>;
  getNode(): { ino: number; mode: number; isDirectory(): boolean };
}

/**
 * Lists a directory from memfs' own tree: its public `readdir` has no inode
 * numbers, and an lstat per entry is most of a guest readdir's cost. Uses
 * internals of the exactly pinned memfs; without them mounts lstat each entry.
 */
function memfsLister(vol: Volume): ((path: string) => SandboxDirEntry[]) | undefined {
  const core = (vol as unknown as { _core?: { getResolvedLinkOrThrow?: (path: string, syscall: string) => MemfsLink } })._core;
  const resolve = core?.getResolvedLinkOrThrow?.bind(core);
  if (!resolve) return undefined;
  return (path) => {
    const link = resolve(path, "scandir");
    if (!link.getNode().isDirectory()) throw fsError("ENOTDIR", `${path} is not a directory`);
    const out: SandboxDirEntry[] = [];
    for (const [name, child] of link.children) {
      if (!child || name === "." || name === "..") continue;
      const node = child.getNode();
      out.push({ name, ino: node.ino, mode: node.mode });
    }
    return out;
  };
}
