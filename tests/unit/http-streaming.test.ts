/**
 * Bodies stream through the interceptor in both directions: 50 MB up and
 * 50 MB down with curl as the guest client, byte-exact, while the process
 * holding the interceptor (and the upstream) keeps its memory far below the
 * transfer size (live memory: JS heap + buffers sampled after a forced GC,
 * so garbage awaiting collection does not count). The slow side (a throttled upstream reader, a rate-limited
 * guest reader) would make a buffering interceptor hold the whole body.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GUEST_IP, HOST, startGuestSide, startUpstream, type Guest, type Upstream } from "./http-harness.js";

const run = promisify(execFile);
const SIZE = 50 * 1024 * 1024;
const BLOCK = randomBytes(1024 * 1024);

let dir: string;
let up: Upstream;
let guest: Guest;
let uploadFile: string;
let uploadSha: string;
let lastUpload: { bytes: number; sha: string } | undefined;
let downloadSha = "";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "http-stream-"));
  uploadFile = join(dir, "up.bin");
  const h = createHash("sha256");
  const parts: Buffer[] = [];
  for (let i = 0; i < SIZE / BLOCK.length; i++) {
    const b = Buffer.from(BLOCK);
    b.writeUInt32BE(i, 0);
    parts.push(b);
    h.update(b);
  }
  writeFileSync(uploadFile, Buffer.concat(parts));
  uploadSha = h.digest("hex");

  up = await startUpstream(async (req, res) => {
    if (req.method === "POST") {
      const h = createHash("sha256");
      let bytes = 0;
      for await (const chunk of req) {
        h.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
        // A slow consumer: ~25 MB/s.
        if (bytes % (1024 * 1024) < (chunk as Buffer).length) await new Promise((r) => setTimeout(r, 40));
      }
      lastUpload = { bytes, sha: h.digest("hex") };
      res.end("stored\n");
      return;
    }
    // Download: no Content-Length, so the interceptor re-frames it as chunked.
    const h = createHash("sha256");
    res.writeHead(200, { "content-type": "application/octet-stream" });
    for (let i = 0; i < SIZE / BLOCK.length; i++) {
      const b = Buffer.from(BLOCK);
      b.writeUInt32BE(i ^ 0x5a5a, 0);
      h.update(b);
      if (!res.write(b)) await new Promise((r) => res.once("drain", r));
    }
    downloadSha = h.digest("hex");
    res.end();
  });
  guest = await startGuestSide(up.port, (r) => r.headers.set("x-streamed", "1"));
});
afterAll(async () => {
  await guest.close();
  await up.close();
  rmSync(dir, { recursive: true, force: true });
});

// A forced GC before each sample measures what is held, not garbage awaiting collection.
setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
const live = () => {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};

/** Runs `fn` while sampling live memory (JS heap + buffers after a GC) and RSS; returns peak growths. */
async function peakGrowth(fn: () => Promise<void>): Promise<{ live: number; rss: number }> {
  const base = live();
  const baseRss = process.memoryUsage().rss;
  let peak = base;
  let peakRss = baseRss;
  const timer = setInterval(() => {
    peak = Math.max(peak, live());
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }, 25);
  try {
    await fn();
  } finally {
    clearInterval(timer);
  }
  return { live: peak - base, rss: peakRss - baseRss };
}

const mib = (n: number) => (n / 1048576).toFixed(1);

const curl = (args: string[]) =>
  run("curl", ["-sS", "--fail", "--cacert", guest.caFile, "--resolve", `${HOST}:${guest.port}:${GUEST_IP}`, ...args], { maxBuffer: 1 << 20 });

describe("streaming through the interceptor", () => {
  it("uploads 50 MB to a slow upstream byte-exact with bounded memory", async () => {
    const growth = await peakGrowth(async () => {
      const { stdout } = await curl(["--data-binary", `@${uploadFile}`, "-H", "content-type: application/octet-stream", `https://${HOST}:${guest.port}/upload`]);
      expect(stdout).toBe("stored\n");
    });
    expect(lastUpload).toEqual({ bytes: SIZE, sha: uploadSha });
    console.log(`upload of ${mib(SIZE)} MiB: peak live memory growth ${mib(growth.live)} MiB, RSS ${mib(growth.rss)} MiB`);
    expect(growth.live).toBeLessThan(16 * 1024 * 1024);
  });

  it("uploads a chunked body of unknown length", async () => {
    const { stdout } = await curl(["-T", uploadFile, "-X", "POST", "-H", "transfer-encoding: chunked", `https://${HOST}:${guest.port}/upload-chunked`]);
    expect(stdout).toBe("stored\n");
    expect(lastUpload).toEqual({ bytes: SIZE, sha: uploadSha });
  });

  it("downloads 50 MB to a slow guest reader byte-exact with bounded memory", async () => {
    const out = join(dir, "down.bin");
    const growth = await peakGrowth(async () => {
      await curl(["--limit-rate", "25M", "-o", out, `https://${HOST}:${guest.port}/download`]);
    });
    const h = createHash("sha256");
    for await (const c of createReadStream(out)) h.update(c as Buffer);
    expect(h.digest("hex")).toBe(downloadSha);
    console.log(`download of ${mib(SIZE)} MiB: peak live memory growth ${mib(growth.live)} MiB, RSS ${mib(growth.rss)} MiB`);
    expect(growth.live).toBeLessThan(16 * 1024 * 1024);
  });
});
