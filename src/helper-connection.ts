/**
 * One helper process and its control socket: frame I/O, routing of guest
 * frames to per-channel handlers, and helper lifecycle events.
 */
import { Socket } from "node:net";
import { EventEmitter } from "node:events";
import { encodeFrame, encodeJson, FrameDecoder, Kind, type Frame } from "./protocol/frames.js";
import type { NativeAddon } from "../native/index.js";

export type ChannelHandler = (frame: Frame) => void;

export interface VmExit {
  exitCode: number | null;
  signal: number | null;
  consoleTail: string;
}

/**
 * Events: `control` (frame on channel 0), `blockRequest` (a BlockRequest frame), `fsRequest` (an FsRequest frame),
 * `netRequest` / `netAudit` / `portForwarded` (network frames), `exit` (VmExit | undefined, once,
 * when the helper/VM is gone for whatever reason), `error` is never emitted:
 * failures arrive as `exit` with the helper's message in `helperError`.
 */
export class HelperConnection extends EventEmitter {
  readonly pid: number;
  readonly #socket: Socket;
  readonly #decoder = new FrameDecoder();
  readonly #channels = new Map<number, ChannelHandler>();
  #closed = false;
  vmExit: VmExit | undefined;
  helperError: string | undefined;

  constructor(native: NativeAddon, helperPath: string) {
    super();
    const stderrFd = process.env.SANDBOX_DEBUG ? 2 : -1;
    const handle = native.spawnHelper(helperPath, [], stderrFd);
    this.pid = handle.pid;
    this.#socket = new Socket({ fd: handle.fd, readable: true, writable: true });
    this.#socket.setNoDelay?.(true);
    this.#socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    this.#socket.on("error", () => this.#finish());
    this.#socket.on("close", () => this.#finish());
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(kind: Kind, channel: number, payload?: Uint8Array): boolean {
    if (this.#closed) return false;
    this.#socket.write(encodeFrame(kind, channel, payload));
    return true;
  }

  sendJson(kind: Kind, channel: number, body: unknown): boolean {
    if (this.#closed) return false;
    this.#socket.write(encodeJson(kind, channel, body));
    return true;
  }

  onChannel(channel: number, handler: ChannelHandler): void {
    this.#channels.set(channel, handler);
  }

  offChannel(channel: number): void {
    this.#channels.delete(channel);
  }

  /** Ends the helper now: SIGKILL takes the VMM with it (PDEATHSIG). */
  kill(): void {
    try {
      process.kill(this.pid, "SIGKILL");
    } catch {
      // already gone
    }
    this.#socket.destroy();
  }

  #onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.helperError = `corrupt frame from the helper: ${(err as Error).message}`;
      this.kill();
      return;
    }
    for (const frame of frames) {
      if (frame.kind === Kind.VmExited) {
        this.vmExit = JSON.parse(frame.payload.toString("utf8")) as VmExit;
      } else if (frame.kind === Kind.HelperError) {
        this.helperError = (JSON.parse(frame.payload.toString("utf8")) as { message: string }).message;
      } else if (frame.kind === Kind.BlockRequest) {
        this.emit("blockRequest", frame);
      } else if (frame.kind === Kind.NetRequest) {
        this.emit("netRequest", frame);
      } else if (frame.kind === Kind.NetAudit) {
        this.emit("netAudit", frame);
      } else if (frame.kind === Kind.PortForwarded) {
        this.emit("portForwarded", frame);
      } else if (frame.kind === Kind.FsRequest) {
        this.emit("fsRequest", frame);
      } else if (frame.channel === 0 || frame.kind >= 0x80) {
        this.emit("control", frame);
      } else {
        this.#channels.get(frame.channel)?.(frame);
      }
    }
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#socket.destroy();
    this.emit("exit", this.vmExit);
  }
}
