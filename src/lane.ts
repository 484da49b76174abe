/** A running sandbox instance and the processes it runs. */
import { constants as bufferConstants } from "node:buffer";
import { rm } from "node:fs/promises";
import {
  abortError,
  LaneClosedError,
  OutputLimitError,
  PortForwardError,
  SandboxConfigError,
  SandboxSnapshotError,
  SandboxCrashedError,
  SandboxUnresponsiveError,
  type SandboxError,
} from "./errors.js";
import type { ConnectionEnd, HelperConnection } from "./helper-connection.js";
import type { BlockStoreFailures } from "./rootfs/block-store.js";
import {
  OUTPUT_WINDOW,
  OutputStream,
  ProcessChannel,
  signalNumber,
  stdinStream,
  type ChannelHooks,
  type ProcessExit,
  type StartRequest,
  type TerminalSize,
} from "./process.js";
import { Kind, MAX_PAYLOAD } from "./protocol/frames.js";
import { LaneFileSystem } from "./lane-fs/index.js";
import { guestPath } from "./lane-fs/requests.js";
import { extractInto, tarOf, tarStream, upload, type TransferOptions, type TransferProgress } from "./lane-fs/trees.js";
import { checkAbsolutePath, checkArgv, checkEnv, checkInteger } from "./validate.js";
import { SandboxSnapshot, snapshotDir, type CheckpointOptions, type SnapshotBooter } from "./snapshot.js";
import type { LaneEvent } from "./sandbox.js";
import type { SnapshotRequirements } from "./snapshot-store.js";
import { writeSnapshotMounts, type SnapshotMount } from "./snapshot-mounts.js";

/** Facts about a running lane: backend and why it was chosen, image, names, pids, boot timings. */
export interface LaneInfo {
  backend: "qemu" | "krun";
  accel: string;
  /** Why this backend was chosen (e.g. why krun is not usable here). */
  backendReason: string;
  image: string;
  hostname: string;
  cwd: string;
  kernel: string;
  helperPid: number;
  vmmPid: number;
  /** Host wall time from `boot()` to ready. */
  bootMs: number;
  /** Guest uptime when init reported ready. */
  guestBootMs: number;
  /** Guest uptime (ms) at each boot milestone: init start, modules loaded, control port up, ready. */
  guestTimings: { initStartedMs: number; modulesLoadedMs: number; helloMs: number; readyMs: number };
}

/** Options of `lane.exec`. */
export interface ExecOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Kill the process group after this long; the result then has exit code 124. */
  timeoutMs?: number;
  /** Abort: kills the process group and rejects with an AbortError; the lane stays usable. */
  signal?: AbortSignal;
  /** Cap on stdout+stderr bytes kept in memory. Default 64 MiB; past it the group is killed and the promise rejects. */
  maxOutputBytes?: number;
}

/** What `lane.exec` resolves with: the exit and everything the command wrote (UTF-8). */
export interface ExecResult extends ProcessExit {
  stdout: string;
  stderr: string;
}

const SIGKILL = 9;
const DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024;

/** Output window of exec: it drains into memory, so a larger window only saves round trips. */
const EXEC_WINDOW = 1024 * 1024;

/** Options of `lane.spawn` (and the base of `lane.pty`'s). */
export interface SpawnOptions {
  cwd?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Abort: kills the process group; `exit` rejects with an AbortError. */
  signal?: AbortSignal;
}

/** Options of `lane.pty`. */
export interface PtyOptions extends SpawnOptions {
  /** Initial terminal size. Default 24×80. */
  size?: TerminalSize;
}

/**
 * A process started with `lane.spawn`: web streams for its stdio, and promises for its start and end.
 * The output streams end (never error) when the process ends; why it ended is what `exit` says.
 */
export interface SandboxProcess {
  /** Guest stdin; `close()` delivers EOF. Writes after the process exited are discarded. */
  readonly stdin: WritableStream<Uint8Array>;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly stderr: ReadableStream<Uint8Array>;
  /** Resolves once the guest started the process; rejects with ProcessStartError (ENOENT, EACCES, bad cwd…). */
  readonly ready: Promise<{ pid: number }>;
  readonly exit: Promise<ProcessExit>;
  /** Signals the process group (default SIGTERM). */
  kill(signal?: string | number): void;
}

