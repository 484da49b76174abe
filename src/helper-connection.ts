/**
 * One helper process and its control socket: frame I/O, the contract check
 * of every frame the helper sends, and routing — handshake frames to the boot,
 * process frames to their channel, requests to the service that serves them,
 * replies to the request that waits for them.
 *
 * Nothing a frame contains can throw into Node's event loop: every frame is
 * handled inside one guard, and a frame that breaks the contract ends this
 * lane (the helper is killed, which takes its VMM) with a SandboxProtocolError
 * that names the frame and the offence. Other lanes are not affected.
 */
import { Socket } from "node:net";
import { EventEmitter } from "node:events";
import { describeThrown, LaneClosedError, SandboxCrashedError, SandboxError, SandboxProtocolError, type ProtocolOffender } from "./errors.js";
import { encodeFrame, FrameDecoder, FrameError, type Frame } from "./protocol/frames.js";
import {
  ContractViolation,
  decodeFramed,
  decodeJson,
  describeKind,
  encodeFramed,
  encodeJson,
  Kind,
  kindInfo,
  type Diagnostic,
  type HelperError,
  type KindMessages,
  type KindName,
  type NetAudit,
  type VmExited,
} from "./protocol/contract.js";
import type { NativeAddon } from "./native-addon.js";

/** Process frames of one channel: kind and raw payload (the channel's owner decodes it). */
export type ChannelHandler = (kind: number, payload: Buffer) => void;

/** Kinds of the requests the helper makes of Node. */
export type RequestKind = "BlockRequest" | "NetRequest" | "FsRequest";

/** Serves one kind of request from the helper; the reply goes back on the request's id. */
export interface RequestService<K extends RequestKind> {
  /** One valid request. A rejection is treated like `malformed` (and reported). */
  handle(request: KindMessages[K], bytes: Buffer, id: number): void | Promise<void>;
  /** Answers a request that could not be decoded, so the helper's call fails at once (EIO, deny). */
  malformed(id: number, reason: string): void;
  /** FsRequest only: the guest kernel dropped references to a node (FsForget, no answer). */
  forget?(msg: KindMessages["FsForget"]): void;
}

/** What the helper reported about itself, as a lane event. */
export type LaneDiagnostic = Diagnostic;

/** Handshake frames, decoded. */
export type ControlFrame =
  | { kind: "Launched"; msg: KindMessages["Launched"] }
  | { kind: "Hello"; msg: KindMessages["Hello"] }
  | { kind: "Ready"; msg: KindMessages["Ready"] }
  | { kind: "InitError"; msg: KindMessages["InitError"] }
  | { kind: "Resumed"; msg: KindMessages["Resumed"] };

/** The reply kind of each request Node makes of the helper. */
interface RequestReplies {
  PortForward: "PortForwarded";
  Checkpoint: "Checkpointed";
}
const REQUEST_REPLIES: { readonly [K in keyof RequestReplies]: RequestReplies[K] } = { PortForward: "PortForwarded", Checkpoint: "Checkpointed" };

/** How the connection ended. */
export interface ConnectionEnd {
  /** Why, when it was not a plain exit of the VM (power-off, or a crash the lane words itself). */
  error: SandboxError | undefined;
  vmExit: VmExited | undefined;
  helperError: HelperError | undefined;
}

/** Diagnostics kept for the error a lane may end with. */
const KEEP_DIAGNOSTICS = 20;

/**
 * Events: `control` (ControlFrame), `diagnostic` (LaneDiagnostic), `netAudit`
 * (NetAudit), `exit` (ConnectionEnd, once, when the helper/VM is gone for
 * whatever reason). `error` is never emitted.
 */
export class HelperConnection extends EventEmitter {
  readonly pid: number;
  readonly #socket: Socket;
  readonly #decoder = new FrameDecoder();
  readonly #channels = new Map<number, ChannelHandler>();
  /** `lane.fs.watch` watches by id (ids shared with requests, apart from process channels). */
  readonly #watches = new Map<number, ChannelHandler>();
  readonly #services = new Map<number, RequestService<RequestKind>>();
  readonly #waiting = new Map<number, { reply: KindName; resolve: (msg: unknown) => void; reject: (err: Error) => void }>();
  readonly #diagnostics: string[] = [];
  #nextRequest = 1;
  #closed = false;
  #failure: SandboxError | undefined;
  vmExit: VmExited | undefined;
  helperError: HelperError | undefined;
  /** `performance.now()` when the guest last sent a frame (liveness). */
  lastGuestFrameAt = performance.now();

