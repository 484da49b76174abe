/**
 * The S3 snapshot store example (examples/s3-snapshot-store) against a real
 * S3-compatible server (s3rver) on loopback: a snapshot saved to the bucket
 * is loaded and booted by another Node process with its own snapshot dir.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ListObjectsV2Command, type S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalS3, type LocalS3 } from "./local-s3.js";
import { S3SnapshotStore } from "../../examples/s3-snapshot-store/s3-snapshot-store.js";
import { defineSandbox, listSavedSnapshots, rootfs, SandboxSnapshotError } from "../../src/index.js";

const BUCKET = "lane-snapshots";
let s3: LocalS3 | undefined;
let client: S3Client;
let endpoint: string;

beforeAll(async () => {
  s3 = await startLocalS3(BUCKET);
  ({ client, endpoint } = s3);
});

afterAll(async () => {
  await s3?.stop();
});

function loadInOtherProcess(id: string, snapshotDir: string) {
  const script = fileURLToPath(new URL("./fixtures/s3-snapshot-load.mjs", import.meta.url));
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [script, endpoint, id], { timeout: 300_000, env: { ...process.env, SANDBOX_SNAPSHOT_DIR: snapshotDir } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

describe("examples/s3-snapshot-store against a local S3-compatible server", () => {
  it("saves a snapshot to the bucket; another Node process with another cache dir loads it, boots it and has the state", async () => {
    const store = new S3SnapshotStore({ client, bucket: BUCKET, keyPrefix: "snapshots", partBytes: 8 * 1024 * 1024 });
    const sandbox = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }), resources: { cpus: 1, memoryMiB: 512 } });
    const lane = await sandbox.boot({ hostname: "saver" });
    try {
      const r = await lane.exec("sh", [
        "-c",
        "echo in-run > /run/note && echo on-disk > /root/disk-note && nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/c.tmp; mv /run/c.tmp /run/counter; sleep 0.1; done' >/dev/null 2>&1 & sleep 1",
      ]);
      expect(r.exitCode).toBe(0);
      const snap = await lane.hibernate();
      try {
        expect(await snap.save(store, "agent-base")).toBe("agent-base");
      } finally {
        await snap.delete();
      }
    } finally {
      await lane.close();
    }
    expect(await listSavedSnapshots(store)).toEqual(["agent-base"]);
    const keys = ((await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: "snapshots/agent-base/" }))).Contents ?? []).map((o) => o.Key);
    expect(keys).toEqual(expect.arrayContaining(["snapshots/agent-base/manifest.json", "snapshots/agent-base/ram", "snapshots/agent-base/state"]));

    const cache = mkdtempSync(join(tmpdir(), "sandbox-other-cache-"));
    try {
      const out = await loadInOtherProcess("agent-base", cache);
      // The AWS SDK may warn about the Node version on stderr; the exit code and output are what count.
      expect(out.code, out.stderr).toBe(0);
      const shown = JSON.parse(out.stdout.trim().split("\n").at(-1)!) as { stdout: string; dir: string; exitCode: number };
      expect(shown.dir.startsWith(cache)).toBe(true);
      const [note, disk, host, counts] = shown.stdout.trim().split("\n");
      expect([note, disk, host]).toEqual(["in-run", "on-disk", "from-s3"]);
      const [a, b] = counts!.split(" ").map(Number);
      expect(a).toBeGreaterThan(0);
      expect(b).toBeGreaterThan(a!);
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  });

  it("a snapshot whose save died before its manifest is never listed, and loading it is a typed error", async () => {
    const store = new S3SnapshotStore({ client, bucket: BUCKET, keyPrefix: "snapshots" });
    // What a save killed half-way leaves: files, no manifest.
    await store.put("half/state", (async function* () {
      yield new Uint8Array([1, 2, 3]);
    })());
    expect(await listSavedSnapshots(store)).not.toContain("half");
    const sandbox = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }), resources: { cpus: 1, memoryMiB: 512 } });
    await expect(sandbox.loadSnapshot(store, "half")).rejects.toBeInstanceOf(SandboxSnapshotError);
  });
});
