// Virtual filesystem benchmarks, each against the guest's tmpfs in the same
// run and the same VM: small-file create+write+close / read-back (ops/s),
// 100 MB sequential write/read (MB/s), the per-operation round trip of one
// FUSE request (guest fstat on a mount vs on tmpfs) with the share spent in
// the JavaScript filesystem, and boot time with and without a mount.
//
// Standalone: `node scripts/bench/fs.mjs` prints JSON; scripts/bench.mjs
// includes it as `virtualFs`. Env: BENCH_FS_BOOTS (default 4),
// BENCH_FS_FILES (default 1000), BENCH_FS_MB (default 100), BENCH_IMAGE.
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

const round = (x) => Math.round(x * 100) / 100;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

// Guest-side timing: nothing here depends on host wall clock or helper overhead outside the measured loop.
const GUEST = String.raw`
import os, sys, time
base, files, mb, stats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(base, exist_ok=True)
payload = b"x" * 512
t = time.perf_counter()
for i in range(files):
    fd = os.open(f"{base}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, payload)
    os.close(fd)
create = time.perf_counter() - t
t = time.perf_counter()
for i in range(files):
    fd = os.open(f"{base}/f{i}", os.O_RDONLY)
    assert os.read(fd, 4096) == payload
    os.close(fd)
readback = time.perf_counter() - t
chunk = b"\xa5" * (1 << 20)
t = time.perf_counter()
fd = os.open(f"{base}/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for _ in range(mb):
    os.write(fd, chunk)
os.close(fd)
write = time.perf_counter() - t
t = time.perf_counter()
fd = os.open(f"{base}/big", os.O_RDONLY)
n = 0
while True:
    b = os.read(fd, 1 << 20)
    if not b:
        break
    n += len(b)
os.close(fd)
read = time.perf_counter() - t
assert n == mb << 20, n
fd = os.open(f"{base}/f0", os.O_RDONLY)
t = time.perf_counter()
for _ in range(stats):
    os.fstat(fd)
fstat = time.perf_counter() - t
os.close(fd)
os.unlink(f"{base}/big")
for i in range(files):
    os.unlink(f"{base}/f{i}")
print(create, readback, write, read, fstat)
`;

/** Wraps a SandboxFileSystem so the time spent inside its calls is counted. */
function timed(inner) {
  const acc = { calls: 0, ms: 0 };
  const wrap = (fn, self) => async (...args) => {
    const t = performance.now();
    try {
      return await fn.apply(self, args);
    } finally {
      acc.calls++;
      acc.ms += performance.now() - t;
    }
  };
  const fsObj = {};
  for (const k of ["lstat", "readdir", "mkdir", "rmdir", "unlink", "rename", "symlink", "readlink", "link", "chmod", "truncate", "utimes", "lutimes", "lchown"]) {
    if (typeof inner[k] === "function") fsObj[k] = wrap(inner[k], inner);
  }
  fsObj.open = async (...args) => {
    const h = await wrap(inner.open, inner)(...args);
    return {
      read: wrap(h.read, h),
      write: wrap(h.write, h),
      stat: wrap(h.stat, h),
      truncate: wrap(h.truncate, h),
      sync: h.sync ? wrap(h.sync, h) : undefined,
      close: wrap(h.close, h),
    };
  };
  return { fs: fsObj, acc };
}

