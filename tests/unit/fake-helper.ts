/**
 * A stand-in helper on the far end of a real Unix socket: tests drive a real
 * HelperConnection (routing, contract validation, malformed handling) by
 * writing frames as the helper would and reading what Node answers.
 */
import { createServer, connect, type Socket } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HelperConnection } from "../../src/helper-connection.js";
import { encodeFrame, FrameDecoder, type Frame } from "../../src/protocol/frames.js";
import { decodeFramed, encodeFramed, encodeJson, Kind, type KindMessages, type KindName } from "../../src/protocol/contract.js";

export class FakeHelper {
  readonly frames: Frame[] = [];
  readonly #decoder = new FrameDecoder();
  #waiters: (() => void)[] = [];

  constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      for (const f of this.#decoder.push(chunk)) this.frames.push(f);
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  /** Writes raw bytes, as a broken or hostile helper might. */
  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  json<K extends KindName>(kind: K, channel: number, body: unknown): void {
    this.write(encodeJson(kind as never, channel, body as never));
  }

  framed<K extends KindName>(kind: K, channel: number, header: unknown, bytes: readonly Uint8Array[] = []): void {
    this.write(encodeFramed(kind as never, channel, header as never, bytes));
  }

  raw(kind: number, channel: number, payload: Uint8Array = new Uint8Array()): void {
    this.write(encodeFrame(kind as never, channel, payload));
  }

  /** The next frame of `kind` on `channel` Node sends (already received ones included). */
  async next(kind: number, channel: number, timeoutMs = 2000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.frames.findIndex((f) => f.kind === kind && f.channel === channel);
      if (i >= 0) return this.frames.splice(i, 1)[0]!;
      if (Date.now() > deadline) throw new Error(`no frame 0x${kind.toString(16)} on channel ${channel} within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 20);
      });
    }
  }

  /** Sends one request as the helper's service would and returns Node's framed reply. */
  async call<Q extends "BlockRequest" | "NetRequest" | "FsRequest", R extends "BlockReply" | "NetReply" | "FsReply">(
    request: Q,
    reply: R,
    id: number,
    header: KindMessages[Q],
    bytes: readonly Uint8Array[] = [],
  ): Promise<{ header: KindMessages[R]; bytes: Buffer }> {
    this.framed(request, id, header, bytes);
    const f = await this.next(Kind[reply], id);
    return decodeFramed(reply as never, f.payload, id) as never;
  }
}

/** A HelperConnection whose far end is a FakeHelper; `close()` removes the socket directory. */
export async function connectFakeHelper(): Promise<{ conn: HelperConnection; helper: FakeHelper; close(): void }> {
  const dir = mkdtempSync(join(tmpdir(), "fake-helper-"));
  const path = join(dir, "s");
  const server = createServer();
  const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const client = connect(path);
  const far = await accepted;
  server.close();
  const conn = new HelperConnection(client, 0);
  return {
    conn,
    helper: new FakeHelper(far),
    close: () => {
      conn.kill();
      far.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