/** A process on a pseudo-terminal, started with `lane.pty`: terminal input and output as web streams. */
export interface SandboxPty {
  /** Bytes typed into the terminal (^C is 0x03). `close()` sends ^D. */
  readonly input: WritableStream<Uint8Array>;
  /** What the terminal displays. */
  readonly output: ReadableStream<Uint8Array>;
  resize(size: TerminalSize): void;
  readonly ready: Promise<{ pid: number }>;
  readonly exit: Promise<ProcessExit>;
  /** Signals the terminal's session leader group (default SIGHUP). */
  kill(signal?: string | number): void;
}

function startRequest(cmd: string, args: readonly string[], o: SpawnOptions, stdin: boolean): StartRequest {
  const req: StartRequest = {
    argv: checkArgv(cmd, args),
    env: checkEnv("env", o.env),
    cwd: o.cwd === undefined ? undefined : checkAbsolutePath("cwd", o.cwd),
    timeoutMs: o.timeoutMs === undefined ? undefined : checkInteger("timeoutMs", o.timeoutMs, 1, 2 ** 31),
    stdin,
    window: OUTPUT_WINDOW,
  };
  // Checked before a channel exists, so a refused command leaves nothing behind.
  const bytes = Buffer.byteLength(JSON.stringify(req));
  if (bytes > MAX_PAYLOAD - 4096) {
    throw new SandboxConfigError(
      `the command's arguments, environment and cwd take ${bytes} bytes; at most ${MAX_PAYLOAD - 4096} fit one start request. Pass large data through stdin or a file instead`,
    );
  }
  return req;
}

/** The longest output `exec` can turn into one string: Node's own string limit. */
const MAX_EXEC_OUTPUT = bufferConstants.MAX_STRING_LENGTH;

function checkSize(size: TerminalSize): TerminalSize {
  return {
    rows: checkInteger("size.rows", size?.rows, 1, 65535),
    cols: checkInteger("size.cols", size?.cols, 1, 65535),
  };
}

/** Ends the output streams when the process settles, however it settles (the why is `exit`). */
function settleStreams(ch: ProcessChannel, streams: readonly OutputStream[]): void {
  const end = () => streams.forEach((s) => s.end());
  ch.exit.then(end, end);
}

/** How long the guest may be silent before the lane pings it. */
const PING_AFTER_MS = 5000;
/** How long a probe after a host-side timeout waits for any word from the guest. */
const PROBE_MS = 5000;

/** How a lane is run (set by boot). */
export interface LaneOptions {
  /** How long `close()` lets the guest power off (and flush its disks) before killing it. */
  shutdownGraceMs?: number | undefined;
  /** The rootfs block store's failures, which make `close()` reject. */
  storeFailures?: BlockStoreFailures | undefined;
  /** `performance.now()` of the last block-store call that completed; `close()` waits while it advances. */
  storeProgress?: (() => number) | undefined;
  /** Silence from the guest after which the lane ends with SandboxUnresponsiveError. */
  livenessTimeoutMs?: number | undefined;
  /** How snapshots of this lane boot, or why it cannot be checkpointed. */
  snapshots?: { boot: SnapshotBooter; requires: () => Promise<SnapshotRequirements>; mounts: readonly SnapshotMount[] } | { refuse: string } | undefined;
  /** Auto-hibernate after this long without exec/spawn/pty/lane.fs activity (`boot({ idleTimeoutMs })`). */
  idleTimeoutMs?: number | undefined;
  /** Where the idle hibernation reports (`boot({ onEvent })`). */
  onEvent?: ((event: LaneEvent) => void) | undefined;
}

/**
 * A running microVM (`sandbox.boot()`), and what runs in it: `exec` (buffered),
 * `spawn` (streams), `pty` (a terminal), `forwardPort`. `close()` — or the end
 * of an `await using` scope — powers it off. Commands fail with typed errors;
 * a lane that ends on its own has the reason in `endError`.
 */