  /** Starts a helper process; its socket is fd 3 on its side. */
  static spawn(native: NativeAddon, helperPath: string, args: readonly string[] = []): HelperConnection {
    const stderrFd = process.env.SANDBOX_DEBUG ? 2 : -1;
    const handle = native.spawnHelper(helperPath, [...args], stderrFd);
    return new HelperConnection(new Socket({ fd: handle.fd, readable: true, writable: true }), handle.pid);
  }

  /** A connection over `socket` to the helper process `pid` (0 in tests: nothing to kill). */
  constructor(socket: Socket, pid: number) {
    super();
    this.pid = pid;
    this.#socket = socket;
    this.#socket.setNoDelay?.(true);
    this.#socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    this.#socket.on("error", () => this.#finish());
    this.#socket.on("close", () => this.#finish());
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The helper's last diagnostics, oldest first. */
  get diagnostics(): readonly string[] {
    return this.#diagnostics;
  }

  /** Sends raw bytes (process I/O) or an empty frame. */
  send(kind: Kind, channel: number, payload?: Uint8Array): boolean {
    return this.#write(() => encodeFrame(kind, channel, payload));
  }

  sendJson<K extends KindName>(kind: K, channel: number, body: NonNullable<KindMessages[K]>): boolean {
    return this.#write(() => encodeJson(kind as never, channel, body as never));
  }

  sendFramed<K extends KindName>(kind: K, channel: number, header: NonNullable<KindMessages[K]>, bytes: readonly Uint8Array[] = []): boolean {
    return this.#write(() => encodeFramed(kind as never, channel, header as never, bytes));
  }

  #write(frame: () => Buffer): boolean {
    if (this.#closed) return false;
    this.#socket.write(frame());
    return true;
  }

  onChannel(channel: number, handler: ChannelHandler): void {
    this.#channels.set(channel, handler);
  }

  offChannel(channel: number): void {
    this.#channels.delete(channel);
  }

  /** Serves `kind` requests from the helper until the connection ends. */
  serve<K extends RequestKind>(kind: K, service: RequestService<K>): void {
    this.#services.set(Kind[kind], service as unknown as RequestService<RequestKind>);
  }

  /** A request of Node to the helper (PortForward, Checkpoint); resolves with its validated reply. */
  request<K extends keyof RequestReplies>(kind: K, body: KindMessages[K]): Promise<KindMessages[RequestReplies[K]]> {
    if (this.#closed) return Promise.reject(this.end.error ?? new LaneClosedError());
    const id = this.#nextRequest;
    this.#nextRequest = id >= 0xffff_ffff ? 1 : id + 1;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { reply: REQUEST_REPLIES[kind], resolve: resolve as (m: unknown) => void, reject });
      this.sendJson(kind, id, body);
    });
  }

