/**
 * The object-storage example (examples/s3-block-store) against a real
 * S3-compatible server (s3rver) on loopback, booting real cow lanes.
 */
import { ListObjectsV2Command, type S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalS3, type LocalS3 } from "./local-s3.js";
import { S3BlockStore } from "../../examples/s3-block-store/s3-block-store.js";
import { BlockStoreBaseMismatchError, defineSandbox, listBuiltInImages, rootfs } from "../../src/index.js";

const BUCKET = "agent-rootfs-overlays";
let s3: LocalS3 | undefined;
let client: S3Client;

beforeAll(async () => {
  s3 = await startLocalS3(BUCKET);
  client = s3.client;
});

afterAll(async () => {
  await s3?.stop();
});

const store = (keyPrefix: string) => new S3BlockStore({ client, bucket: BUCKET, keyPrefix });
const cowOn = (name: string, writable: S3BlockStore) => defineSandbox({ rootfs: rootfs.cow({ base: rootfs.builtIn(name), writable }) });

describe("examples/s3-block-store against a local S3-compatible server", () => {
  it("persists a cow root in the bucket: files written in one lane are there in the next", async () => {
    const first = store("lanes/worker-1");
    let digest = "";
    {
      await using lane = await cowOn("busybox", first).boot();
      const w = await lane.exec("sh", ["-c", "mkdir -p /srv/app && echo persisted > /srv/app/state && dd if=/dev/urandom of=/srv/app/blob bs=64k count=32 2>/dev/null && md5sum /srv/app/blob"]);
      expect(w.exitCode).toBe(0);
      digest = w.stdout;
    }
    expect(first.stats.puts).toBeGreaterThan(32);

    const listed = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: "lanes/worker-1/" }));
    const keys = (listed.Contents ?? []).map((o) => o.Key ?? "");
    expect(keys).toContain("lanes/worker-1/manifest.json");
    expect(keys.filter((k) => k.startsWith("lanes/worker-1/blocks/")).length).toBeGreaterThan(32);

    // A new store object (as a new process would have) over the same prefix.
    const second = store("lanes/worker-1");
    {
      await using lane = await cowOn("busybox", second).boot();
      const r = await lane.exec("sh", ["-c", "cat /srv/app/state && md5sum /srv/app/blob"]);
      expect(r.stdout).toBe(`persisted\n${digest}`);
    }
    // Lazy: the second boot fetched a fraction of the stored blocks.
    expect(second.stats.gets).toBeGreaterThan(1);
  });

  it("refuses, before any VM starts, to boot a prefix written for another base image", async () => {
    const images = listBuiltInImages();
    const busybox = images.find((i) => i.name === "busybox")!;
    const other = images.find((i) => i.name !== "busybox" && i.sha256 !== busybox.sha256);
    expect(other, "needs a second built-in image").toBeDefined();
    const err = await cowOn(other!.name, store("lanes/worker-1"))
      .boot()
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BlockStoreBaseMismatchError);
    const mismatch = err as BlockStoreBaseMismatchError;
    expect(mismatch.storedBase).toBe(busybox.sha256);
    expect(mismatch.requestedBase).toBe(other!.sha256);
    expect(mismatch.message).toContain(busybox.sha256);
    expect(mismatch.message).toContain(other!.sha256);
  });
});
