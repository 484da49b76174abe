/**
 * The per-process channel machinery shared by exec, spawn and pty: start
 * handshake, flow-controlled output (the guest may only send what the host
 * granted), acknowledged stdin, signals, resize and exit.
 */
import { abortError, describeValue, ProcessStartError, SandboxConfigError } from "./errors.js";
import type { HelperConnection } from "./helper-connection.js";
import { ContractViolation, decodeJson, Kind, WIRE, type Start } from "./protocol/contract.js";

/** How a command ended. */
export interface ProcessExit {
  /** Exit status; 128+N when killed by signal N; 124 after a timeout. */
  exitCode: number;
  /** Signal number that ended the process, if any. */
  signal: number | null;
  timedOut: boolean;
  /** The guest kernel's OOM killer ended the command (exit code 137): raise `resources.workloadMemoryMiB` or `memoryMiB`. */
  oomKilled: boolean;
}

/** A terminal's size in character cells. */
export interface TerminalSize {
  rows: number;
  cols: number;
}

/**
 * How long past `timeoutMs` the host waits for the guest to report the
 * timed-out command's end before settling it itself (exit code 124) and
 * checking that the guest still answers.
 */
export const HOST_TIMEOUT_GRACE_MS = 1500;

/** Output window per stream the guest starts with. */
export const OUTPUT_WINDOW = WIRE.defaultWindow;
/** Stdin bytes in flight before the guest acknowledges them. */
export const STDIN_WINDOW = WIRE.stdinWindow;
const STDIN_CHUNK = 64 * 1024;

/** Linux signal numbers (the guest is always Linux, whatever the host is). */
const SIGNALS: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8,
  SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15,
  SIGCHLD: 17, SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22, SIGWINCH: 28,
};

export function signalNumber(signal: string | number): number {
  if (typeof signal === "number" && Number.isInteger(signal) && signal >= 1 && signal <= 64) return signal;
  const n = typeof signal === "string" ? SIGNALS[signal.toUpperCase()] : undefined;
  if (n === undefined) throw new SandboxConfigError(`unknown signal ${describeValue(signal)}; use a name like "SIGTERM" or a number 1-64`);
  return n;
}

export type StartRequest = Start;

export interface ChannelHooks {
  /** Output chunk; whoever consumes it returns credit with `grant`. */
  onOutput(stream: 0 | 1, chunk: Buffer): void;
  /** Called once with the final outcome (exit, start failure, lane failure). */
  onSettled?(): void;
  /**
   * A command's timeout passed and the guest did not report its end within
   * the grace: it was settled on the host; the lane should check the guest.
   */
  onHostTimeout?(): void;
}

/** One guest process seen from the host. */
export class ProcessChannel {
  readonly ready: Promise<{ pid: number }>;
  readonly exit: Promise<ProcessExit>;
  readonly #conn: HelperConnection;
  readonly #channel: number;
  readonly #hooks: ChannelHooks;
  #resolveReady!: (v: { pid: number }) => void;
  #rejectReady!: (e: Error) => void;
  #resolveExit!: (v: ProcessExit) => void;
  #rejectExit!: (e: Error) => void;
  #stdinCredit = STDIN_WINDOW;
  #creditWaiters: Array<() => void> = [];
  #settled = false;
  #started = false;
  #pty = false;
  /** Output bytes the guest may still send per stream: what was granted minus what arrived. */
  readonly #window = [0, 0];
  #hostDeadline: NodeJS.Timeout | undefined;
  /** Set when output should be rejected instead of the normal exit (e.g. output limit). */
  overrideError: Error | undefined;

