// Head-of-line blocking between processes (issue 19 item 5): 100 concurrent
// spawn("sh", ["-c", "echo start; sleep 1; echo end"]) on one lane, against 100
// concurrent exec("true") on the same lane in the same run.
//
//   firstStartAfter  how many processes had reported `ready` when the first
//                    "start" line reached Node (target: below 50)
//   ratio            all 100 spawns done / all 100 exec("true") done (target ≤ 2)
//   guest            the same two workloads started by a shell inside the guest
//                    (100 background jobs, then `wait`): what the guest itself
//                    needs, so `guest.ratio` is the ceiling of `ratio` on this
//                    host (each spawn is two execs, sh and sleep, against one),
//                    and `toGuest` is our cost over the guest's own.
//
// Standalone: `node scripts/bench/spawns.mjs` prints JSON; scripts/bench.mjs
// includes it as `concurrentSpawns`. Env: BENCH_SPAWNS (default 100),
// BENCH_SPAWN_ROUNDS (default 3; medians reported).
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const round = (x) => Math.round(x * 100) / 100;

async function execTrues(lane, n) {
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: n }, () => lane.exec("true")));
  if (rs.some((r) => r.exitCode !== 0)) throw new Error("exec true failed");
  return performance.now() - t0;
}

async function spawns(lane, n) {
  const t0 = performance.now();
  let ready = 0;
  let firstStartAfter;
  let firstStartMs;
  const one = async () => {
    const p = lane.spawn("sh", ["-c", "echo start; sleep 1; echo end"]);
    p.ready.then(() => ready++, () => {});
    let out = "";
    const decoder = new TextDecoder();
    for await (const chunk of p.stdout) {
      out += decoder.decode(chunk, { stream: true });
      if (firstStartAfter === undefined && out.includes("start")) {
        firstStartAfter = ready;
        firstStartMs = performance.now() - t0;
      }
    }
    const exit = await p.exit;
    if (exit.exitCode !== 0 || out !== "start\nend\n") throw new Error(`spawn: exit ${exit.exitCode}, output ${JSON.stringify(out)}`);
    return performance.now() - t0;
  };
  const ends = await Promise.all(Array.from({ length: n }, one));
  ends.sort((a, b) => a - b);
  return { totalMs: ends.at(-1), p50EndMs: ends[ends.length >> 1], firstStartAfter, firstStartMs };
}

/** Guest wall time (ms) of n background jobs of `cmd` started by bash, then `wait`. */
async function guestJobs(lane, n, cmd) {
  const script = `s=$(date +%s%N); for i in $(seq ${n}); do ${cmd} & done; wait; e=$(date +%s%N); echo $(( (e - s) / 1000 ))`;
  const r = await lane.exec("bash", ["-c", script], { timeoutMs: 300_000 });
  if (r.exitCode !== 0) throw new Error(`guest jobs: ${r.stderr}`);
  return Number(r.stdout.trim()) / 1000;
}

export async function concurrentSpawns(api, { n = Number(process.env.BENCH_SPAWNS ?? 100), rounds = Number(process.env.BENCH_SPAWN_ROUNDS ?? 3) } = {}) {
  const { defineSandbox, rootfs } = api;
  const lane = await defineSandbox({ rootfs: rootfs.builtIn("debian:12") }).boot();
  try {
    await execTrues(lane, 10);
    const trues = [];
    const runs = [];
    const guestTrues = [];
    const guestSpawns = [];
    for (let i = 0; i < rounds; i++) {
      trues.push(await execTrues(lane, n));
      runs.push(await spawns(lane, n));
      guestTrues.push(await guestJobs(lane, n, "/bin/true"));
      guestSpawns.push(await guestJobs(lane, n, "sh -c 'echo start; sleep 1; echo end' >/dev/null"));
    }
    const [gTrue, gSpawn] = [median(guestTrues), median(guestSpawns)];
    const total = median(runs.map((r) => r.totalMs));
    const trueMs = median(trues);
    return {
      processes: n,
      execTrueMs: round(trueMs),
      spawnTotalMs: round(total),
      spawnP50EndMs: round(median(runs.map((r) => r.p50EndMs))),
      firstStartAfter: median(runs.map((r) => r.firstStartAfter)),
      firstStartMs: round(median(runs.map((r) => r.firstStartMs))),
      ratio: round(total / trueMs),
      guest: { execTrueMs: round(gTrue), spawnTotalMs: round(gSpawn), ratio: round(gSpawn / gTrue) },
      toGuest: { execTrue: round(trueMs / gTrue), spawn: round(total / gSpawn) },
      targets: { firstStartAfterBelow: n / 2, ratioAtMost: 2 },
    };
  } finally {
    await lane.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  const api = await import(join(root, "dist/src/index.js"));
  console.log(JSON.stringify(await concurrentSpawns(api), null, 2));
}
