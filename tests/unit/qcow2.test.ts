import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ImageFormatError, ImageOptionError, ImageUnsupportedError } from "../../src/rootfs/image-errors.js";
import { type ByteSource, Qcow2Reader } from "../../src/rootfs/qcow2-reader.js";
import { openFileByteSink, writeQcow2, type WriteQcow2Options } from "../../src/rootfs/qcow2-writer.js";

const BUSYBOX = new URL("../../platform-packages/linux-x64-gnu/artifacts/images/busybox.qcow2", import.meta.url).pathname;

let dir: string;
let raw: Buffer; // ground truth for every fixture
const RAW_SIZE = 4 * 1024 * 1024 + 65536 + 4096 + 1024; // a multiple of 512, not of 4 KiB

function qemuImg(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("qemu-img", args, { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function mustQemuImg(...args: string[]): string {
  const r = qemuImg(...args);
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

/** Deterministic xorshift32 so failures reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

function randomFill(buf: Uint8Array, next: () => number): void {
  for (let i = 0; i < buf.length; i++) buf[i] = next() & 0xff;
}

function sha(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

async function readerSha(r: Qcow2Reader, chunk = 1_000_003): Promise<string> {
  // An odd chunk size makes every read straddle cluster boundaries.
  const h = createHash("sha256");
  for (let off = 0; off < r.virtualSize; off += chunk) h.update(await r.readAt(off, Math.min(chunk, r.virtualSize - off)));
  return h.digest("hex");
}

async function fileSha(path: string): Promise<string> {
  const h = createHash("sha256");
  const fh = await open(path, "r");
  try {
    for await (const c of fh.createReadStream({ highWaterMark: 4 << 20 })) h.update(c as Buffer);
  } finally {
    await fh.close();
  }
  return h.digest("hex");
}

function memSource(bytes: Uint8Array): ByteSource {
  return {
    size: async () => bytes.length,
    read: async (offset, length) => bytes.slice(offset, Math.min(offset + length, bytes.length)),
  };
}

function nonZeroClusters(buf: Uint8Array, cs: number): number[] {
  const out: number[] = [];
  for (let c = 0; c * cs < buf.length; c++) {
    if (buf.subarray(c * cs, (c + 1) * cs).some((x) => x !== 0)) out.push(c);
  }
  return out;
}

async function collect(it: AsyncIterable<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function writeFile(path: string, opts: Omit<WriteQcow2Options, "dest">) {
  const sink = await openFileByteSink(path);
  try {
    return await writeQcow2({ ...opts, dest: sink });
  } finally {
    await sink.close();
  }
}

function expectCheckClean(path: string): void {
  const r = qemuImg("check", "-f", "qcow2", path);
  expect(r.stderr).toBe("");
  expect(r.stdout).toContain("No errors were found on the image.");
  expect(r.status).toBe(0);
}

function expectIdentical(a: string, aFormat: string, b: string): void {
  const r = qemuImg("compare", "-f", aFormat, "-F", "qcow2", a, b);
  expect(r.stdout.trim()).toBe("Images are identical.");
  expect(r.status).toBe(0);
}

const fixtures: Record<string, { path: string; version: number; clusterSize: number }> = {};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "qcow2-test-"));
  const next = rng(0xc0ffee);
  raw = Buffer.alloc(RAW_SIZE);
  // Scattered random chunks of assorted lengths, some crossing cluster boundaries.
  for (let i = 0; i < 40; i++) {
    const len = 1 + (next() % 70_000);
    const off = next() % (RAW_SIZE - len);
    randomFill(raw.subarray(off, off + len), next);
  }
  randomFill(raw.subarray(3 * 65536 - 100, 3 * 65536 + 100), next);
  // Compressible text so compressed clusters are much smaller than a cluster.
  raw.write("the quick brown fox jumps over the lazy dog\n".repeat(7000), 1 << 20, "latin1");
  // Data in the partial last 4 KiB/64 KiB cluster.
  randomFill(raw.subarray(RAW_SIZE - 900, RAW_SIZE - 10), next);
  const rawPath = join(dir, "src.raw");
  writeFileSync(rawPath, raw);

  const make = (name: string, version: number, clusterSize: number, extra: string[]) => {
    const path = join(dir, `${name}.qcow2`);
    mustQemuImg("convert", "-f", "raw", "-O", "qcow2", ...extra, rawPath, path);
    fixtures[name] = { path, version, clusterSize };
  };
  make("v3", 3, 65536, []);
  make("v3-compressed", 3, 65536, ["-c"]);
  make("v2", 2, 65536, ["-o", "compat=0.10"]);
  make("v2-compressed", 2, 65536, ["-c", "-o", "compat=0.10"]);
  make("v3-4k", 3, 4096, ["-o", "cluster_size=4096"]);
  make("v3-512-compressed", 3, 512, ["-c", "-o", "cluster_size=512"]);
  make("v3-2m-compressed", 3, 2 << 20, ["-c", "-o", "cluster_size=2M"]);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("Qcow2Reader against qemu-img fixtures", () => {
  const names = ["v3", "v3-compressed", "v2", "v2-compressed", "v3-4k", "v3-512-compressed", "v3-2m-compressed"];
  for (const name of names) {
    it(`${name}: bytes equal the raw source`, async () => {
      const f = fixtures[name]!;
      await using r = await Qcow2Reader.openFile(f.path);
      expect(r.header.version).toBe(f.version);
      expect(r.clusterSize).toBe(f.clusterSize);
      expect(r.virtualSize).toBe(RAW_SIZE);
      expect(await readerSha(r)).toBe(sha(raw));

      const next = rng(name.length * 7919);
      for (let i = 0; i < 150; i++) {
        // Bias toward ranges around cluster boundaries.
        const boundary = (next() % Math.ceil(RAW_SIZE / f.clusterSize)) * f.clusterSize;
        const off = Math.max(0, Math.min(RAW_SIZE - 1, boundary - (next() % 3000)));
        const len = Math.min(RAW_SIZE - off, next() % 9000);
        expect(Buffer.from(await r.readAt(off, len)).equals(raw.subarray(off, off + len))).toBe(true);
      }
      expect(await collect(r.allocatedClusters())).toEqual(nonZeroClusters(raw, f.clusterSize));
    });
  }

  it("reads v3 zero-flag clusters as zeros and does not list them", async () => {
    const path = join(dir, "zeroflag.qcow2");
    mustQemuImg("create", "-q", "-f", "qcow2", path, "1M");
    const io = spawnSync("qemu-io", ["-c", "write -P 0x5a 0 192k", "-c", "write -z 65536 65536", path], { encoding: "utf8" });
    expect(io.status).toBe(0);
    const map = JSON.parse(mustQemuImg("map", "--output=json", path)) as { start: number; zero: boolean; offset?: number }[];
    // The zero cluster keeps its host cluster: only the flag makes it read as zeros.
    expect(map.find((m) => m.start === 65536)).toMatchObject({ zero: true, offset: expect.any(Number) });
    await using r = await Qcow2Reader.openFile(path);
    const want = Buffer.alloc(1 << 20);
    want.fill(0x5a, 0, 65536);
    want.fill(0x5a, 131072, 196608);
    expect(Buffer.from(await r.readAt(0, 1 << 20)).equals(want)).toBe(true);
    expect(await collect(r.allocatedClusters())).toEqual([0, 2]);
  });

  it("rejects ranges past the virtual size", async () => {
    await using r = await Qcow2Reader.openFile(fixtures["v3"]!.path);
    await expect(r.readAt(RAW_SIZE - 10, 11)).rejects.toBeInstanceOf(ImageOptionError);
    await expect(r.readAt(-1, 1)).rejects.toBeInstanceOf(ImageOptionError);
    expect((await r.readAt(RAW_SIZE, 0)).length).toBe(0);
  });
});

describe("Qcow2Reader refuses what it cannot read", () => {
  const patched = (mutate: (v: DataView) => void): ByteSource => {
    const bytes = new Uint8Array(readFileSync(fixtures["v3"]!.path));
    mutate(new DataView(bytes.buffer));
    return memSource(bytes);
  };
  const unsupported = async (source: ByteSource, feature: RegExp) => {
    const err = await Qcow2Reader.open(source, { name: "img" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageUnsupportedError);
    expect((err as ImageUnsupportedError).feature).toMatch(feature);
    expect((err as Error).message).toMatch(/qemu-img convert/);
  };

  it("not a qcow2 file", async () => {
    const err = await Qcow2Reader.open(memSource(raw), { name: "disk.raw" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageFormatError);
    expect((err as Error).message).toMatch(/disk\.raw: missing QCOW2 magic/);
  });

  it("backing files", async () => {
    const path = join(dir, "overlay.qcow2");
    mustQemuImg("create", "-q", "-f", "qcow2", "-b", fixtures["v3"]!.path, "-F", "qcow2", path);
    const err = await Qcow2Reader.openFile(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageUnsupportedError);
    expect((err as ImageUnsupportedError).feature).toBe("backing file");
  });

  it("extended L2 entries", async () => {
    const path = join(dir, "l2ext.qcow2");
    mustQemuImg("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", path, "1M");
    const err = await Qcow2Reader.openFile(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageUnsupportedError);
    expect((err as ImageUnsupportedError).feature).toMatch(/extended L2/);
  });

  it("encryption, external data files, zstd and unknown incompatible features", async () => {
    await unsupported(patched((v) => v.setUint32(32, 2)), /encryption/);
    await unsupported(patched((v) => v.setUint32(76, 1 << 2)), /external data/);
    await unsupported(
      patched((v) => {
        v.setUint32(76, 1 << 3);
        v.setUint8(104, 1);
      }),
      /zstd/,
    );
    await unsupported(patched((v) => v.setUint32(76, 1 << 9)), /unknown incompatible/);
  });
});

describe("writeQcow2", () => {
  /** Maps a reader's allocated clusters onto another cluster size (ascending, unique). */
  async function* rescale(src: Qcow2Reader, clusterSize: number): AsyncIterable<number> {
    let last = -1;
    for await (const c of src.allocatedClusters()) {
      const first = Math.floor((c * src.clusterSize) / clusterSize);
      const end = Math.ceil(Math.min((c + 1) * src.clusterSize, src.virtualSize) / clusterSize);
      for (let d = Math.max(first, last + 1); d < end; d++) yield (last = d);
    }
  }

  const copies: [string, number][] = [
    ["v3-compressed", 65536],
    ["v3-4k", 4096],
    ["v3-compressed", 4096],
    ["v2", 65536],
  ];
  for (const [name, clusterSize] of copies) {
    it(`copies ${name} at clusterSize ${clusterSize}: qemu-img check and compare agree`, async () => {
      const f = fixtures[name]!;
      await using src = await Qcow2Reader.openFile(f.path);
      const out = join(dir, `copy-${name}-${clusterSize}.qcow2`);
      const res = await writeFile(out, {
        virtualSize: src.virtualSize,
        clusterSize,
        readBlock: (off, len) => src.readAt(off, len),
        allocated: rescale(src, clusterSize),
      });
      expect(res.allocatedClusters).toBe(nonZeroClusters(raw, clusterSize).length);
      expect(res.fileSize).toBe(readFileSync(out).length);
      expectCheckClean(out);
      expectIdentical(f.path, "qcow2", out);
      await using back = await Qcow2Reader.openFile(out);
      expect(back.header.version).toBe(3);
      expect(back.header.refcountOrder).toBe(4);
      expect(await readerSha(back)).toBe(sha(raw));
    });
  }

  it("writes a synthetic block map with a partial last cluster and skips zero/null blocks", async () => {
    const cs = 4096;
    const virtualSize = 10 * cs + 1536;
    const next = rng(42);
    const blocks = new Map<number, Uint8Array | null>();
    for (const c of [0, 3, 4, 9]) {
      const b = new Uint8Array(cs);
      randomFill(b, next);
      blocks.set(c, b);
    }
    blocks.set(5, new Uint8Array(cs)); // all zeros: must stay unallocated
    blocks.set(6, null);
    const tail = new Uint8Array(1536);
    randomFill(tail, next);
    blocks.set(10, tail);
    const expected = Buffer.alloc(virtualSize);
    for (const [c, b] of blocks) if (b) expected.set(b, c * cs);

    const out = join(dir, "synthetic.qcow2");
    const res = await writeFile(out, {
      virtualSize,
      clusterSize: cs,
      readBlock: async (off, len) => {
        const b = blocks.get(off / cs);
        expect(len).toBe(off / cs === 10 ? 1536 : cs);
        return b === undefined ? null : b;
      },
      allocated: [...blocks.keys()].sort((a, b) => a - b),
    });
    expect(res.allocatedClusters).toBe(5);
    expectCheckClean(out);
    const rawOut = join(dir, "synthetic.raw");
    writeFileSync(rawOut, expected);
    expectIdentical(rawOut, "raw", out);
    await using back = await Qcow2Reader.openFile(out);
    expect(await collect(back.allocatedClusters())).toEqual([0, 3, 4, 9, 10]);
    expect(Buffer.from(await back.readAt(0, virtualSize)).equals(expected)).toBe(true);
  });

  it("spans many L2 tables, a multi-cluster L1 and a multi-cluster refcount table (512 B clusters)", async () => {
    const cs = 512;
    const virtualSize = 9 * 1024 * 1024; // 18432 clusters: 288 L2 tables, >64 refcount blocks
    const block = (c: number) => {
      const b = new Uint8Array(cs);
      new DataView(b.buffer).setUint32(0, c + 1);
      return b;
    };
    const out = join(dir, "many.qcow2");
    const res = await writeFile(out, {
      virtualSize,
      clusterSize: cs,
      readBlock: async (off) => block(off / cs),
      allocated: (function* () {
        for (let c = 0; c < virtualSize / cs; c++) yield BigInt(c);
      })(),
    });
    expect(res.allocatedClusters).toBe(virtualSize / cs);
    expectCheckClean(out);
    await using back = await Qcow2Reader.openFile(out);
    expect(back.header.refcountTableClusters).toBeGreaterThan(1);
    expect(back.header.l1Size * 8).toBeGreaterThan(cs);
    for (const c of [0, 63, 64, 12345, virtualSize / cs - 1]) {
      expect(Buffer.from(await back.readAt(c * cs, cs)).equals(Buffer.from(block(c)))).toBe(true);
    }
  });

  it("writes empty images", async () => {
    for (const virtualSize of [0, 1 << 20]) {
      const out = join(dir, `empty-${virtualSize}.qcow2`);
      const res = await writeFile(out, { virtualSize, readBlock: async () => null, allocated: [] });
      expect(res.allocatedClusters).toBe(0);
      expectCheckClean(out);
      const ref = join(dir, `empty-ref-${virtualSize}.qcow2`);
      mustQemuImg("create", "-q", "-f", "qcow2", ref, String(virtualSize));
      expectIdentical(ref, "qcow2", out);
      await using back = await Qcow2Reader.openFile(out);
      expect(back.virtualSize).toBe(virtualSize);
      expect(await collect(back.allocatedClusters())).toEqual([]);
    }
  });

  it("rejects bad options with typed errors", async () => {
    const sink = { write: async () => {} };
    const base = { virtualSize: 1 << 20, readBlock: async () => null, allocated: [] as number[], dest: sink };
    for (const clusterSize of [256, 1000, 4 << 20, 65536.5]) {
      await expect(writeQcow2({ ...base, clusterSize })).rejects.toThrow(/clusterSize .* powers of two from 512 to 2097152/);
    }
    await expect(writeQcow2({ ...base, virtualSize: 1000 })).rejects.toBeInstanceOf(ImageOptionError);
    await expect(writeQcow2({ ...base, allocated: [2, 1] })).rejects.toThrow(/strictly ascending/);
    await expect(writeQcow2({ ...base, allocated: [16] })).rejects.toThrow(/0\.\.15/);
    await expect(
      writeQcow2({ ...base, allocated: [0], readBlock: async () => new Uint8Array(10) }),
    ).rejects.toThrow(/returned 10 bytes; return exactly 65536 bytes or null/);
  });
});

describe("built-in busybox image", () => {
  it("reads the same bytes as qemu-img convert -O raw, with an ext4 superblock", async () => {
    const rawPath = join(dir, "busybox.raw");
    mustQemuImg("convert", "-f", "qcow2", "-O", "raw", BUSYBOX, rawPath);
    await using r = await Qcow2Reader.openFile(BUSYBOX);
    expect(await readerSha(r, 4 << 20)).toBe(await fileSha(rawPath));
    const sb = await r.readAt(1024 + 56, 2);
    expect(new DataView(sb.buffer, sb.byteOffset, 2).getUint16(0, true)).toBe(0xef53);

    const copy = join(dir, "busybox-copy.qcow2");
    const res = await writeFile(copy, {
      virtualSize: r.virtualSize,
      readBlock: (off, len) => r.readAt(off, len),
      allocated: r.allocatedClusters(),
    });
    expect(res.allocatedClusters).toBeGreaterThan(0);
    expectCheckClean(copy);
    expectIdentical(BUSYBOX, "qcow2", copy);
  });
});