  constructor(conn: HelperConnection, channel: number, hooks: ChannelHooks) {
    this.#conn = conn;
    this.#channel = channel;
    this.#hooks = hooks;
    this.ready = new Promise((res, rej) => {
      this.#resolveReady = res;
      this.#rejectReady = rej;
    });
    this.exit = new Promise((res, rej) => {
      this.#resolveExit = res;
      this.#rejectExit = rej;
    });
    // Callers may await only one of the two; neither should crash the process.
    this.ready.catch(() => {});
    this.exit.catch(() => {});
    conn.onChannel(channel, (kind, payload) => this.#onFrame(kind, payload));
  }

  get settled(): boolean {
    return this.#settled;
  }

  start(req: StartRequest, signal?: AbortSignal): void {
    if (signal) {
      // An abort settles at once on the host: the guest kills the group, and
      // nothing waits for it to say so (a wedged guest must not hold it up).
      const onAbort = () => {
        this.signal(9);
        this.fail(abortError(signal));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.exit.finally(() => signal.removeEventListener("abort", onAbort)).catch(() => {});
    }
    if (req.timeoutMs !== undefined && req.timeoutMs !== null) {
      // The guest enforces the timeout (124); the host makes sure it settles even if the guest cannot.
      this.#hostDeadline = setTimeout(() => this.#hostTimeout(), req.timeoutMs + HOST_TIMEOUT_GRACE_MS);
      this.#hostDeadline.unref?.();
    }
    const window = req.window ?? OUTPUT_WINDOW;
    this.#window[0] = window;
    this.#window[1] = window;
    this.#pty = req.pty !== undefined && req.pty !== null;
    this.#conn.sendJson("Start", this.#channel, req);
  }

  /** Returns output credit to the guest after the host consumed `bytes` of a stream. */
  grant(stream: 0 | 1, bytes: number): void {
    if (this.#settled || bytes <= 0) return;
    this.#window[stream]! += bytes;
    this.#conn.sendJson("Credit", this.#channel, stream === 0 ? { stdout: bytes } : { stderr: bytes });
  }

  signal(sig: number): void {
    if (!this.#settled) this.#conn.sendJson("Signal", this.#channel, { signal: sig });
  }

  resize(size: TerminalSize): void {
    if (!this.#settled) this.#conn.sendJson("Resize", this.#channel, size);
  }

  /** Sends stdin respecting the guest's acknowledgement window. After exit, data is discarded. */
  async writeStdin(bytes: Uint8Array): Promise<void> {
    for (let off = 0; off < bytes.length; off += STDIN_CHUNK) {
      const piece = bytes.subarray(off, Math.min(bytes.length, off + STDIN_CHUNK));
      while (!this.#settled && this.#stdinCredit < piece.length) {
        await new Promise<void>((r) => this.#creditWaiters.push(r));
      }
      if (this.#settled) return;
      this.#stdinCredit -= piece.length;
      this.#conn.send(Kind.Stdin, this.#channel, piece);
    }
  }

  closeStdin(): void {
    if (!this.#settled) this.#conn.send(Kind.StdinEof, this.#channel);
  }

  /** Ends the channel from the host side (lane closed or crashed). */
  fail(err: Error): void {
    if (this.#settled) return;
    this.#settle();
    this.#rejectReady(err);
    this.#rejectExit(err);
  }

  #hostTimeout(): void {
    if (this.#settled) return;
    this.signal(9);
    this.#settle();
    this.#rejectReady(new ProcessStartError("ETIMEDOUT", "the command timed out before the guest reported it started"));
    this.#resolveExit({ exitCode: 124, signal: null, timedOut: true, oomKilled: false });
    this.#hooks.onHostTimeout?.();
  }

  #settle(): void {
    this.#settled = true;
    clearTimeout(this.#hostDeadline);
    this.#conn.offChannel(this.#channel);
    for (const w of this.#creditWaiters.splice(0)) w();
    this.#hooks.onSettled?.();
  }

  /**
   * One frame of this process. Payloads are validated by the contract's
   * decoders, and output must stay within the credit granted: a guest that
   * breaks either throws a ContractViolation, which ends the lane.
   */
  #onFrame(kind: number, payload: Buffer): void {
    const violation = (reason: string) => new ContractViolation(kind, this.#channel, reason);
    switch (kind) {
      case Kind.Started: {
        const { pid } = decodeJson("Started", payload, this.#channel);
        if (this.#started) throw violation("the process was already started");
        this.#started = true;
        this.#resolveReady({ pid });
        return;
      }
      case Kind.StartFailed: {
        const f = decodeJson("StartFailed", payload, this.#channel);
        if (this.#started) throw violation("the process was already started");
        const err = new ProcessStartError(f.code, f.message);
        this.#settle();
        this.#rejectReady(err);
        this.#rejectExit(err);
        return;
      }
      case Kind.Stdout:
      case Kind.Stderr: {
        const stream = kind === Kind.Stdout ? 0 : 1;
        if (!this.#started) throw violation("output before the process started");
        if (stream === 1 && this.#pty) throw violation("a pty process has no separate stderr");
        if (payload.length > this.#window[stream]!) {
          throw violation(`${payload.length} bytes of output, but only ${this.#window[stream]} were granted`);
        }
        this.#window[stream]! -= payload.length;
        this.#hooks.onOutput(stream, payload);
        return;
      }
      case Kind.StdinAck: {
        const { bytes } = decodeJson("StdinAck", payload, this.#channel);
        if (this.#stdinCredit + bytes > STDIN_WINDOW) throw violation(`acknowledges ${bytes} stdin bytes that were never sent`);
        this.#stdinCredit += bytes;
        for (const w of this.#creditWaiters.splice(0)) w();
        return;
      }
      case Kind.Exit: {
        const e = decodeJson("Exit", payload, this.#channel);
        if (!this.#started) throw violation("exit of a process that never started");
        this.#settle();
        if (this.overrideError) this.#rejectExit(this.overrideError);
        else this.#resolveExit({ exitCode: e.exitCode, signal: e.signal ?? null, timedOut: e.timedOut, oomKilled: e.oomKilled ?? false });
        return;
      }
      default:
        throw violation("not a process frame");
    }
  }
}

/**
 * A ReadableStream fed by guest output. It always ends by closing — after the
 * process exited, failed to start, or the lane ended — never by erroring:
 * why the process ended is what `exit` says. So `child.stdout.pipeTo(…)`
 * without a handler cannot become an unhandled rejection. Chunks are handed to the reader one
 * pull at a time and credit goes back to the guest only as the reader takes
 * them, so a reader that stops reading stops the guest process (its pipe
 * fills) instead of growing host memory. Cancelling discards output and keeps
 * granting, so the process can finish.
 */
export class OutputStream {
  readonly readable: ReadableStream<Uint8Array>;
  readonly #queue: Buffer[] = [];
  readonly #grant: (bytes: number) => void;
  #ended = false;
  #discard = false;
  #wake: (() => void) | undefined;

  constructor(grant: (bytes: number) => void) {
    this.#grant = grant;
    this.readable = new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          while (this.#queue.length === 0 && !this.#ended) {
            await new Promise<void>((r) => (this.#wake = r));
          }
          const chunk = this.#queue.shift();
          if (chunk) {
            controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
            this.#grant(chunk.length);
          } else controller.close();
        },
        cancel: () => {
          this.#discard = true;
          const pending = this.#queue.splice(0).reduce((n, c) => n + c.length, 0);
          this.#grant(pending);
        },
      },
      { highWaterMark: 0 },
    );
  }

  push(chunk: Buffer): void {
    if (this.#discard) {
      this.#grant(chunk.length);
      return;
    }
    this.#queue.push(chunk);
    this.#wakeReader();
  }

  end(): void {
    this.#ended = true;
    this.#wakeReader();
  }

  #wakeReader(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

/** The stdin WritableStream of a process: chunks go out as the guest acknowledges room. */
export function stdinStream(ch: ProcessChannel): WritableStream<Uint8Array> {
  return new WritableStream<Uint8Array>({
    write: (chunk) => {
      if (!(chunk instanceof Uint8Array)) {
        throw new SandboxConfigError(`stdin takes bytes (Uint8Array, e.g. new TextEncoder().encode(text)), got ${describeValue(chunk)}`);
      }
      return ch.writeStdin(chunk);
    },
    close: () => ch.closeStdin(),
    abort: () => ch.closeStdin(),
  });
}