  /**
   * One `lane.fs` operation, served by the guest's init; resolves with its
   * validated reply (the helper already checked it answers this request with
   * at most the data it asked for) and the bytes after the header.
   */
  fileRequest(header: KindMessages["FileRequest"], bytes: readonly Uint8Array[] = []): Promise<{ reply: KindMessages["FileReply"]; bytes: Buffer }> {
    if (this.#closed) return Promise.reject(this.end.error ?? new LaneClosedError());
    const id = this.#nextRequest;
    this.#nextRequest = id >= 0xffff_ffff ? 1 : id + 1;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { reply: "FileReply", resolve: resolve as (m: unknown) => void, reject });
      this.sendFramed("FileRequest", id, header, bytes);
    });
  }

  /**
   * Starts a `lane.fs.watch` in the guest on a new id; its frames (Watching,
   * WatchEvents, WatchEnd) go to `handler` until WatchEnd. `undefined` when closed.
   */
  watch(start: KindMessages["WatchStart"], handler: ChannelHandler): number | undefined {
    if (this.#closed) return undefined;
    const id = this.#nextRequest;
    this.#nextRequest = id >= 0xffff_ffff ? 1 : id + 1;
    this.#watches.set(id, handler);
    this.sendJson("WatchStart", id, start);
    return id;
  }

  /** Ends the helper now: SIGKILL takes the VMM with it (PDEATHSIG). */
  kill(): void {
    if (this.pid > 0) {
      try {
        process.kill(this.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    this.#socket.destroy();
  }

  /** Ends the lane because something it sent broke the contract. The first failure wins. */
  fail(error: SandboxError): void {
    this.#failure ??= error;
    this.kill();
  }

  /** How the connection ended (meaningful once `closed`). */
  get end(): ConnectionEnd {
    return { error: this.#failure ?? this.#helperFailure(), vmExit: this.vmExit, helperError: this.helperError };
  }

  #helperFailure(): SandboxError | undefined {
    const h = this.helperError;
    if (!h) return undefined;
    const tail = this.vmExit?.consoleTail;
    if (h.cause === "guest-protocol") {
      return new SandboxProtocolError(`the guest broke the control protocol and its lane was ended: ${h.message.replace(/^the guest broke the control protocol: /, "")}`, {
        offender: "guest",
        frameKind: h.frameKind === undefined || h.frameKind === null ? undefined : kindName(h.frameKind),
        channel: h.channel ?? undefined,
        consoleTail: tail,
        diagnostics: this.#diagnostics,
      });
    }
    return new SandboxCrashedError(`the sandbox helper failed (${h.cause}): ${h.message}`, tail, { diagnostics: this.#diagnostics });
  }

  #onData(chunk: Buffer): void {
    try {
      for (const frame of this.#decoder.push(chunk)) {
        if (this.#closed || this.#failure) return;
        this.#dispatch(frame);
      }
    } catch (err) {
      this.fail(this.#violation(err));
    }
  }

  /** The error a throw while handling a frame becomes. */
  #violation(err: unknown): SandboxError {
    if (err instanceof ContractViolation) {
      const info = kindInfo(err.kind);
      const offender: ProtocolOffender = info && (info.direction === "guest-to-host" || info.direction === "host-to-guest") ? "guest" : "helper";
      const who = offender === "guest" ? "the guest" : "the sandbox helper";
      return new SandboxProtocolError(`${who} broke the control protocol and the lane was ended: ${err.message}`, {
        offender,
        frameKind: kindName(err.kind),
        channel: err.channel,
        diagnostics: this.#diagnostics,
      });
    }
    if (err instanceof FrameError) {
      return new SandboxProtocolError(`the sandbox helper sent a broken frame stream and the lane was ended: ${err.message}`, {
        offender: "helper",
        diagnostics: this.#diagnostics,
      });
    }
    const why = describeThrown(err);
    return new SandboxCrashedError(`handling a frame from the sandbox helper failed (${why}); the lane was ended`, undefined, { diagnostics: this.#diagnostics });
  }

  #dispatch(f: Frame): void {
    const info = kindInfo(f.kind);
    const violation = (reason: string) => new ContractViolation(f.kind, f.channel, reason);
    if (!info) throw violation("no frame has this kind");
    if (info.direction !== "guest-to-host" && info.direction !== "helper-to-node") throw violation(`travels ${info.direction}; the helper may not send it to Node`);
    if ((info.channel === "zero") !== (f.channel === 0)) throw violation(info.channel === "zero" ? "must be on channel 0" : "needs a channel ≥ 1");
    if (info.direction === "guest-to-host") this.lastGuestFrameAt = performance.now();
    switch (info.name) {
      case "Pong":
        return;
      case "Launched":
      case "Hello":
      case "Ready":
      case "Resumed":
      case "InitError":
        this.emit("control", { kind: info.name, msg: decodeJson(info.name, f.payload, f.channel) } as ControlFrame);
        return;
      case "VmExited":
        this.vmExit = decodeJson("VmExited", f.payload);
        return;
      case "HelperError":
        this.helperError = decodeJson("HelperError", f.payload);
        return;
      case "Diagnostic": {
        const d = decodeJson("Diagnostic", f.payload);
        this.#diagnostics.push(`${d.level} ${d.source}: ${d.message}`);
        if (this.#diagnostics.length > KEEP_DIAGNOSTICS) this.#diagnostics.shift();
        this.emit("diagnostic", d);
        return;
      }
      case "NetAudit":
        this.emit("netAudit", decodeJson("NetAudit", f.payload) as NetAudit);
        return;
      case "FsForget":
        this.#serveForget(f);
        return;
      case "PortForwarded":
      case "Checkpointed": {
        const waiting = this.#waiting.get(f.channel);
        if (!waiting || waiting.reply !== info.name) throw violation("no request waits for this answer");
        this.#waiting.delete(f.channel);
        waiting.resolve(decodeJson(info.name, f.payload, f.channel));
        return;
      }
      case "FileReply": {
        const waiting = this.#waiting.get(f.channel);
        if (!waiting || waiting.reply !== "FileReply") throw violation("no file request waits for this answer");
        this.#waiting.delete(f.channel);
        const { header, bytes } = decodeFramed("FileReply", f.payload, f.channel);
        waiting.resolve({ reply: header, bytes });
        return;
      }
      case "Watching":
      case "WatchEvents":
      case "WatchEnd": {
        const handler = this.#watches.get(f.channel);
        if (!handler) throw violation("no watch runs with this id");
        if (info.name === "WatchEnd") this.#watches.delete(f.channel);
        handler(f.kind, f.payload);
        return;
      }
      case "BlockRequest":
      case "NetRequest":
      case "FsRequest":
        this.#serveRequest(info.name, f);
        return;
      default:
        // Process frames: the helper already checked them against the channel's state.
        this.#channels.get(f.channel)?.(f.kind, f.payload);
    }
  }

  #serveRequest(kind: RequestKind, f: Frame): void {
    const service = this.#services.get(f.kind);
    if (!service) throw new ContractViolation(f.kind, f.channel, "this lane has no such service");
    let request: { header: unknown; bytes: Buffer };
    try {
      request = decodeFramed(kind, f.payload, f.channel);
    } catch (err) {
      // A request we cannot read still has its id: answer it now, so one bad frame costs one operation.
      const reason = describeThrown(err);
      this.#reportBadRequest(kind, reason);
      service.malformed(f.channel, reason);
      return;
    }
    const failed = (err: unknown) => {
      const reason = `serving it failed: ${describeThrown(err)}`;
      this.#reportBadRequest(kind, reason);
      service.malformed(f.channel, reason);
    };
    try {
      const pending = service.handle(request.header as KindMessages[RequestKind], request.bytes, f.channel);
      if (pending) pending.then(undefined, failed);
    } catch (err) {
      failed(err);
    }
  }

  #serveForget(f: Frame): void {
    const service = this.#services.get(Kind.FsRequest);
    let msg: KindMessages["FsForget"];
    try {
      msg = decodeJson("FsForget", f.payload);
    } catch (err) {
      this.#reportBadRequest("FsForget", describeThrown(err));
      return;
    }
    try {
      service?.forget?.(msg);
    } catch (err) {
      this.#reportBadRequest("FsForget", describeThrown(err));
    }
  }

  #reportBadRequest(kind: string, reason: string): void {
    const message = `a ${kind} from the helper could not be served (${reason}); answered with an error`;
    this.#diagnostics.push(`warn relay: ${message}`);
    if (this.#diagnostics.length > KEEP_DIAGNOSTICS) this.#diagnostics.shift();
    this.emit("diagnostic", { level: "warn", source: "relay", message } satisfies LaneDiagnostic);
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#socket.destroy();
    const end = this.end;
    const gone = end.error ?? new LaneClosedError("the lane ended before the helper answered");
    for (const w of this.#waiting.values()) w.reject(gone);
    this.#waiting.clear();
    this.emit("exit", end);
  }
}

function kindName(value: number): string {
  return kindInfo(value)?.name ?? `0x${value.toString(16).padStart(2, "0")}`;
}

export { describeKind };
