/**
 * `lane.fs.watch`: inotify in the guest, served by init, as an async
 * iterable. Bounded end to end: init holds at most `maxQueued` events
 * (repeats coalesced) and says `overflow` when it had to drop some; it sends
 * only within the event credit granted here, and credit is granted only as
 * the iterator is consumed — a consumer that stops reading costs the host at
 * most one window of events and ends up with an `overflow`, never silent loss.
 */
import { LaneClosedError, SandboxConfigError, SandboxFileSystemError } from "../errors.js";
import type { HelperConnection } from "../helper-connection.js";
import { ContractViolation, decodeJson, Kind, WIRE, type WatchEventType } from "../protocol/contract.js";
import { checkInteger } from "../validate.js";
import type { FileLink } from "./requests.js";

/** Events the guest may send ahead of the consumer. */
const WINDOW = 256;
/** Events init holds for a watch by default before it reports `overflow`. */
const DEFAULT_QUEUE = 4096;

/** What happened: `create`, `modify`, `delete`, `rename` (either side of a move), or `overflow` (events were lost). */
export type GuestWatchEventType = WatchEventType;

/** One change under a watched path. */
export interface GuestWatchEvent {
  type: GuestWatchEventType;
  /** The absolute guest path that changed (for `overflow`, the watched path). */
  path: string;
}

/** Options of `lane.fs.watch`. */
export interface WatchOptions {
  /** Watch every directory below the path too, including directories made later. Default false. */
  recursive?: boolean;
  /** Ends the watch (the iteration finishes cleanly). */
  signal?: AbortSignal;
  /** Events the guest holds before it drops them and reports `overflow`. Default 4096 (1 to 65536). */
  maxQueued?: number;
}

/**
 * A running watch: iterate it with `for await`; `break` (or `return()`), the
 * `signal`, `close()` or the lane's end finish the iteration without an error.
 */
export class GuestWatcher implements AsyncIterableIterator<GuestWatchEvent> {
  /** Resolves once the guest watches (changes from then on are reported); rejects like the iteration when it cannot start. */
  readonly ready: Promise<void>;
  readonly #path: string;
  readonly #conn: HelperConnection | undefined;
  readonly #id: number | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #events: GuestWatchEvent[] = [];
  #consumed = 0;
  #ended = false;
  #error: Error | undefined;
  #armed!: { resolve: () => void; reject: (e: Error) => void };
  #waiter: { resolve: (r: IteratorResult<GuestWatchEvent>) => void; reject: (e: Error) => void } | undefined;
  /** The lane's end finishes the iteration cleanly; only `ready` says the watch never started. */
  readonly #onExit = () => this.#finish(undefined, new LaneClosedError("the lane ended before lane.fs.watch() started"));
  readonly #onAbort = () => void this.close();
  #armedYet = false;

  /** @internal `lane.fs.watch()` makes these. */
  constructor(link: FileLink, path: string, options: WatchOptions) {
    this.#path = path;
    this.ready = new Promise<void>((resolve, reject) => (this.#armed = { resolve, reject }));
    // Nobody has to await `ready`: its rejection is the iteration's too.
    this.ready.catch(() => {});
    const maxQueued = checkInteger("maxQueued", options.maxQueued ?? DEFAULT_QUEUE, 1, WIRE.maxWatchQueue);
    const signal = options.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new SandboxConfigError("signal must be an AbortSignal");
    this.#signal = signal;
    this.#conn = link();
    if (!this.#conn || this.#conn.closed) {
      this.#finish(new LaneClosedError("lane.fs.watch() on a closed lane"));
      return;
    }
    if (signal?.aborted) {
      this.#finish(undefined);
      return;
    }
    this.#conn.once("exit", this.#onExit);
    signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#id = this.#conn.watch({ path, recursive: options.recursive === true, window: WINDOW, maxQueued }, (kind, payload) => this.#frame(kind, payload));
  }

  #frame(kind: number, payload: Buffer): void {
    const id = this.#id ?? 0;
    if (kind === Kind.Watching) {
      this.#armedYet = true;
      this.#armed.resolve();
    } else if (kind === Kind.WatchEvents) {
      const { events } = decodeJson("WatchEvents", payload, id);
      if (this.#ended) return;
      if (this.#events.length + events.length > WINDOW) throw new ContractViolation(kind, id, `${this.#events.length + events.length} watch events outstanding; the window is ${WINDOW}`);
      for (const e of events) this.#events.push({ type: e.type, path: e.path });
      this.#wake();
    } else if (kind === Kind.WatchEnd) {
      const end = decodeJson("WatchEnd", payload, id);
      this.#finish(end.reason === "error" ? new SandboxFileSystemError(end.code, end.errno, "watch", this.#path) : undefined);
    }
  }

  #wake(): void {
    const w = this.#waiter;
    if (!w) return;
    const event = this.#events.shift();
    if (event) {
      this.#waiter = undefined;
      this.#took();
      w.resolve({ value: event, done: false });
    } else if (this.#ended) {
      this.#waiter = undefined;
      if (this.#error) w.reject(this.#takeError());
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** One event consumed: credit back half a window at a time. */
  #took(): void {
    if (++this.#consumed < WINDOW / 2 || this.#ended || this.#id === undefined) return;
    this.#conn?.sendJson("WatchCredit", this.#id, { events: this.#consumed });
    this.#consumed = 0;
  }

  #takeError(): Error {
    const e = this.#error!;
    this.#error = undefined;
    return e;
  }

  /** The watch is over: events already here are still delivered, then `done` (or the error, once). */
  #finish(error: Error | undefined, notStarted: Error | undefined = error): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    // Ended before the guest armed it: by an error or the lane's end (rejects), or by close() (nothing to wait for).
    if (!this.#armedYet) {
      if (notStarted) this.#armed.reject(notStarted);
      else this.#armed.resolve();
    }
    this.#conn?.off("exit", this.#onExit);
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#wake();
  }

  /** The next event; `done` once the watch ended (rejects once if it ended with an error). */
  next(): Promise<IteratorResult<GuestWatchEvent>> {
    const event = this.#events.shift();
    if (event) {
      this.#took();
      return Promise.resolve({ value: event, done: false });
    }
    if (this.#ended) return this.#error ? Promise.reject(this.#takeError()) : Promise.resolve({ value: undefined, done: true });
    if (this.#waiter) return Promise.reject(new SandboxConfigError("lane.fs.watch(): next() called again before the previous call resolved"));
    return new Promise((resolve, reject) => (this.#waiter = { resolve, reject }));
  }

  /** Stops the watch (what `break` in `for await` calls). */
  async return(): Promise<IteratorResult<GuestWatchEvent>> {
    await this.close();
    return { value: undefined, done: true };
  }

  /** Stops the watch in the guest; pending and later `next()` calls finish with `done`. */
  async close(): Promise<void> {
    if (this.#ended) return;
    this.#events.length = 0;
    if (this.#id !== undefined && this.#conn && !this.#conn.closed) this.#conn.send(Kind.WatchStop, this.#id);
    this.#finish(undefined);
  }

  /** The watcher is its own iterator (one consumer). */
  [Symbol.asyncIterator](): this {
    return this;
  }
}
