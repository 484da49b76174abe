/**
 * Plumbing for intercepted flows: flows granted with HTTP middleware are not
 * connected upstream by the helper; it connects them to a Unix socket this
 * module listens on (in a private 0700 directory per lane), writes one header
 * line `{"flow":<id>}\n`, then splices raw bytes. Here the header is read, the
 * flow looked up, and the socket handed to the installed `InterceptHandler`
 * (the HTTP(S) interceptor lives in src/network/http/).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Endpoint } from "./endpoint.js";
import type { InterceptedFlow as HttpFlow, InterceptHandler } from "./http/types.js";
import type { NetworkEvent } from "./policy.js";

/** An intercepted flow as the plumbing knows it: the HTTP layer's view plus the helper's flow id. */
export interface InterceptedFlow extends HttpFlow {
  /** The helper's flow id (the `NetRequest` id). */
  readonly id: number;
  readonly src: Endpoint;
  readonly dst: Endpoint;
}

/**
 * Takes over one intercepted flow (the HTTP interceptor's `handle`). The socket is
 * handed over paused, positioned just after the helper's header line:
 * `pipe()`/async iteration start reading, an `on("data")` reader must call `resume()`.
 */
export type { InterceptHandler };

/** Ends the flow: no interceptor is installed in this build. */
export const unavailableHandler: InterceptHandler = async (socket) => {
  socket.destroy();
};

let installed: InterceptHandler | undefined;

/** Installs the handler new lanes use (the HTTP layer calls this); `undefined` restores the default. */
export function setInterceptHandler(handler: InterceptHandler | undefined): void {
  installed = handler;
}

export function interceptHandler(): InterceptHandler | undefined {
  return installed;
}

/** Flows granted for interception, waiting for the helper to connect them. */
export interface InterceptRegistry {
  register(id: number, flow: Omit<InterceptedFlow, "id">): void;
}

/** A registered flow the helper never connects is forgotten after this long. */
const PENDING_MS = 60_000;
/** The header line is tiny; anything longer is not the helper. */
const MAX_HEADER = 256;

export class InterceptServer implements InterceptRegistry {
  readonly socketPath: string;
  readonly #dir: string;
  readonly #server: Server;
  readonly #pending = new Map<number, { flow: InterceptedFlow; timer: NodeJS.Timeout }>();
  readonly #handler: InterceptHandler | undefined;
  readonly #emit: (e: NetworkEvent) => void;

  private constructor(dir: string, server: Server, handler: InterceptHandler | undefined, emit: (e: NetworkEvent) => void) {
    this.#dir = dir;
    this.socketPath = join(dir, "intercept.sock");
    this.#server = server;
    this.#handler = handler;
    this.#emit = emit;
    server.on("connection", (s) => this.#accept(s));
  }

  static async start(handler: InterceptHandler | undefined, emit: (e: NetworkEvent) => void): Promise<InterceptServer> {
    // mkdtemp creates the directory 0700: only this user can reach the socket.
    const dir = await mkdtemp(join(tmpdir(), "sandbox-intercept-"));
    const server = createServer();
    const self = new InterceptServer(dir, server, handler, emit);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(self.socketPath, () => {
        server.off("error", reject);
        resolve();
      });
    });
    return self;
  }

  register(id: number, flow: Omit<InterceptedFlow, "id">): void {
    const timer = setTimeout(() => this.#pending.delete(id), PENDING_MS);
    timer.unref();
    this.#pending.set(id, { flow: { id, ...flow }, timer });
  }

  #accept(socket: Socket): void {
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const nl = head.indexOf(0x0a);
      if (nl < 0) {
        if (head.length > MAX_HEADER) socket.destroy();
        return;
      }
      socket.off("data", onData);
      socket.pause();
      const rest = head.subarray(nl + 1);
      let id: unknown;
      try {
        id = (JSON.parse(head.subarray(0, nl).toString("utf8")) as { flow?: unknown }).flow;
      } catch {
        id = undefined;
      }
      const entry = typeof id === "number" ? this.#pending.get(id) : undefined;
      if (!entry) {
        socket.destroy();
        return;
      }
      clearTimeout(entry.timer);
      this.#pending.delete(entry.flow.id);
      // Bytes that arrived with the header belong to the flow.
      if (rest.length) socket.unshift(rest);
      const where = { src: entry.flow.src.toString(), dst: entry.flow.dst.toString() };
      if (!this.#handler) {
        this.#emit({ type: "intercept", ...where, message: `interceptor not available: ${entry.flow.hostname} was granted with middleware but no HTTP interceptor is installed; the flow is closed` });
        void unavailableHandler(socket, entry.flow);
        return;
      }
      this.#handler(socket, entry.flow).catch((err: unknown) => {
        socket.destroy();
        this.#emit({ type: "intercept", ...where, message: `interceptor failed: ${err instanceof Error ? err.message : String(err)}` });
      });
    };
    socket.on("data", onData);
    socket.on("error", () => socket.destroy());
  }

  async close(): Promise<void> {
    for (const { timer } of this.#pending.values()) clearTimeout(timer);
    this.#pending.clear();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await rm(this.#dir, { recursive: true, force: true });
  }
}
