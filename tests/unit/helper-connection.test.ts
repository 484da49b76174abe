/**
 * HelperConnection against a stand-in helper on a real socket: every frame is
 * checked against the contract, and one that breaks it ends this connection
 * with a SandboxProtocolError naming the frame — nothing throws into the
 * event loop.
 */
import { afterAll, describe, expect, it } from "vitest";
import { SandboxProtocolError } from "../../src/errors.js";
import type { ConnectionEnd } from "../../src/helper-connection.js";
import { Kind } from "../../src/protocol/contract.js";
import { connectFakeHelper } from "./fake-helper.js";

const closers: (() => void)[] = [];
afterAll(() => closers.forEach((c) => c()));

async function ended(send: (h: Awaited<ReturnType<typeof connectFakeHelper>>["helper"]) => void, channel?: number) {
  const link = await connectFakeHelper();
  closers.push(link.close);
  const frames: number[] = [];
  if (channel !== undefined) link.conn.onChannel(channel, (kind) => frames.push(kind));
  const end = new Promise<ConnectionEnd>((resolve) => link.conn.once("exit", resolve));
  send(link.helper);
  return { end: await end, frames };
}

describe("HelperConnection", { timeout: 10_000 }, () => {
  it("a process frame whose payload breaks the contract ends the lane with a guest SandboxProtocolError", async () => {
    const link = await connectFakeHelper();
    closers.push(link.close);
    const end = new Promise<ConnectionEnd>((resolve) => link.conn.once("exit", resolve));
    // A channel whose owner decodes like ProcessChannel does.
    const { decodeJson } = await import("../../src/protocol/contract.js");
    link.conn.onChannel(3, (_kind, payload) => void decodeJson("Exit", payload, 3));
    link.helper.raw(Kind.Exit, 3, Buffer.from("null"));
    const { error } = await end;
    expect(error).toBeInstanceOf(SandboxProtocolError);
    expect(error).toMatchObject({ offender: "guest", frameKind: "Exit", channel: 3 });
    expect(error!.message).toMatch(/Exit frame \(0x17\) on channel 3: not a valid Exit/);
  });

  it("kinds the helper may not send, wrong channels and broken framing end it as a helper violation", async () => {
    for (const [send, pattern] of [
      [(h) => h.raw(Kind.Launch, 0, Buffer.from("{}")), /Launch frame \(0x80\) on channel 0: travels node-to-helper/],
      [(h) => h.raw(0x7f, 0), /frame kind 0x7f on channel 0: no frame has this kind/],
      [(h) => h.raw(Kind.Stdout, 0, Buffer.from("x")), /Stdout frame \(0x15\) on channel 0: needs a channel ≥ 1/],
      [(h) => h.raw(Kind.Diagnostic, 4, Buffer.from("{}")), /must be on channel 0/],
      [(h) => h.raw(Kind.VmExited, 0, Buffer.from('{"consoleTail":5}')), /VmExited frame \(0x82\) on channel 0: not a valid VmExited/],
      [(h) => h.raw(Kind.PortForwarded, 9, Buffer.from('{"status":"listening","port":1}')), /no request waits for this answer/],
      [(h) => h.raw(Kind.FsRequest, 2, Buffer.from([0, 0, 0, 2, 0x7b, 0x7d])), /this lane has no such service/],
      [(h) => h.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x15])), /broken frame stream/],
    ] as const) {
      const { end } = await ended(send as never);
      expect(end.error, String(pattern)).toBeInstanceOf(SandboxProtocolError);
      expect(end.error!.message).toMatch(pattern);
    }
  });

  it("reports the helper's own failure as a typed error naming the guest's offence", async () => {
    const { end } = await ended((h) => {
      h.json("HelperError", 0, { cause: "guest-protocol", message: "the guest broke the control protocol: Exit frame (0x17) on channel 1: nope", frameKind: 0x17, channel: 1 });
      // The helper exits after its HelperError.
      h.socket.end();
    });
    expect(end.helperError?.cause).toBe("guest-protocol");
    expect(end.error).toBeInstanceOf(SandboxProtocolError);
    expect(end.error).toMatchObject({ offender: "guest", frameKind: "Exit", channel: 1 });
    expect(end.error!.message).toBe("the guest broke the control protocol and its lane was ended: Exit frame (0x17) on channel 1: nope");
  });

  it("a served handler that throws anything answers malformed and the lane carries on", async () => {
    const link = await connectFakeHelper();
    closers.push(link.close);
    const odd = [null, undefined, "a string", Object.create(null), { get message() { throw new Error("getter"); } }];
    let i = 0;
    link.conn.serve("FsRequest", {
      handle: () => {
        throw odd[i++ % odd.length];
      },
      malformed: (id) => void link.conn.sendFramed("FsReply", id, { result: "error", errno: 5 }),
    });
    for (let id = 1; id <= odd.length; id++) {
      const reply = await link.helper.call("FsRequest", "FsReply", id, { mount: 0, uid: 0, gid: 0, pid: 1, call: { op: "statfs", node: 1 } });
      expect(reply.header).toEqual({ result: "error", errno: 5 });
    }
    expect(link.conn.closed).toBe(false);
  });
});
