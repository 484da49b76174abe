/**
 * examples/s3-block-store with overlapping calls, as the copy-on-write engine
 * makes them (several write-back batches in flight, a flush beside them),
 * against an in-memory client whose PUTs complete when the test says so.
 */
import { GetObjectCommand, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { describe, expect, it } from "vitest";
import { S3BlockStore } from "../../examples/s3-block-store/s3-block-store.js";

const BS = 65536;
const ctx = { base: "ab".repeat(32) };
const block = (fill: number) => new Uint8Array(BS).fill(fill);

/** Objects in a Map; PUTs of keys in `held` wait until `release(key)`, then land in release order. */
class FakeS3 {
  readonly objects = new Map<string, Uint8Array>();
  readonly held = new Set<string>();
  readonly #waiting: { key: string; land: () => void }[] = [];

  async send(cmd: unknown): Promise<unknown> {
    if (cmd instanceof GetObjectCommand) {
      const body = this.objects.get(cmd.input.Key!);
      if (!body) throw Object.assign(new Error("NoSuchKey"), { name: "NoSuchKey" });
      return { Body: { transformToByteArray: async () => body } };
    }
    if (cmd instanceof PutObjectCommand) {
      const key = cmd.input.Key!;
      const body = cmd.input.Body as Uint8Array;
      const land = () => void this.objects.set(key, body);
      if (!this.held.has(key)) return land();
      await new Promise<void>((resolve) => this.#waiting.push({ key, land: () => (land(), resolve()) }));
      return;
    }
    throw new Error(`unexpected command ${String(cmd)}`);
  }

  pending(key: string): number {
    return this.#waiting.filter((w) => w.key === key).length;
  }

  /** Lands the oldest held PUT of `key`. */
  release(key: string): void {
    const w = this.#waiting.find((w) => w.key === key);
    if (!w) throw new Error(`no PUT of ${key} is waiting`);
    this.#waiting.splice(this.#waiting.indexOf(w), 1);
    w.land();
  }
}

const tick = () => new Promise((r) => setTimeout(r, 5));

describe("S3BlockStore with overlapping calls", () => {
  it("never lands an older copy of a block after a newer one", async () => {
    const s3 = new FakeS3();
    const store = new S3BlockStore({ client: s3 as unknown as S3Client, bucket: "b", keyPrefix: "p", maxBufferedBlocks: 2, concurrency: 4 });
    await store.list(ctx);
    const key5 = "p/blocks/0000000000000005";
    s3.held.add(key5);
    // Two overlapping write-back batches: both uploads see block 5 buffered.
    const w1 = store.write([{ index: 5n, bytes: block(1) }, { index: 6n, bytes: block(6) }], ctx);
    await tick();
    const w2 = store.write([{ index: 7n, bytes: block(7) }], ctx);
    await tick();
    s3.release(key5);
    await w1;
    // Block 5 is rewritten once its first write resolved (the engine's rule).
    s3.held.delete(key5);
    const w3 = store.write([{ index: 5n, bytes: block(2) }, { index: 8n, bytes: block(8) }], ctx);
    await tick();
    // Whatever the second upload still had for block 5 lands after that.
    while (s3.pending(key5) > 0) s3.release(key5);
    await Promise.all([w2, w3]);
    await store.flush(ctx);
    expect(s3.objects.get(key5)).toEqual(block(2));
    const [got] = await store.read({ start: 5n, count: 1 }, ctx);
    expect(got?.bytes).toEqual(block(2));
  });

  it("a flush beside a rewrite still makes the flushed copy or a newer one durable", async () => {
    const s3 = new FakeS3();
    const store = new S3BlockStore({ client: s3 as unknown as S3Client, bucket: "b", keyPrefix: "p", maxBufferedBlocks: 64 });
    await store.list(ctx);
    await store.write([{ index: 3n, bytes: block(1) }], ctx);
    const flushed = store.flush(ctx);
    // A later write of the same block while the flush uploads.
    await store.write([{ index: 3n, bytes: block(2) }], ctx);
    await flushed;
    const manifest = JSON.parse(new TextDecoder().decode(s3.objects.get("p/manifest.json")));
    expect(manifest.blocks).toContain("3");
    expect([block(1), block(2)]).toContainEqual(s3.objects.get("p/blocks/0000000000000003"));
  });
});
