// Disk benchmark: the same guest workload on roots of one base image, run in the
// same process one after the other:
//   floor      QEMU opens a qcow2 overlay on the base image itself (virtio-blk,
//              cache=unsafe): the image as a plain read-write disk, no helper;
//   builtIn    rootfs.builtIn: QEMU reads the qcow2 itself, read-only;
//   ephemeral  rootfs.ephemeral: helper NBD copy-on-write, dirty blocks in memory;
//   cow        rootfs.cow with a DirectoryBlockStore: the same plus the Node block
//              bridge and a store on the host's disk.
// Two same-run references bound what cow's sequential write can reach here:
//   cowMemory  rootfs.cow with a MemoryBlockStore: the engine and the bridge with a
//              store that costs nothing (no disk, no fsync);
//   storeAlone the DirectoryBlockStore itself, driven from Node with the file's
//              bytes in the engine's batches (1 MiB, 8 in flight), then flush.
// Writable roots: a file in /root, bypassing the guest page cache (O_DIRECT):
// sequential 1 MiB writes and reads (MB/s) and 4 KiB random writes and reads (IOPS).
// Every root (builtIn included): O_DIRECT reads of the device itself (/dev/vda,
// clean base blocks): sequential MB/s and 4 KiB random IOPS.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

const FILE_MIB = Number(process.env.BENCH_DISK_MIB ?? 48);
const RANDOM_SECONDS = Number(process.env.BENCH_DISK_RANDOM_S ?? 3);
const ROUNDS = Number(process.env.BENCH_DISK_ROUNDS ?? 3);

// One script, run in the guest: prints JSON with the four measurements.
const guestScript = `
import os, mmap, random, time, json
path = "/root/bench.bin"
size = ${FILE_MIB} << 20
mib = mmap.mmap(-1, 1 << 20); mib.write(os.urandom(1 << 20))
page = mmap.mmap(-1, 4096); page.write(os.urandom(4096))
def seq(flags, op):
    fd = os.open(path, flags | os.O_DIRECT)
    t = time.perf_counter()
    for i in range(${FILE_MIB}):
        n = op(fd, i << 20)
        assert n == 1 << 20, n
    os.fsync(fd); os.close(fd)
    return ${FILE_MIB} * 1.048576 / (time.perf_counter() - t)
def rnd(flags, op):
    fd = os.open(path, flags | os.O_DIRECT)
    blocks = size // 4096; n = 0; rng = random.Random(7)
    t = time.perf_counter(); end = t + ${RANDOM_SECONDS}
    while time.perf_counter() < end:
        for _ in range(64):
            op(fd, rng.randrange(blocks) * 4096)
        n += 64
    os.fsync(fd); os.close(fd)
    return n / (time.perf_counter() - t)
w = seq(os.O_WRONLY | os.O_CREAT, lambda fd, off: os.pwritev(fd, [mib], off))
r = seq(os.O_RDONLY, lambda fd, off: os.preadv(fd, [mib], off))
rw = rnd(os.O_WRONLY, lambda fd, off: os.pwritev(fd, [page], off))
rr = rnd(os.O_RDONLY, lambda fd, off: os.preadv(fd, [page], off))
os.unlink(path); os.sync()
print(json.dumps({"seqWriteMBs": w, "seqReadMBs": r, "randWriteIops": rw, "randReadIops": rr}))
`;

// Reads of the block device itself: what a builtIn root can be measured on too.
const deviceScript = `
import os, mmap, random, time, json
span = ${FILE_MIB} << 20
buf = mmap.mmap(-1, 1 << 20); page = mmap.mmap(-1, 4096)
fd = os.open("/dev/vda", os.O_RDONLY | os.O_DIRECT)
t = time.perf_counter()
for i in range(${FILE_MIB}):
    assert os.preadv(fd, [buf], i << 20) == 1 << 20
seq = ${FILE_MIB} * 1.048576 / (time.perf_counter() - t)
rng = random.Random(11); n = 0
t = time.perf_counter(); end = t + ${RANDOM_SECONDS}
while time.perf_counter() < end:
    for _ in range(64):
        os.preadv(fd, [page], rng.randrange(span // 4096) * 4096)
    n += 64
rnd = n / (time.perf_counter() - t)
os.close(fd)
print(json.dumps({"deviceSeqReadMBs": seq, "deviceRandReadIops": rnd}))
`;

