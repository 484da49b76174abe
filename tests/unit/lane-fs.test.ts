/**
 * `lane.fs` against a stand-in helper on a real socket: requests are framed
 * as the contract says, errors become SandboxFileSystemError, and a reply
 * that does not fit its request ends the lane instead of reaching the caller.
 */
import { afterAll, describe, expect, it } from "vitest";
import { SandboxConfigError, SandboxFileSystemError, SandboxProtocolError } from "../../src/errors.js";
import { LaneFileSystem } from "../../src/lane-fs/index.js";
import { decodeFramed, Kind } from "../../src/protocol/contract.js";
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
