/** A running sandbox instance and the processes it runs. */
import { abortError, LaneClosedError, OutputLimitError, ProcessStartError, SandboxCrashedError } from "./errors.js";
import type { HelperConnection } from "./helper-connection.js";
import { Kind, type Frame } from "./protocol/frames.js";
import { checkAbsolutePath, checkArgv, checkEnv, checkInteger } from "./validate.js";

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

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** Signal number that ended the process, if any. */
  signal: number | null;
  timedOut: boolean;
}

const SIGKILL = 9;
const DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024;

interface Pending {
  fail(err: Error): void;
}

export class Lane implements AsyncDisposable {
  readonly info: LaneInfo;
  readonly #conn: HelperConnection;
  readonly #pending = new Set<Pending>();
  #nextChannel = 1;
  #closing: Promise<void> | undefined;
  #exited: Promise<void>;

  constructor(conn: HelperConnection, info: LaneInfo) {
    this.#conn = conn;
    this.info = Object.freeze(info);
    this.#exited = new Promise((resolve) => {
      if (conn.closed) resolve();
      conn.once("exit", () => {
        const crashed = !this.#closing;
        for (const p of this.#pending) {
          p.fail(
            crashed
              ? new SandboxCrashedError(
                  `the sandbox VM ended unexpectedly${conn.helperError ? `: ${conn.helperError}` : ""}`,
                  conn.vmExit?.consoleTail,
                )
              : new LaneClosedError("the lane was closed while the command was running"),
          );
        }
        this.#pending.clear();
        resolve();
      });
    });
  }

  get closed(): boolean {
    return this.#closing !== undefined || this.#conn.closed;
  }

  /** Runs a command to completion and returns its buffered output. */
  exec(cmd: string, args: readonly string[] = [], options: ExecOptions = {}): Promise<ExecResult> {
    let argv: string[];
    let start: Record<string, unknown>;
    let maxOutput: number;
    try {
      argv = checkArgv(cmd, args);
      start = {
        argv,
        env: checkEnv("env", options.env),
        cwd: options.cwd === undefined ? undefined : checkAbsolutePath("cwd", options.cwd),
        timeoutMs: options.timeoutMs === undefined ? undefined : checkInteger("timeoutMs", options.timeoutMs, 1, 2 ** 31),
        stdin: false,
      };
      maxOutput = checkInteger("maxOutputBytes", options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT, 0, 2 ** 32);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.closed) return Promise.reject(new LaneClosedError());
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal));

    const channel = this.#allocChannel();
    const conn = this.#conn;
    return new Promise<ExecResult>((resolve, reject) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let total = 0;
      let aborted = false;
      let overLimit = false;
      const finish = (fn: () => void) => {
        conn.offChannel(channel);
        signal?.removeEventListener("abort", onAbort);
        this.#pending.delete(pending);
        fn();
      };
      const pending: Pending = { fail: (e) => finish(() => reject(e)) };
      const onAbort = () => {
        aborted = true;
        conn.sendJson(Kind.Signal, channel, { signal: SIGKILL });
      };
      conn.onChannel(channel, (frame: Frame) => {
        switch (frame.kind) {
          case Kind.Stdout:
          case Kind.Stderr:
            total += frame.payload.length;
            if (total > maxOutput) {
              if (!overLimit) {
                overLimit = true;
                conn.sendJson(Kind.Signal, channel, { signal: SIGKILL });
              }
              return;
            }
            (frame.kind === Kind.Stdout ? out : err).push(frame.payload);
            return;
          case Kind.StartFailed: {
            const f = JSON.parse(frame.payload.toString("utf8")) as { code: string; message: string };
            finish(() => reject(new ProcessStartError(f.code, f.message)));
            return;
          }
          case Kind.Exit: {
            const e = JSON.parse(frame.payload.toString("utf8")) as { exitCode: number; signal: number | null; timedOut: boolean };
            finish(() => {
              if (aborted && signal) reject(abortError(signal));
              else if (overLimit) reject(new OutputLimitError(maxOutput));
              else
                resolve({
                  exitCode: e.exitCode,
                  signal: e.signal,
                  timedOut: e.timedOut,
                  stdout: Buffer.concat(out).toString("utf8"),
                  stderr: Buffer.concat(err).toString("utf8"),
                });
            });
            return;
          }
        }
      });
      this.#pending.add(pending);
      signal?.addEventListener("abort", onAbort, { once: true });
      conn.sendJson(Kind.Start, channel, start);
    });
  }

  /**
   * Powers the VM off and waits until its processes are gone. Running
   * commands reject with LaneClosedError. Safe to call more than once.
   */
  close(): Promise<void> {
    if (!this.#closing) {
      this.#closing = (async () => {
        if (!this.#conn.closed) {
          this.#conn.send(Kind.Shutdown, 0);
          const timer = setTimeout(() => this.#conn.kill(), 5000);
          await this.#exited;
          clearTimeout(timer);
          // The helper may linger a moment after the socket closes; make sure it is gone.
          this.#conn.kill();
        }
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