export class Lane implements AsyncDisposable {
  /** Backend and why it was chosen, image, hostname, pids, boot timings (frozen at boot). */
  readonly info: LaneInfo;
  /** The guest's files: read, write, list, stream (see {@link LaneFileSystem}). Served by init; works on any image. */
  readonly fs: LaneFileSystem;
  readonly #conn: HelperConnection;
  readonly #pending = new Set<ProcessChannel>();
  #nextChannel = 1;
  #closing: Promise<void> | undefined;
  #exited: Promise<void>;
  readonly #shutdownGraceMs: number;
  readonly #storeFailures: BlockStoreFailures | undefined;

  /** @internal Lanes come from `sandbox.boot()`. */
  constructor(
    conn: HelperConnection,
    info: LaneInfo,
    options: LaneOptions = {},
  ) {
    this.#conn = conn;
    this.#shutdownGraceMs = options.shutdownGraceMs ?? 5000;
    this.#storeFailures = options.storeFailures;
    this.#storeProgress = options.storeProgress;
    this.#snapshots = options.snapshots;
    this.info = Object.freeze(info);
    this.fs = new LaneFileSystem(() => {
      // Every file request is activity for the idle hibernation.
      this.#lastActivity = performance.now();
      return this.closed ? undefined : conn;
    });
    this.#livenessMs = options.livenessTimeoutMs ?? 30_000;
    this.#liveness = setInterval(() => this.#checkLiveness(), 1000);
    this.#liveness.unref?.();
    conn.once("exit", () => clearInterval(this.#liveness));
    if (options.idleTimeoutMs !== undefined) this.#watchIdle(options.idleTimeoutMs, options.onEvent);
    this.#exited = new Promise((resolve) => {
      if (conn.closed) resolve();
      conn.once("exit", (end: ConnectionEnd) => {
        const error = this.#endError(end);
        this.#endedWith = error;
        for (const p of [...this.#pending]) p.fail(error);
        this.#pending.clear();
        resolve();
      });
    });
  }

  /** Whether `close()` was called or the lane ended on its own (see `endError`). */
  get closed(): boolean {
    return this.#closing !== undefined || this.#conn.closed;
  }

  #endedWith: SandboxError | undefined;
  readonly #snapshots: LaneOptions["snapshots"];
  readonly #livenessMs: number;
  readonly #liveness: NodeJS.Timeout;
  readonly #storeProgress: (() => number) | undefined;
  #pingedAt = 0;
  /** `performance.now()` of the last process start or end or `lane.fs` request (idle hibernation). */
  #lastActivity = performance.now();

  /** Hibernates once no process ran or started for `idleMs`; reports through `onEvent`. */
  #watchIdle(idleMs: number, onEvent: ((event: LaneEvent) => void) | undefined): void {
    const report = (event: LaneEvent) => {
      try {
        onEvent?.(event);
      } catch {
        // An event hook that throws must not take the lane down.
      }
    };
    const timer = setInterval(() => {
      if (this.closed) return clearInterval(timer);
      const now = performance.now();
      // A running process (a long exec, an open pty) is activity.
      if (this.#pending.size > 0) this.#lastActivity = now;
      if (now - this.#lastActivity < idleMs) return;
      clearInterval(timer);
      this.hibernate().then(
        (snapshot) => report({ type: "hibernated", snapshot, idleMs }),
        (error: unknown) => report({ type: "hibernate-failed", error, idleMs }),
      );
    }, Math.min(1000, Math.max(100, idleMs / 10)));
    timer.unref?.();
    this.#conn.once("exit", () => clearInterval(timer));
  }

  /**
   * Pings a guest that has been silent for a while and ends the lane when it
   * stays silent past the liveness deadline: every frame from the guest
   * (output, exits, the answer to a ping) counts as a sign of life.
   */
  #checkLiveness(): void {
    const conn = this.#conn;
    if (conn.closed || this.#closing) return;
    const silent = performance.now() - conn.lastGuestFrameAt;
    if (silent > this.#livenessMs) {
      conn.fail(
        new SandboxUnresponsiveError(
          `the guest has not answered for ${Math.round(silent / 1000)} s (not even a liveness ping); the lane was ended. ` +
            "A guest kernel that hangs or a VMM that was stopped looks like this; raise boot({ livenessTimeoutMs }) for hosts this slow",
          conn.diagnostics,
        ),
      );
    } else if (silent > PING_AFTER_MS && performance.now() - this.#pingedAt > PING_AFTER_MS) {
      this.#pingedAt = performance.now();
      conn.send(Kind.Ping, 0);
    }
  }

  /** A command's timeout passed without word from the guest: give it a short while to show it is alive. */
  #probe(): void {
    const conn = this.#conn;
    const since = performance.now();
    conn.send(Kind.Ping, 0);
    const t = setTimeout(() => {
      if (!conn.closed && !this.#closing && conn.lastGuestFrameAt < since) {
        conn.fail(
          new SandboxUnresponsiveError(
            `a command's timeout passed with no word from the guest, which did not answer a ping within ${PROBE_MS} ms either; the lane was ended`,
            conn.diagnostics,
          ),
        );
      }
    }, PROBE_MS);
    t.unref?.();
  }

  /**
   * Why the lane ended, once it has: `undefined` while it runs or after a
   * plain `close()`; a `SandboxCrashedError` (or its subclass
   * `SandboxProtocolError`) when the VM or helper ended on its own.
   */
  get endError(): SandboxError | undefined {
    return this.#endedWith;
  }

  /** The error the lane's pending calls get when it ends. */
  #endError(end: ConnectionEnd): SandboxError {
    // A contract violation is the cause even when it happened during close().
    if (end.error) return end.error;
    if (this.#closing) return new LaneClosedError("the lane was closed while the command was running");
    const why = this.#conn.diagnostics.at(-1);
    return new SandboxCrashedError(
      `the sandbox VM ended unexpectedly${end.vmExit ? ` (VMM exit ${end.vmExit.exitCode ?? `signal ${end.vmExit.signal}`})` : ""}${why ? `; the helper's last diagnostic: ${why}` : ""}`,
      end.vmExit?.consoleTail,
      { diagnostics: this.#conn.diagnostics },
    );
  }

  /**
   * Forwards host connections to a guest listener: the helper listens on
   * 127.0.0.1 (`hostPort`, default any free port) and connects each client to
   * `guestPort` in the guest. The listener closes with the lane. Needs a
   * `network` policy on the sandbox (no network, no NIC to forward to).
   */
  forwardPort(guestPort: number, options: { hostPort?: number } = {}): Promise<{ host: "127.0.0.1"; port: number }> {
    const port = checkInteger("guestPort", guestPort, 1, 65535);
    const hostPort = checkInteger("hostPort", options.hostPort ?? 0, 0, 65535);
    if (this.closed) return Promise.reject(new LaneClosedError("forwardPort() on a closed lane"));
    return this.#conn.request("PortForward", { guestPort: port, hostPort }).then((reply) => {
      if (reply.status === "listening") return { host: "127.0.0.1" as const, port: reply.port };
      throw new PortForwardError(`cannot forward to guest port ${port}: ${reply.error}`);
    });
  }

  /**
   * Copies a tree into the guest: `source` is a host directory (packed with the
   * tar library, links kept as links) or a ReadableStream of tar bytes. Modes,
   * symbolic links, mtimes and empty directories are kept; `guestDir` is created
   * if missing. Entries leaving `guestDir` (absolute, `..`) or of other types
   * (hard links, devices) fail the call. Resolves with the bytes and entries moved.
   */
  upload(source: string | ReadableStream<Uint8Array>, guestDir: string, options: TransferOptions = {}): Promise<TransferProgress> {
    const dir = guestPath("guestDir", guestDir);
    return upload(() => (this.closed ? undefined : this.#conn), source, dir, options);
  }

  /** A guest file or tree as a tar ReadableStream (modes, mtimes, links as links, empty directories), read as it is consumed. */
  download(guestPath: string, options?: TransferOptions): ReadableStream<Uint8Array>;
  /**
   * Extracts a guest file or tree into `hostDir` (created if missing). Extraction
   * never leaves `hostDir`, never writes through a link and makes no link that points
   * outside it: such entries are listed in the result's `refused`.
   */
  download(guestPath: string, hostDir: string, options?: TransferOptions): Promise<TransferProgress>;
  download(path: string, hostDirOrOptions?: string | TransferOptions, maybeOptions: TransferOptions = {}): ReadableStream<Uint8Array> | Promise<TransferProgress> {
    const p = guestPath("guestPath", path);
    const link = () => (this.closed ? undefined : this.#conn);
    const options = typeof hostDirOrOptions === "string" ? maybeOptions : (hostDirOrOptions ?? {});
    const progress: TransferProgress = { bytes: 0, entries: 0 };
    const gen = tarOf(link, p, progress, options.onProgress);
    if (typeof hostDirOrOptions !== "string") return tarStream(gen);
    return extractInto(gen, hostDirOrOptions).then((refused) => ({ ...progress, refused }));
  }

  /** Runs a command to completion and returns its buffered output. */
  async exec(cmd: string, args: readonly string[] = [], options: ExecOptions = {}): Promise<ExecResult> {
    const req = startRequest(cmd, args, options, false);
    const maxOutput = checkInteger("maxOutputBytes", options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT, 0, MAX_EXEC_OUTPUT);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let total = 0;
    const ch = this.#open(options.signal, {
      onOutput: (stream, chunk) => {
        // exec buffers: credit goes back at once, the cap bounds memory instead.
        ch.grant(stream, chunk.length);
        total += chunk.length;
        if (total > maxOutput) {
          if (!ch.overrideError) {
            ch.overrideError = new OutputLimitError(maxOutput);
            ch.signal(SIGKILL);
          }
          return;
        }
        (stream === 0 ? out : err).push(chunk);
      },
    });
    ch.start({ ...req, window: EXEC_WINDOW }, options.signal);
    const exit = await ch.exit;
    return { ...exit, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
  }

  /**
   * Starts a long-lived process with streaming stdio. Output is flow-controlled:
   * a stream nobody reads eventually blocks the guest process, never host memory.
   * Read or cancel both `stdout` and `stderr`.
   */
  spawn(cmd: string, args: readonly string[] = [], options: SpawnOptions = {}): SandboxProcess {
    const req = startRequest(cmd, args, options, true);
    const streams = [new OutputStream((n) => ch.grant(0, n)), new OutputStream((n) => ch.grant(1, n))] as const;
    const ch = this.#open(options.signal, { onOutput: (s, chunk) => streams[s].push(chunk) });
    settleStreams(ch, streams);
    ch.start(req, options.signal);
    return {
      stdin: stdinStream(ch),
      stdout: streams[0].readable,
      stderr: streams[1].readable,
      ready: ch.ready,
      exit: ch.exit,
      kill: (signal = "SIGTERM") => ch.signal(signalNumber(signal)),
    };
  }

  /** Starts a process on a new pseudo-terminal (isatty, job control, ^C, SIGWINCH). */
  pty(cmd: string, args: readonly string[] = [], options: PtyOptions = {}): SandboxPty {
    const size = checkSize(options.size ?? { rows: 24, cols: 80 });
    const req = startRequest(cmd, args, { ...options, env: { TERM: "xterm-256color", ...options.env } }, true);
    const output = new OutputStream((n) => ch.grant(0, n));
    const ch = this.#open(options.signal, { onOutput: (_s, chunk) => output.push(chunk) });
    settleStreams(ch, [output]);
    ch.start({ ...req, pty: size }, options.signal);
    return {
      input: stdinStream(ch),
      output: output.readable,
      resize: (next) => ch.resize(checkSize(next)),
      ready: ch.ready,
      exit: ch.exit,
      kill: (signal = "SIGHUP") => ch.signal(signalNumber(signal)),
    };
  }

  #open(signal: AbortSignal | undefined, hooks: ChannelHooks): ProcessChannel {
    if (this.closed) throw new LaneClosedError();
    if (signal?.aborted) throw abortError(signal);
    const ch = new ProcessChannel(this.#conn, this.#allocChannel(), {
      ...hooks,
      onSettled: () => {
        this.#pending.delete(ch);
        this.#lastActivity = performance.now();
      },
      onHostTimeout: () => this.#probe(),
    });
    this.#pending.add(ch);
    this.#lastActivity = performance.now();
    return ch;
  }

  /**
   * Captures the running lane — guest memory, CPU and device state, the
   * root disk at that instant — into a snapshot; the lane and its processes
   * keep running (the guest pauses for `stats.pausedMs`). Boot the snapshot
   * any number of times (`snapshot.boot()`): each boot is an independent fork.
   * A `rootfs.cow` root's store is pinned: until the snapshot holds every
   * block the store held, the lane's writes stay in memory (a write past
   * `maxDirtyBytes`, or a sync, waits). Rejects with SandboxSnapshotError when
   * this lane cannot be captured (krun: a network policy, mounts, a writable
   * root). On qemu, mounts are unplugged for the capture and come back at the
   * same paths: files and working directories a process had open on a mount
   * fail with ENOTCONN afterwards; paths opened anew work (docs/api.md).
   */
  async checkpoint(options: CheckpointOptions = {}): Promise<SandboxSnapshot> {
    if (this.closed) throw this.#endedWith ?? new LaneClosedError();
    const snaps = this.#snapshots;
    if (!snaps || "refuse" in snaps) throw new SandboxSnapshotError(`this lane cannot be checkpointed: ${snaps?.refuse ?? "its backend has no snapshots"}`);
    const started = performance.now();
    const dir = await snapshotDir(options.dir);
    // Before the capture: a snapshot whose checkpoint succeeded always says which mounts it needs.
    if (snaps.mounts.length > 0) await writeSnapshotMounts(dir, snaps.mounts);
    const reply = await this.#conn.request("Checkpoint", { dir }).catch(async (err: unknown) => {
      if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
      throw err;
    });
    if (reply.status === "failed") {
      if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
      throw new SandboxSnapshotError(`the checkpoint failed: ${reply.error}`);
    }
    const stats = { pausedMs: reply.pausedMs, ramBytes: reply.ramBytes, diskBytes: reply.diskBytes, totalMs: performance.now() - started };
    return new SandboxSnapshot(dir, stats, this.info.hostname, snaps.boot, snaps.requires);
  }

  /**
   * Checkpoints the lane, then powers it off: the snapshot is how it wakes
   * (`snapshot.boot()`).
   */
  async hibernate(options: CheckpointOptions = {}): Promise<SandboxSnapshot> {
    const snap = await this.checkpoint(options);
    await this.close();
    return snap;
  }

  /**
   * Powers the VM off and waits until its processes are gone. Running
   * commands reject with LaneClosedError. Safe to call more than once.
   * With a `rootfs.cow` root it resolves once the store holds every block and
   * `flush()` returned; if any store call failed during the run it rejects
   * (after the VM is gone) with the first `BlockStoreError`, whose `failures`
   * counts them all: the store may lack some of the guest's writes.
   */
  close(): Promise<void> {
    if (!this.#closing) {
      this.#closing = (async () => {
        if (!this.#conn.closed) {
          this.#conn.send(Kind.Shutdown, 0);
          // The VM gets `shutdownGraceMs` to power off — counted from the last
          // store call that succeeded, for a durable root still writing back.
          // Once a store call failed (after its retries) the root cannot end
          // clean and close() will reject: the VM gets a last second, no more.
          const progress = this.#storeProgress;
          const failuresBefore = this.#storeFailures?.count ?? 0;
          const started = performance.now();
          let failedAt: number | undefined;
          const watchdog = setInterval(() => {
            const now = performance.now();
            if (failedAt === undefined && (this.#storeFailures?.count ?? 0) > failuresBefore) failedAt = now;
            const since = now - Math.max(started, progress?.() ?? 0);
            if (since > this.#shutdownGraceMs || (failedAt !== undefined && now - failedAt > 1000)) this.#conn.kill();
          }, 250);
          await this.#exited;
          clearInterval(watchdog);
          // The helper may linger a moment after the socket closes; make sure it is gone.
          this.#conn.kill();
        }
        const failed = this.#storeFailures?.first;
        if (failed) throw failed;
      })();
    }
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #allocChannel(): number {
    const ch = this.#nextChannel;
    this.#nextChannel = ch >= 0x7fff_ffff ? 1 : ch + 1;
    return ch;
  }
}
