import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { defineSandbox, listBuiltInImages, MemoryBlockStore, MemoryImageStore, rootfs } from "../../src/index.js";
import { resolveArtifacts } from "../../src/artifacts.js";

const work = mkdtempSync(join(tmpdir(), "sandbox-export-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const busybox = rootfs.builtIn("busybox");
const image = listBuiltInImages().find((i) => i.name === "busybox")!;
const imageFile = join(resolveArtifacts().imagesDir, image.file);

async function collect(iter: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of iter) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

async function flattenToFile(source: Parameters<typeof rootfs.flatten>[0]["source"], name: string): Promise<string> {
  const dest = new MemoryImageStore();
  const flat = await rootfs.flatten({ format: "qcow2", source, dest, clusterSize: 65536 });
  const file = join(work, name);
  writeFileSync(file, await collect(rootfs.bytes(flat)));
  expect(readFileSync(file).length).toBe(flat.sizeBytes);
  return file;
}

describe("rootfs.compose / flatten / bytes", () => {
  it("bytes() of a built-in image equals the image file", async () => {
    const streamed = await collect(rootfs.bytes(busybox));
    expect(streamed.equals(readFileSync(imageFile))).toBe(true);
    expect(createHash("sha256").update(streamed).digest("hex")).toBe(image.sha256);
  });

  it("flattens a built-in image into a QCOW2 that qemu-img checks and compares equal", async () => {
    const file = await flattenToFile(busybox, "plain.qcow2");
    execFileSync("qemu-img", ["check", file]);
    expect(spawnSync("qemu-img", ["compare", file, imageFile]).status).toBe(0);
  });

  it("flattens base + overlay written by a real cow lane, equal to an independent merge", async () => {
    const overlay = new MemoryBlockStore();
    {
      await using lane = await defineSandbox({ rootfs: rootfs.cow({ source: rootfs.compose({ base: busybox, overlay }) }) }).boot();
      const r = await lane.exec("sh", ["-c", "dd if=/dev/urandom of=/root/blob bs=64k count=40 2>/dev/null && echo exported > /root/note && sync"]);
      expect(r.exitCode).toBe(0);
    }
    const ctx = { base: image.sha256 };
    const blocks = await overlay.list(ctx);
    expect(blocks.length).toBeGreaterThan(10);

    const file = await flattenToFile(rootfs.compose({ base: busybox, overlay }), "merged.qcow2");
    execFileSync("qemu-img", ["check", file]);

    // Oracle: qemu-img's raw copy of the base with the store's blocks written over it.
    const raw = join(work, "oracle.raw");
    execFileSync("qemu-img", ["convert", "-O", "raw", imageFile, raw]);
    const fd = openSync(raw, "r+");
    try {
      for (const chunk of await overlay.read({ start: 0n, count: Number(blocks.reduce((m, b) => (b > m ? b : m), 0n)) + 1 }, ctx)) {
        writeSync(fd, chunk.bytes, 0, chunk.bytes.length, Number(chunk.index) * 65536);
      }
    } finally {
      closeSync(fd);
    }
    expect(spawnSync("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", file, raw]).status).toBe(0);
    // And the base alone differs from the merged image.
    expect(spawnSync("qemu-img", ["compare", file, imageFile]).status).toBe(1);
  });
});
