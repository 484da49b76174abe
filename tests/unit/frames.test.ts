import { describe, expect, it } from "vitest";
import { encodeFrame, FrameDecoder, FrameError, Kind, MAX_PAYLOAD } from "../../src/protocol/frames.js";
import { encodeJson } from "../../src/protocol/contract.js";

describe("frame codec", () => {
  it("round-trips frames split at every byte boundary", () => {
    const a = encodeFrame(Kind.Stdout, 7, Buffer.from("hello"));
    const b = encodeJson("Exit", 7, { exitCode: 0, timedOut: false });
    const all = Buffer.concat([a, b]);
    const dec = new FrameDecoder();
    const got = [];
    for (let i = 0; i < all.length; i++) got.push(...dec.push(all.subarray(i, i + 1)));
    expect(got.map((f) => [f.kind, f.channel, f.payload.toString()])).toEqual([
      [Kind.Stdout, 7, "hello"],
      [Kind.Exit, 7, '{"exitCode":0,"timedOut":false}'],
    ]);
  });

  it("matches the Rust layout: BE length counting kind+channel, then kind, channel", () => {
    expect([...encodeFrame(Kind.Stdin, 0x01020304, Buffer.from([9]))]).toEqual([0, 0, 0, 6, 0x13, 1, 2, 3, 4, 9]);
  });

  it("rejects hostile lengths instead of buffering them", () => {
    const dec = new FrameDecoder();
    expect(() => dec.push(Buffer.from([0, 0, 0, 2]))).toThrow(FrameError);
    const big = Buffer.alloc(9);
    big.writeUInt32BE(MAX_PAYLOAD + 6, 0);
    expect(() => new FrameDecoder().push(big)).toThrow(/over the limit/);
  });

  it("refuses to encode oversize payloads", () => {
    expect(() => encodeFrame(Kind.Stdin, 1, new Uint8Array(MAX_PAYLOAD + 1))).toThrow(FrameError);
  });

  it("uses the Rust values for the filesystem bridge kinds (helper-only, 0xa0-0xaf)", () => {
    expect([Kind.FsRequest, Kind.FsReply]).toEqual([0xa0, 0xa1]);
  });
});
