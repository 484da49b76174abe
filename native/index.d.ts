/** Typings of the Rust napi addon (crates/sandbox-napi). */
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
}