/** Runs the workload ROUNDS times on one freshly booted lane; returns per-metric samples. */
async function measure(boot, log, label, { writable = true } = {}) {
  const lane = await boot();
  const samples = writable
    ? { seqWriteMBs: [], seqReadMBs: [], randWriteIops: [], randReadIops: [], deviceSeqReadMBs: [], deviceRandReadIops: [] }
    : { deviceSeqReadMBs: [], deviceRandReadIops: [] };
  try {
    for (let i = 0; i < ROUNDS; i++) {
      const r = await lane.exec("sh", ["-c", writable ? 'python3 -c "$1" && python3 -c "$2"' : 'python3 -c "$2"', "sh", guestScript, deviceScript], { timeoutMs: 600_000 });
      if (r.exitCode !== 0) throw new Error(`${label} disk workload failed (${r.exitCode}): ${r.stderr.slice(-500)}`);
      const m = Object.assign({}, ...r.stdout.trim().split("\n").map((l) => JSON.parse(l)));
      for (const k of Object.keys(samples)) samples[k].push(m[k]);
      log(`disk ${label} ${i + 1}/${ROUNDS}: ${Object.entries(m).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ")}`);
    }
  } finally {
    await lane.close();
  }
  return samples;
}

/** MB/s of FILE_MIB written into a fresh store in the engine's pattern, flush included. */
async function storeWriteMBs(store) {
  const BS = 65536;
  const ctx = { base: "bench" };
  const blocks = (FILE_MIB << 20) / BS;
  const perBatch = (1 << 20) / BS;
  const t = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < blocks) {
      const first = next;
      next += perBatch;
      const chunks = [];
      for (let b = first; b < Math.min(first + perBatch, blocks); b++) chunks.push({ index: BigInt(b), bytes: new Uint8Array(BS).fill(b & 0xff) });
      await store.write(chunks, ctx);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  await store.flush(ctx);
  return (FILE_MIB * 1.048576) / ((performance.now() - t) / 1000);
}

/**
 * @param ctx { api: { rootfs, MemoryBlockStore }, bootLane, resources, image, work, stats, round, log }
 */
export async function diskBench(ctx) {
  const { api, bootLane, resources, image, work, stats, round, log } = ctx;
  const base = api.rootfs.builtIn(image.name);
  const overlay = join(work, "floor-overlay.qcow2");
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-b", image.path, "-F", image.format, overlay]);
  const floorBoot = () =>
    bootLane(base, resources, {}, undefined, {
      writableRoot: true,
      transformLaunch: (l) => ({ ...l, disks: [{ path: overlay, format: "qcow2", readOnly: false }] }),
    });
  const budget = 2 * FILE_MIB * 1048576 + 64 * 1048576;
  const ephemeralBoot = () => bootLane(api.rootfs.ephemeral({ base, maxDirtyBytes: budget }), resources, {}, undefined);
  const store = new api.DirectoryBlockStore(join(work, "cow-store"));
  const cowBoot = () => bootLane(api.rootfs.cow({ base, writable: store }), resources, {}, undefined);
  const builtInBoot = () => bootLane(base, resources, {}, undefined);
  const cowMemoryBoot = () => bootLane(api.rootfs.cow({ base, writable: new api.MemoryBlockStore() }), resources, {}, undefined);

  log(`disk: ${FILE_MIB} MiB file, ${RANDOM_SECONDS} s random phases, ${ROUNDS} rounds per root (floor: QEMU-opened qcow2 overlay)`);
  const floor = await measure(floorBoot, log, "floor");
  const builtIn = await measure(builtInBoot, log, "builtIn", { writable: false });
  const ephemeral = await measure(ephemeralBoot, log, "ephemeral");
  const cow = await measure(cowBoot, log, "cow");
  const cowMemory = await measure(cowMemoryBoot, log, "cowMemory");
  const storeAlone = [];
  for (let i = 0; i < ROUNDS; i++) {
    storeAlone.push(await storeWriteMBs(new api.DirectoryBlockStore(join(work, `store-alone-${i}`))));
    log(`disk storeAlone ${i + 1}/${ROUNDS}: ${Math.round(storeAlone.at(-1))} MB/s`);
  }

  const summarize = (s) => Object.fromEntries(Object.entries(s).map(([k, v]) => [k, stats(v)]));
  const ratios = (s) => Object.fromEntries(Object.keys(s).map((k) => [k, round(stats(s[k]).p50 / stats(floor[k]).p50)]));
  return {
    fileMiB: FILE_MIB,
    floor: summarize(floor),
    builtIn: summarize(builtIn),
    ephemeral: summarize(ephemeral),
    cow: summarize(cow),
    builtInRatio: ratios(builtIn),
    ephemeralRatio: ratios(ephemeral),
    cowRatio: ratios(cow),
    cowMemory: summarize(cowMemory),
    cowMemoryRatio: ratios(cowMemory),
    storeAloneWriteMBs: stats(storeAlone),
    // cow's sequential write against the lower of its two bounds in this run.
    cowSeqWriteOfCeiling: round(
      stats(cow.seqWriteMBs).p50 / Math.min(stats(cowMemory.seqWriteMBs).p50, stats(storeAlone).p50),
    ),
  };
}