export async function benchFs({ image = process.env.BENCH_IMAGE ?? "debian:12", log = (m) => process.stderr.write(`[bench:fs] ${m}\n`) } = {}) {
  const { defineSandbox, fs, rootfs } = await import(join(root, "dist/src/index.js"));
  const BOOTS = Number(process.env.BENCH_FS_BOOTS ?? 4);
  const FILES = Number(process.env.BENCH_FS_FILES ?? 1000);
  const MB = Number(process.env.BENCH_FS_MB ?? 100);
  const STATS = 2000;
  const sandbox = defineSandbox({ rootfs: rootfs.builtIn(image), resources: { cpus: 1, memoryMiB: 1024 } });

  log(`boot with and without a memfs mount, ${BOOTS} each, alternating`);
  const plain = [];
  const mounted = [];
  for (let i = 0; i < BOOTS; i++) {
    for (const withMount of [false, true]) {
      const t = performance.now();
      const lane = await sandbox.boot(withMount ? { mounts: { "/workspace": fs.virtual(fs.memory()) } } : {});
      await lane.exec("true");
      (withMount ? mounted : plain).push(performance.now() - t);
      await lane.close();
    }
  }

  const memory = fs.memory({ files: { "/bench.py": GUEST } });
  const { fs: counted, acc } = timed(memory.promises);
  const lane = await sandbox.boot({ mounts: { "/workspace": fs.virtual(counted) } });
  const run = async (dir) => {
    const r = await lane.exec("python3", ["/workspace/bench.py", dir, String(FILES), String(MB), String(STATS)], { timeoutMs: 1_800_000 });
    if (r.exitCode !== 0) throw new Error(`guest benchmark failed: ${r.stderr}`);
    const [create, readback, write, read, fstat] = r.stdout.trim().split(/\s+/).map(Number);
    return { create, readback, write, read, fstat };
  };
  const mountRuns = [];
  const tmpfsRuns = [];
  let jsCalls = 0;
  let jsMs = 0;
  for (let i = 0; i < 3; i++) {
    log(`run ${i + 1}/3: ${FILES} small files, ${MB} MB sequential, ${STATS} fstat — tmpfs, then memfs mount`);
    tmpfsRuns.push(await run(`/tmp/bench-${i}`));
    const before = { calls: acc.calls, ms: acc.ms };
    mountRuns.push(await run(`/workspace/bench-${i}`));
    jsCalls += acc.calls - before.calls;
    jsMs += acc.ms - before.ms;
  }
  await lane.close();

  const pick = (runs, k) => median(runs.map((r) => r[k]));
  const m = Object.fromEntries(["create", "readback", "write", "read", "fstat"].map((k) => [k, pick(mountRuns, k)]));
  const t = Object.fromEntries(["create", "readback", "write", "read", "fstat"].map((k) => [k, pick(tmpfsRuns, k)]));
  const opsPerS = (n, s) => round(n / s);
  const mbPerS = (s) => round(MB / s);
  const rttUs = ((m.fstat - t.fstat) / STATS) * 1e6;
  return {
    image,
    bootToFirstExecMs: { withoutMount: round(median(plain)), withMount: round(median(mounted)), ratio: round(median(mounted) / median(plain)), boots: BOOTS },
    smallFiles: {
      files: FILES,
      createWriteCloseOpsPerS: { memfsMount: opsPerS(FILES, m.create), tmpfs: opsPerS(FILES, t.create), ratio: round(t.create / m.create) },
      readBackOpsPerS: { memfsMount: opsPerS(FILES, m.readback), tmpfs: opsPerS(FILES, t.readback), ratio: round(t.readback / m.readback) },
    },
    sequential: {
      megabytes: MB,
      writeMBs: { memfsMount: mbPerS(m.write), tmpfs: mbPerS(t.write), ratio: round(t.write / m.write) },
      readMBs: { memfsMount: mbPerS(m.read), tmpfs: mbPerS(t.read), ratio: round(t.read / m.read) },
    },
    perOperation: {
      // One FUSE GETATTR per fstat (attribute timeout 0): guest → helper → Node → back.
      roundTripUs: round(rttUs),
      guestFstatOnTmpfsUs: round((t.fstat / STATS) * 1e6),
      // Time spent inside the JavaScript filesystem's own calls, averaged over every call of the mount runs.
      jsFilesystemCallUs: round((jsMs / Math.max(1, jsCalls)) * 1000),
      jsFilesystemCalls: jsCalls,
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify({ date: new Date().toISOString(), virtualFs: await benchFs() }, null, 2));
}
