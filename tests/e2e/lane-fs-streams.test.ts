/**
 * 1 GiB through `createWriteStream` and back through `createReadStream`:
 * byte-exact, and the host process does not grow with the file (the streams
 * pace range requests; nothing is buffered beyond a few 512 KiB chunks).
 */
import { createHash, randomFillSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { defineSandbox, rootfs } from "../../src/index.js";

const GIB = 1024 * 1024 * 1024;
const PIECE = 1024 * 1024;

describe("lane.fs streams", () => {
  it("moves 1 GiB byte-exact with host RSS growth under 64 MiB", { timeout: 900_000 }, async () => {
    // The file lives on an ephemeral root: its blocks are the disk, held by the helper, not Node.
    const sandbox = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12"), maxDirtyBytes: GIB + 256 * 1024 * 1024 }) });
    await using lane = await sandbox.boot();
    global.gc?.();
    const base = process.memoryUsage().rss;
    let peak = base;
    const sample = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 100);
    try {
      const wrote = createHash("sha256");
      let sent = 0;
      const source = new ReadableStream<Uint8Array>({
        pull(c) {
          if (sent >= GIB) return c.close();
          const b = randomFillSync(Buffer.allocUnsafe(PIECE));
          wrote.update(b);
          sent += b.length;
          c.enqueue(b);
        },
      }, new CountQueuingStrategy({ highWaterMark: 1 }));
      const t0 = performance.now();
      await source.pipeTo(lane.fs.createWriteStream("/root/big.bin"));
      const t1 = performance.now();
      expect((await lane.fs.stat("/root/big.bin")).size).toBe(GIB);
      const read = createHash("sha256");
      let got = 0;
      for await (const chunk of lane.fs.createReadStream("/root/big.bin")) {
        read.update(chunk);
        got += chunk.length;
      }
      const t2 = performance.now();
      expect(got).toBe(GIB);
      expect(read.digest("hex")).toBe(wrote.digest("hex"));
      const growth = peak - base;
      console.log(
        `1 GiB: write ${((GIB / 1e6) / ((t1 - t0) / 1000)).toFixed(0)} MB/s, read ${((GIB / 1e6) / ((t2 - t1) / 1000)).toFixed(0)} MB/s, host RSS growth ${(growth / 2 ** 20).toFixed(1)} MiB`,
      );
      expect(growth).toBeLessThan(64 * 1024 * 1024);
    } finally {
      clearInterval(sample);
    }
  });
});
