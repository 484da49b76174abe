/**
 * Typings of the Rust napi addon (crates/sandbox-napi); the addon itself
 * ships in the platform package and src/native.ts loads it from there.
 * Kept in src/ so the built typings reference nothing outside dist/.
 */
export interface HelperHandle {
  /** pid of the sandbox-host helper process. */
  pid: number;
  /** Node's end of the helper control socket (close-on-exec). */
  fd: number;
}

export interface NativeAddon {
  /**
   * Starts `helper` with the control socket as its fd 3. The helper dies with
   * this process (PR_SET_PDEATHSIG) and on EOF of the socket.
   * @param stderrFd where the helper's stderr goes, or -1 for /dev/null.
   */
  spawnHelper(helper: string, args: string[], stderrFd: number): HelperHandle;
  /**
   * Lists a directory (a final symbolic link is not followed): names, inode
   * numbers and `S_IFMT` bits from one `getdents` sweep. `null` on any failure.
   */
  listDirectory(path: string): DirListing | null;
  /**
   * Linux: `lstat` of `name` in `dir` (of `dir` itself when `name` is ""),
   * following no symbolic link anywhere (openat2 RESOLVE_NO_SYMLINKS).
   * `[dev, ino, mode, nlink, uid, gid, rdev, size, blocks, atimeMs, mtimeMs,
   * ctimeMs]`, or `[errno]`. Absent on other systems.
   */
  lstatNoSymlinks?(dir: string, name: string): Float64Array;
}

export interface DirListing {
  names: string[];
  inos: Float64Array;
  modes: Uint32Array;
}
