// Round trips that cross the whole stack once each, measured inside the guest
// (or, for exec, on the host): exec("true"); one FUSE operation (fstat of a
// file on a fs.memory mount); one block-store read (an O_DIRECT read of a
// block held only by the rootfs.cow store). p50 in ms.
//
//   node scripts/bench/round-trips.mjs [--root CHECKOUT]   JSON for that checkout's build
//
// Used by scripts/bench.mjs, and with --root to compare two builds side by side.
import { join, resolve } from "node:path";

const FSTATS = 2000;
const STORE_BLOCKS = 300;

const guestFstat = `
import os, time, json, sys
fd = os.open("/tmp/m/f", os.O_RDONLY)
ts = []
for _ in range(${FSTATS}):
    t0 = time.perf_counter_ns(); os.fstat(fd); ts.append(time.perf_counter_ns() - t0)
ts.sort(); print(json.dumps({"p50": ts[len(ts)//2] / 1e6, "p95": ts[int(len(ts)*0.95)] / 1e6}))
`;

const guestBlockReads = (blocks) => `
import os, mmap, time, json
fd = os.open("/dev/vda", os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 65536)
ts = []
for b in ${JSON.stringify(blocks)}:
    t0 = time.perf_counter_ns(); os.preadv(fd, [buf], b * 65536); ts.append(time.perf_counter_ns() - t0)
ts.sort(); print(json.dumps({"p50": ts[len(ts)//2] / 1e6, "p95": ts[int(len(ts)*0.95)] / 1e6}))
`;

export async function roundTrips(api, { execs = 300 } = {}) {
  const { defineSandbox, rootfs, fs, MemoryBlockStore } = api;
  const base = rootfs.builtIn("debian:12");
  const out = {};
  {
    const mem = fs.memory({ files: { "/f": "x" } });
    const lane = await defineSandbox({ rootfs: base }).boot({ mounts: { "/tmp/m": fs.virtual(mem) } });
    try {
      for (let i = 0; i < 20; i++) await lane.exec("true");
      const t = [];
      for (let i = 0; i < execs; i++) {
        const t0 = performance.now();
        await lane.exec("true");
        t.push(performance.now() - t0);
      }
      t.sort((a, b) => a - b);
      out.execMs = { p50: t[t.length >> 1], p95: t[Math.floor(t.length * 0.95)] };
      const r = await lane.exec("python3", ["-c", guestFstat]);
      out.fuseMs = JSON.parse(r.stdout);
    } finally {
      await lane.close();
    }
  }
  {
    // Blocks at the end of the 4 GiB image, which the filesystem does not use:
    // the guest reads them raw, each one a store round trip (then cached).
    const store = new MemoryBlockStore();
    const last = 4096 * 16 - 1;
    const blocks = Array.from({ length: STORE_BLOCKS }, (_, i) => last - i * 3);
    const image = (await import(join(api.__root, "dist/src/sandbox.js"))).findImage("debian:12");
    await store.write(blocks.map((b) => ({ index: BigInt(b), bytes: new Uint8Array(65536).fill(b & 0xff) })), { base: image.sha256 });
    const lane = await defineSandbox({ rootfs: rootfs.cow({ base, writable: store }) }).boot();
    try {
      const r = await lane.exec("python3", ["-c", guestBlockReads(blocks)]);
      out.blockStoreMs = JSON.parse(r.stdout);
    } finally {
      await lane.close();
    }
  }
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const at = process.argv.indexOf("--root");
  const root = resolve(at > 0 ? process.argv[at + 1] : join(import.meta.dirname, "../.."));
  const api = { ...(await import(join(root, "dist/src/index.js"))), __root: root };
  console.log(JSON.stringify(await roundTrips(api)));
}
