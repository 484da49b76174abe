// lane.fs benchmarks against the guest tools doing the same job in the same
// run and the same VM, alternating, median of BENCH_FILES_ROUNDS:
//  - lane.upload of a 10,000-file host tree vs `tar -c` on the host piped into
//    lane.spawn("tar", ["-x"])'s stdin;
//  - readFile of a 100 MB guest file vs exec("cat") of it (and vs spawn("cat")
//    read as bytes, the reference without exec's string decoding).
//
// Standalone: `node scripts/bench/files.mjs` prints JSON; scripts/bench.mjs
// includes it as `laneFs` (BENCH_FILES=0 skips it). Env: BENCH_FILES_MB
// (default 100), BENCH_FILES_ROUNDS (default 3), BENCH_IMAGE.
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const round = (x) => Math.round(x * 100) / 100;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function benchFiles({ image = process.env.BENCH_IMAGE ?? "debian:12", log = (m) => process.stderr.write(`[bench:files] ${m}\n`) } = {}) {
  const { defineSandbox, rootfs } = await import(join(root, "dist/src/index.js"));
  const MB = Number(process.env.BENCH_FILES_MB ?? 100);
  const ROUNDS = Number(process.env.BENCH_FILES_ROUNDS ?? 3);
  const bytes = MB * 1_000_000;
  const lane = await defineSandbox({ rootfs: rootfs.builtIn(image), resources: { memoryMiB: 1024 } }).boot();
  try {
    const mk = await lane.exec("sh", ["-c", `head -c ${bytes} /dev/urandom > /tmp/big && wc -c < /tmp/big`]);
    if (Number(mk.stdout.trim()) !== bytes) throw new Error(`could not make the guest file: ${mk.stderr}`);
    const time = async (f) => {
      const t = performance.now();
      const n = await f();
      if (n !== bytes) throw new Error(`read ${n} of ${bytes} bytes`);
      return (performance.now() - t) / 1000;
    };
    const runs = { readFile: [], execCat: [], spawnCat: [] };
    for (let i = 0; i < ROUNDS; i++) {
      runs.readFile.push(await time(async () => (await lane.fs.readFile("/tmp/big")).length));
      // exec decodes stdout as UTF-8 (random bytes grow into U+FFFD), so only its exit is checked.
      runs.execCat.push(await time(async () => ((await lane.exec("cat", ["/tmp/big"], { maxOutputBytes: bytes * 2 })).exitCode === 0 ? bytes : -1)));
      runs.spawnCat.push(
        await time(async () => {
          const p = lane.spawn("cat", ["/tmp/big"]);
          let n = 0;
          for await (const c of p.stdout) n += c.length;
          await p.exit;
          return n;
        }),
      );
      log(`round ${i + 1}: readFile ${runs.readFile.at(-1).toFixed(2)} s, exec cat ${runs.execCat.at(-1).toFixed(2)} s, spawn cat ${runs.spawnCat.at(-1).toFixed(2)} s`);
    }
    // --- upload of a 10,000-file tree ---
    const src = mkdtempSync(join(tmpdir(), "bench-files-"));
    for (let d = 0; d < 100; d++) {
      mkdirSync(join(src, `d${d}`));
      for (let f = 0; f < 100; f++) writeFileSync(join(src, `d${d}`, `f${f}`), `${d}/${f}\n`.repeat(1 + (f % 16)));
    }
    const count = async (dir) => Number((await lane.exec("sh", ["-c", `find ${dir} -type f | wc -l`])).stdout.trim());
    const up = { upload: [], tarPipe: [] };
    try {
      for (let i = 0; i < ROUNDS; i++) {
        let t = performance.now();
        await lane.upload(src, `/tmp/up-a${i}`);
        up.upload.push((performance.now() - t) / 1000);
        t = performance.now();
        const p = lane.spawn("sh", ["-c", `mkdir -p /tmp/up-b${i} && tar -x -C /tmp/up-b${i}`]);
        const tar = spawn("tar", ["-c", "-C", src, "."], { stdio: ["ignore", "pipe", "inherit"] });
        await Readable.toWeb(tar.stdout).pipeTo(p.stdin);
        const exit = await p.exit;
        up.tarPipe.push((performance.now() - t) / 1000);
        if (exit.exitCode !== 0) throw new Error(`guest tar -x failed: ${exit.exitCode}`);
        const [a, b] = [await count(`/tmp/up-a${i}`), await count(`/tmp/up-b${i}`)];
        if (a !== 10_000 || b !== 10_000) throw new Error(`uploaded ${a} and ${b} files, not 10000`);
        await lane.exec("rm", ["-rf", `/tmp/up-a${i}`, `/tmp/up-b${i}`]);
        log(`round ${i + 1}: upload ${up.upload.at(-1).toFixed(2)} s, tar -c | spawn(tar -x) ${up.tarPipe.at(-1).toFixed(2)} s`);
      }
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
    const [ul, tp] = [median(up.upload), median(up.tarPipe)];
    const mbs = (s) => round(bytes / 1e6 / s);
    const [rf, ec, sc] = [median(runs.readFile), median(runs.execCat), median(runs.spawnCat)];
    return {
      upload: {
        files: 10_000,
        rounds: ROUNDS,
        uploadS: round(ul),
        tarPipeS: round(tp),
        // Target ≥ 1.0: upload at least as fast as tar -c | lane.spawn("tar", ["-x"]).
        ratio: round(tp / ul),
      },
      readFile: {
        megabytes: MB,
        rounds: ROUNDS,
        readFileMBs: mbs(rf),
        execCatMBs: mbs(ec),
        spawnCatMBs: mbs(sc),
        // Target ≥ 1.0: readFile at least as fast as exec("cat").
        ratioVsExecCat: round(ec / rf),
        ratioVsSpawnCat: round(sc / rf),
      },
    };
  } finally {
    await lane.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify({ date: new Date().toISOString(), laneFs: await benchFiles() }, null, 2));
}
