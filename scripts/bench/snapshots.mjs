// Snapshot benchmarks, against cold boots measured in the same run:
//  - restore-to-first-exec (snapshot.boot() until exec("true") resolves) p50
//    vs cold boot-to-first-exec p50 (target ≤ 0.15×);
//  - checkpoint time (whole call, and the guest's pause) of a 512 MiB guest;
//  - the same for a rootfs.cow lane whose store holds 64 MiB the capture
//    copies after the guest resumed, and that fork's restore-to-first-exec;
//  - 10 forks alive at once: total PSS of their VMMs + helpers vs one cold
//    lane's (target ≤ 2×);
//  - 10 concurrent restores: time until all answered exec("true").
//
// Standalone: `node scripts/bench/snapshots.mjs` prints JSON; scripts/bench.mjs
// includes it as `snapshots`. Env: BENCH_SNAP_BOOTS (default 3), BENCH_SNAP_RESTORES
// (default 5), BENCH_SNAP_FORKS (default 10), BENCH_IMAGE (default debian:12).
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const round = (x) => Math.round(x * 100) / 100;

/** Proportional set size of a process, bytes (shared pages split among their users). */
function pss(pid) {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}
const lanePss = (lane) => pss(lane.info.vmmPid) + pss(lane.info.helperPid);

export async function benchSnapshots({ image = process.env.BENCH_IMAGE ?? "debian:12", log = () => {} } = {}) {
  const { defineSandbox, rootfs, MemoryBlockStore } = await import(join(root, "dist/src/index.js"));
  const boots = Number(process.env.BENCH_SNAP_BOOTS ?? 3);
  const restores = Number(process.env.BENCH_SNAP_RESTORES ?? 5);
  const forks = Number(process.env.BENCH_SNAP_FORKS ?? 10);
  const sandbox = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn(image) }), resources: { cpus: 1, memoryMiB: 512 } });

  const cold = [];
  let coldPss = 0;
  for (let i = 0; i < boots; i++) {
    const t = performance.now();
    const lane = await sandbox.boot();
    await lane.exec("true");
    cold.push(performance.now() - t);
    // Settled a moment, like the forks below.
    await new Promise((r) => setTimeout(r, 1000));
    coldPss = lanePss(lane);
    await lane.close();
  }
  log(`snapshots: cold boot-to-first-exec p50 ${round(median(cold))} ms`);

  const lane = await sandbox.boot();
  // Touch some memory the way a workload would, so the checkpoint has pages to copy.
  await lane.exec("sh", ["-c", "head -c 64M /dev/urandom > /dev/shm/fill"]);
  const t0 = performance.now();
  const snap = await lane.checkpoint();
  const checkpointMs = performance.now() - t0;
  await lane.close();
  log(`snapshots: checkpoint ${round(checkpointMs)} ms (paused ${snap.stats.pausedMs} ms, ${snap.stats.ramBytes >> 20} MiB RAM)`);

  const cow = await benchCowCheckpoint(defineSandbox, rootfs, MemoryBlockStore, image);
  log(`snapshots: rootfs.cow checkpoint ${cow.totalMs} ms (paused ${cow.pausedMs} ms, disk ${cow.diskBytes >> 20} MiB), its fork's first exec ${cow.restoreToFirstExecMs} ms`);

  const restored = [];
  for (let i = 0; i < restores; i++) {
    const t = performance.now();
    const fork = await snap.boot();
    await fork.exec("true");
    restored.push(performance.now() - t);
    await fork.close();
  }
  log(`snapshots: restore-to-first-exec p50 ${round(median(restored))} ms`);

  const t1 = performance.now();
  const alive = await Promise.all(
    Array.from({ length: forks }, async () => {
      const f = await snap.boot();
      await f.exec("true");
      return f;
    }),
  );
  const concurrentMs = performance.now() - t1;
  await new Promise((r) => setTimeout(r, 1000));
  const forksPss = alive.reduce((sum, f) => sum + lanePss(f), 0);
  await Promise.all(alive.map((f) => f.close()));
  await snap.delete();
  log(`snapshots: ${forks} forks PSS ${forksPss >> 20} MiB vs one cold lane ${coldPss >> 20} MiB`);

  const ratio = median(restored) / median(cold);
  return {
    coldBootToFirstExecMs: { n: cold.length, p50: round(median(cold)) },
    restoreToFirstExecMs: { n: restored.length, p50: round(median(restored)) },
    restoreVsColdRatio: round(ratio),
    restoreRatioMax: 0.15,
    restoreOk: ratio <= 0.15,
    checkpoint512MiB: { totalMs: round(checkpointMs), pausedMs: snap.stats.pausedMs, ramBytes: snap.stats.ramBytes, diskBytes: snap.stats.diskBytes },
    cowCheckpoint512MiB: cow,
    forks: {
      count: forks,
      concurrentRestoreToAllExecMs: round(concurrentMs),
      totalPssMiB: round(forksPss / 2 ** 20),
      coldLanePssMiB: round(coldPss / 2 ** 20),
      pssRatio: round(forksPss / coldPss),
      pssRatioMax: 2,
      pssOk: forksPss / coldPss <= 2,
    },
  };
}

/**
 * A rootfs.cow lane: 64 MiB in its store (written, synced, caches dropped so
 * only the store has them) and 64 MiB in guest memory; the checkpoint pins the
 * store and copies it after the guest resumed.
 */
async function benchCowCheckpoint(defineSandbox, rootfs, MemoryBlockStore, image) {
  const sandbox = defineSandbox({
    rootfs: rootfs.cow({ base: rootfs.builtIn(image), writable: new MemoryBlockStore() }),
    resources: { cpus: 1, memoryMiB: 512 },
  });
  const lane = await sandbox.boot();
  try {
    await lane.exec("sh", ["-c", "head -c 64M /dev/urandom > /root/stored && sync && echo 3 > /proc/sys/vm/drop_caches"]);
    await lane.exec("sh", ["-c", "head -c 64M /dev/urandom > /dev/shm/fill"]);
    const t = performance.now();
    const snap = await lane.checkpoint();
    const totalMs = performance.now() - t;
    try {
      const r = performance.now();
      const fork = await snap.boot();
      await fork.exec("true");
      const restoreMs = performance.now() - r;
      await fork.close();
      return { totalMs: round(totalMs), pausedMs: snap.stats.pausedMs, diskBytes: snap.stats.diskBytes, restoreToFirstExecMs: round(restoreMs) };
    } finally {
      await snap.delete();
    }
  } finally {
    await lane.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const log = (m) => process.stderr.write(`[bench] ${m}\n`);
  console.log(JSON.stringify({ date: new Date().toISOString(), snapshots: await benchSnapshots({ log }) }, null, 2));
}
