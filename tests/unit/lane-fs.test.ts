/**
 * `lane.fs` against a stand-in helper on a real socket: requests are framed
 * as the contract says, errors become SandboxFileSystemError, and a reply
 * that does not fit its request ends the lane instead of reaching the caller.
 */
import { afterAll, describe, expect, it } from "vitest";
import { SandboxConfigError, SandboxFileSystemError, SandboxProtocolError } from "../../src/errors.js";
import { LaneFileSystem } from "../../src/lane-fs/index.js";
import { decodeFramed, decodeJson, Kind } from "../../src/protocol/contract.js";
import { connectFakeHelper } from "./fake-helper.js";

const closers: (() => void)[] = [];
afterAll(() => closers.forEach((c) => c()));

/** The next FileRequest Node sends, on whatever request id. */
async function nextRequest(helper: Awaited<ReturnType<typeof connectFakeHelper>>["helper"]) {
  for (let i = 0; i < 100; i++) {
    const f = helper.frames.find((x) => x.kind === Kind.FileRequest);
    if (f) return helper.next(Kind.FileRequest, f.channel);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("no FileRequest within 2 s");
}

async function setup() {
  const link = await connectFakeHelper();
  closers.push(link.close);
  return { ...link, fs: new LaneFileSystem(() => (link.conn.closed ? undefined : link.conn)) };
}

describe("lane.fs on the wire", { timeout: 10_000 }, () => {
  it("reads a file as ranges and maps an error reply to its errno", async () => {
    const { fs, helper } = await setup();
    const pending = fs.readFile("/etc/hostname", { encoding: "utf8" });
    const req = await nextRequest(helper);
    const { header } = decodeFramed("FileRequest", req.payload, req.channel);
    expect(header).toEqual({ op: "read", path: "/etc/hostname", offset: 0, length: 512 * 1024 });
    helper.framed("FileReply", req.channel, { result: "data", eof: true }, [Buffer.from("box\n")]);
    expect(await pending).toBe("box\n");

    const missing = fs.stat("/nope");
    const st = await nextRequest(helper);
    helper.framed("FileReply", st.channel, { result: "error", code: "ENOENT", errno: 2 });
    const err = await missing.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxFileSystemError);
    expect(err).toMatchObject({ code: "ENOENT", errno: 2, syscall: "stat", path: "/nope" });
  });

  it("checks arguments before anything is sent", async () => {
    const { fs } = await setup();
    await expect(fs.readFile("etc/passwd")).rejects.toBeInstanceOf(SandboxConfigError);
    await expect(fs.chmod("/x", 0o17777)).rejects.toThrow(/permission mode/);
    await expect(fs.writeFile("/x", 5 as never)).rejects.toThrow(/string or Uint8Array/);
    await expect(fs.readFile("/" + "a".repeat(5000))).rejects.toThrow(/at most 4096 bytes/);
  });

  it("a reply that does not fit its request ends the lane with a SandboxProtocolError", async () => {
    const { fs, helper, conn } = await setup();
    const pending = fs.readdir("/");
    const req = await nextRequest(helper);
    helper.framed("FileReply", req.channel, { result: "dir", entries: [{ name: "../etc", type: "file" }], more: false });
    await expect(pending).rejects.toBeInstanceOf(SandboxProtocolError);
    await new Promise<void>((resolve) => (conn.closed ? resolve() : conn.once("exit", () => resolve())));
    await expect(fs.stat("/")).rejects.toThrow(/closed lane/);
  });
});

describe("lane.fs.watch on the wire", { timeout: 10_000 }, () => {
  it("starts a watch, grants credit as events are consumed and maps a failed start to its errno", async () => {
    const { fs, helper } = await setup();
    const watcher = fs.watch("/w", { recursive: true, maxQueued: 100 });
    const start = helper.frames.find((f) => f.kind === Kind.WatchStart) ?? (await new Promise((r) => setTimeout(r, 50)), helper.frames.find((f) => f.kind === Kind.WatchStart));
    expect(start).toBeDefined();
    const id = start!.channel;
    expect(decodeJson("WatchStart", (await helper.next(Kind.WatchStart, id)).payload, id)).toEqual({ path: "/w", recursive: true, window: 256, maxQueued: 100 });
    helper.raw(Kind.Watching, id);
    await watcher.ready;
    const events = Array.from({ length: 200 }, (_, i) => ({ type: "create", path: `/w/f${i}` }));
    helper.json("WatchEvents", id, { events: events.slice(0, 150) });
    helper.json("WatchEvents", id, { events: events.slice(150) });
    const got: unknown[] = [];
    for (let i = 0; i < 200; i++) got.push((await watcher.next()).value);
    expect(got).toEqual(events);
    // Half a window consumed: credit for it went back.
    const credit = await helper.next(Kind.WatchCredit, id);
    expect(decodeJson("WatchCredit", credit.payload, id)).toEqual({ events: 128 });
    const pending = watcher.next();
    await watcher.return();
    expect(await pending).toEqual({ value: undefined, done: true });
    await helper.next(Kind.WatchStop, id);

    const missing = fs.watch("/nope");
    await new Promise((r) => setTimeout(r, 50));
    const s2 = helper.frames.find((f) => f.kind === Kind.WatchStart)!;
    helper.json("WatchEnd", s2.channel, { reason: "error", code: "ENOENT", errno: 2 });
    await expect(missing.next()).rejects.toMatchObject({ code: "ENOENT", syscall: "watch", path: "/nope" });
    await expect(missing.ready).rejects.toBeInstanceOf(SandboxFileSystemError);
    expect(await missing.next()).toEqual({ value: undefined, done: true });
  });

  it("ends cleanly when the lane ends, and more events than the window end the lane", async () => {
    const a = await setup();
    const w = a.fs.watch("/w");
    const iterating = (async () => {
      for await (const _ of w) void _;
      return "ended";
    })();
    await new Promise((r) => setTimeout(r, 50));
    a.close();
    expect(await iterating).toBe("ended");

    const b = await setup();
    const w2 = b.fs.watch("/w");
    await new Promise((r) => setTimeout(r, 50));
    const id = b.helper.frames.find((f) => f.kind === Kind.WatchStart)!.channel;
    b.helper.raw(Kind.Watching, id);
    const flood = Array.from({ length: 256 }, (_, i) => ({ type: "modify", path: `/w/${i}` }));
    b.helper.json("WatchEvents", id, { events: flood });
    b.helper.json("WatchEvents", id, { events: flood.slice(0, 1) });
    await new Promise<void>((resolve) => (b.conn.closed ? resolve() : b.conn.once("exit", () => resolve())));
    expect(b.conn.end.error).toBeInstanceOf(SandboxProtocolError);
    void w2.close();
  });
});
