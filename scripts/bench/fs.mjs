// Virtual filesystem benchmarks, each against the guest's tmpfs in the same
// run and the same VM: small-file create+write+close / read-back (ops/s),
// 100 MB sequential write/read (MB/s), the per-operation round trip of one
// FUSE request (guest fstat on a mount vs on tmpfs) with the share spent in
// the JavaScript filesystem, and boot time with and without a mount.
//
// Its `mounts` section compares `fs.hostDir` (on a host tmpfs directory) and
// `fs.memory` with the C virtiofsd shipped with QEMU serving a host tmpfs
// directory, all three mounted in one VM: small-file create / stat / read /
// readdir / unlink, `git clone` of a ~2,000-file repository into the mount,
// `git status` in the clone, 100 MB sequential write / read (guest-timed);
// each ratio is virtiofsd's time over the mount's (≥ 1: faster than virtiofsd).
// A fourth mount, `jsFloor` (see floorFileSystem), runs the small-file rows as
// the ceiling of any mount served from Node here.
//
// Standalone: `node scripts/bench/fs.mjs` prints JSON; scripts/bench.mjs
// includes it as `virtualFs`. Env: BENCH_FS_BOOTS (default 4),
// BENCH_FS_FILES (default 1000), BENCH_FS_MB (default 100), BENCH_IMAGE,
// BENCH_FS_ONLY=mounts (just the virtiofsd comparison), BENCH_FS_RUNS (runs
// of the mounts section, median, default 3: single runs swing ±0.1 here), BENCH_FS_REPO_FILES (default
// 2000), VIRTIOFSD (default /usr/lib/qemu/virtiofsd), BENCH_FS_ATTR_MS (the
// mounts' `attributeCacheMs`, default 1000 = virtiofsd's cache=auto; 0: never cached).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

const round = (x) => Math.round(x * 100) / 100;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

// One 100 MB sequential write and read-back, shared by both guest scripts.
const BIG_FILE_PY = String.raw`
chunk = b"\xa5" * (1 << 20)
def write_big(path, mb):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(mb):
        os.write(fd, chunk)
    os.close(fd)
def read_big(path, mb):
    fd = os.open(path, os.O_RDONLY)
    n = 0
    while True:
        r = os.read(fd, 1 << 20)
        if not r:
            break
        n += len(r)
    os.close(fd)
    assert n == mb << 20, n
`;

// Guest-side timing: nothing here depends on host wall clock or helper overhead outside the measured loop.
const GUEST = String.raw`
import os, sys, time
${BIG_FILE_PY}base, files, mb, stats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
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
t = time.perf_counter()
write_big(f"{base}/big", mb)
write = time.perf_counter() - t
t = time.perf_counter()
read_big(f"{base}/big", mb)
read = time.perf_counter() - t
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

/**
 * The least a JavaScript filesystem can do for the small-file rows: names in
 * a Map, one shared payload, answers built without any filesystem library.
 * Its row is the ceiling of any mount served from Node on this machine (every
 * request still crosses the helper, the socket and the mount server), so
 * `fs.memory`'s share of it tells the transport's cost from memfs' own.
 */
function floorFileSystem() {
  const S_IFDIR = 0o040000;
  const S_IFREG = 0o100000;
  const nodes = new Map([["/", { ino: 1, mode: S_IFDIR | 0o755, size: 0 }]]);
  let ino = 1;
  const err = (code) => Object.assign(new Error(code), { code });
  const ENOENT = err("ENOENT");
  const EEXIST = err("EEXIST");
  const stats = (n) => ({ ino: n.ino, size: n.size, mode: n.mode, nlink: 1, uid: 0, gid: 0, atimeMs: 0, mtimeMs: 0, ctimeMs: 0 });
  const get = (path) => nodes.get(path) ?? Promise.reject(ENOENT);
  const children = (dir) => [...nodes.keys()].filter((p) => p !== dir && p.slice(0, p.lastIndexOf("/") || 1) === dir);
  const handle = (n) => ({
    read: async (buf, offset, length, position) => {
      const bytesRead = Math.max(0, Math.min(length, n.size - position));
      buf.fill(0x78, offset, offset + bytesRead);
      return { bytesRead };
    },
    write: async (_buf, _offset, length, position) => {
      n.size = Math.max(n.size, position + length);
      return { bytesWritten: length };
    },
    stat: async () => stats(n),
    truncate: async (length) => void (n.size = length),
    close: async () => {},
  });
  const ok = async () => {};
  return {
    lstat: async (path) => stats(await get(path)),
    readdir: async (path) => children(path).map((p) => p.slice(p.lastIndexOf("/") + 1)),
    listDirectory: async (path) => children(path).map((p) => ({ name: p.slice(p.lastIndexOf("/") + 1), ino: nodes.get(p).ino, mode: nodes.get(p).mode })),
    open: async (path, flags, mode = 0o644) => {
      let n = nodes.get(path);
      if (!n) {
        if (!(flags & 0o100)) throw ENOENT;
        n = { ino: ++ino, mode: S_IFREG | (mode & 0o7777), size: 0 };
        nodes.set(path, n);
      }
      return handle(n);
    },
    mkdir: async (path, mode = 0o755) => {
      if (nodes.has(path)) throw EEXIST;
      nodes.set(path, { ino: ++ino, mode: S_IFDIR | (mode & 0o7777), size: 0 });
    },
    rmdir: async (path) => {
      if (!nodes.delete(path)) throw ENOENT;
    },
    unlink: async (path) => {
      if (!nodes.delete(path)) throw ENOENT;
    },
    chmod: async (path, mode) => {
      const n = await get(path);
      n.mode = (n.mode & ~0o7777) | (mode & 0o7777);
    },
    rename: ok,
    symlink: ok,
    readlink: async () => Promise.reject(ENOENT),
    link: ok,
    truncate: async (path, length) => void ((await get(path)).size = length),
    utimes: ok,
  };
}

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

// The mounts section's guest side: every row timed in the guest, printed as JSON.
// Each phase runs on every mount back to back (order rotated per phase), so a
// change of host load hits all of them alike.
const ROWS = String.raw`
import json, os, subprocess, sys, time
${BIG_FILE_PY}files, mb, src = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
bases = dict(a.split("=", 1) for a in sys.argv[4:])
git = ["git", "-c", "safe.directory=*", "-c", "core.fsync=none"]
out = {k: {} for k in bases}
payload = b"x" * 512
def create(b):
    os.makedirs(f"{b}/small")
    for i in range(files):
        fd = os.open(f"{b}/small/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, payload)
        os.close(fd)
def stat(b):
    for i in range(files):
        os.lstat(f"{b}/small/f{i}")
def read(b):
    for i in range(files):
        fd = os.open(f"{b}/small/f{i}", os.O_RDONLY)
        assert os.read(fd, 4096) == payload
        os.close(fd)
def readdir(b):
    for _ in range(10):
        assert len(os.listdir(f"{b}/small")) == files
def unlink(b):
    for i in range(files):
        os.unlink(f"{b}/small/f{i}")
def clone(b):
    subprocess.run(git + ["clone", "-q", "--no-local", src, f"{b}/clone"], check=True)
def status(b):
    subprocess.run(git + ["-C", f"{b}/clone", "status", "--porcelain"], check=True, capture_output=True)
def write(b):
    write_big(f"{b}/big", mb)
def readbig(b):
    read_big(f"{b}/big", mb)
    os.unlink(f"{b}/big")
phases = [("create", create), ("stat", stat), ("read", read), ("readdir", readdir), ("unlink", unlink),
          ("gitClone", clone), (None, status), ("gitStatus", status), ("write", write), ("readBig", readbig)]
names = list(bases)
small = {"create", "stat", "read", "readdir", "unlink"}
for n, (row, fn) in enumerate(phases):
    for k in names[n % len(names):] + names[:n % len(names)]:
        if k == "jsFloor" and row not in small:
            continue
        t = time.perf_counter()
        fn(bases[k])
        if row:
            out[k][row] = time.perf_counter() - t
print(json.dumps(out))
`;

// A source repository of ~`files` files in 100 directories, built in the guest's tmpfs.
const MAKE_REPO = String.raw`
import os, subprocess, sys
src, files = sys.argv[1], int(sys.argv[2])
for i in range(files):
    p = f"{src}/d{i % 100}/sub{i % 7}"
    os.makedirs(p, exist_ok=True)
    with open(f"{p}/file{i}.txt", "w") as f:
        f.write(("line %d of file %d\n" % (i, i)) * (1 + i % 60))
g = ["git", "-C", src, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
subprocess.run(["git", "init", "-q", src], check=True)
subprocess.run(g + ["add", "-A"], check=True)
subprocess.run(g + ["commit", "-q", "-m", "bench"], check=True)
`;

/** Starts the C virtiofsd on `dir`; resolves once its socket is there. */
async function startVirtiofsd(bin, dir, socket) {
  const child = spawn(bin, [`--socket-path=${socket}`, "-o", `source=${dir}`, "-o", "cache=auto", "-o", "sandbox=chroot", "-o", "log_level=err"], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (b) => (stderr += b));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  for (let i = 0; i < 500 && !existsSync(socket); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  if (!existsSync(socket)) {
    child.kill("SIGKILL");
    throw new Error(`virtiofsd did not listen on ${socket}: ${stderr}`);
  }
  return {
    stop: async () => {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

/** fs.hostDir, fs.memory and the C virtiofsd as mounts of one VM, each row against virtiofsd. */
export async function benchMounts({ image = process.env.BENCH_IMAGE ?? "debian:12", log = (m) => process.stderr.write(`[bench:fs] ${m}\n`) } = {}) {
  const { defineSandbox, fs, rootfs } = await import(join(root, "dist/src/index.js"));
  const { bootLane } = await import(join(root, "dist/src/sandbox.js"));
  const FILES = Number(process.env.BENCH_FS_FILES ?? 1000);
  const MB = Number(process.env.BENCH_FS_MB ?? 100);
  const RUNS = Number(process.env.BENCH_FS_RUNS ?? 3);
  const REPO_FILES = Number(process.env.BENCH_FS_REPO_FILES ?? 2000);
  const bin = process.env.VIRTIOFSD ?? "/usr/lib/qemu/virtiofsd";
  const ATTR_MS = Number(process.env.BENCH_FS_ATTR_MS ?? 1000);
  const shm = existsSync("/dev/shm") ? "/dev/shm" : undefined;
  if (!shm) throw new Error("the mounts bench needs a host tmpfs at /dev/shm");
  const hostDir = mkdtempSync(join(shm, "sbx-bench-hostdir-"));
  const vfsdDir = mkdtempSync(join(shm, "sbx-bench-virtiofsd-"));
  const socket = join(mkdtempSync(join(shm, "sbx-bench-sock-")), "virtiofsd.sock");
  const { definition } = defineSandbox({ rootfs: rootfs.builtIn(image), resources: { cpus: 1, memoryMiB: 1024, backend: "qemu" } });
  const kinds = ["hostDir", "memory", "jsFloor", "virtiofsd"];
  const targets = { hostDir: "/tmp/m-hostdir", memory: "/tmp/m-memory", jsFloor: "/tmp/m-jsfloor", virtiofsd: "/tmp/m-virtiofsd" };
  const vfsd = await startVirtiofsd(bin, vfsdDir, socket);
  let lane;
  try {
    // The virtiofsd mount is a placeholder on our side; its device is swapped for the external socket.
    const opts = { attributeCacheMs: ATTR_MS };
    const mounts = {
      [targets.hostDir]: fs.virtual(fs.hostDir(hostDir), opts),
      [targets.memory]: fs.virtual(fs.memory(), opts),
      [targets.jsFloor]: fs.virtual(floorFileSystem(), opts),
      [targets.virtiofsd]: fs.virtual(fs.memory()),
    };
    lane = await bootLane(definition.rootfs, definition.resources, { mounts }, undefined, {
      transformLaunch: (l) => {
        // Mounts of equal depth keep their order: the last one is virtiofsd's.
        if (l.mounts.length !== kinds.length) throw new Error(`expected ${kinds.length} mounts, got ${l.mounts.length}`);
        return { ...l, mounts: l.mounts.map((m, i) => (i === kinds.length - 1 ? { ...m, externalSocket: socket } : m)) };
      },
    });
    const py = async (script, args) => {
      const r = await lane.exec("python3", ["-c", script, ...args], { timeoutMs: 1_800_000, env: { HOME: "/tmp" } });
      if (r.exitCode !== 0) throw new Error(`guest benchmark failed: ${r.stderr}`);
      return r.stdout;
    };
    const probe = await lane.exec("sh", ["-c", `grep -c ' ${targets.virtiofsd} virtiofs ' /proc/mounts`]);
    if (probe.stdout.trim() !== "1") throw new Error(`virtiofsd mount missing in the guest: ${probe.stdout}${probe.stderr}`);
    log(`mounts: building a ${REPO_FILES}-file git repository in the guest's tmpfs`);
    await py(MAKE_REPO, ["/tmp/src-repo", String(REPO_FILES)]);
    const runs = Object.fromEntries(kinds.map((k) => [k, []]));
    for (let i = 0; i < RUNS; i++) {
      log(`mounts run ${i + 1}/${RUNS}: ${kinds.join(", ")}, interleaved phase by phase`);
      const t = performance.now();
      const got = JSON.parse(await py(ROWS, [String(FILES), String(MB), "/tmp/src-repo", ...kinds.map((k) => `${k}=${targets[k]}/run-${i}`)]));
      for (const k of kinds) runs[k].push(got[k]);
      log(`  ${round((performance.now() - t) / 1000)} s`);
    }
    const rows = ["create", "stat", "read", "readdir", "unlink", "gitClone", "gitStatus", "write", "readBig"];
    const seconds = Object.fromEntries(kinds.map((k) => [k, Object.fromEntries(rows.map((r) => [r, median(runs[k].map((x) => x[r]))]))]));
    const row = (r, unit, value) => {
      const measured = kinds.filter((k) => seconds[k][r] !== undefined);
      const v = Object.fromEntries(measured.map((k) => [k, round(value(seconds[k][r]))]));
      const ratios = { hostDirRatio: round(seconds.virtiofsd[r] / seconds.hostDir[r]), memoryRatio: round(seconds.virtiofsd[r] / seconds.memory[r]) };
      // The small-file rows also have the JavaScript floor: its ratio, and fs.memory's share of it.
      if (seconds.jsFloor[r] !== undefined) Object.assign(ratios, { jsFloorRatio: round(seconds.virtiofsd[r] / seconds.jsFloor[r]), memoryOfFloor: round(seconds.jsFloor[r] / seconds.memory[r]) });
      return { unit, ...v, ...ratios };
    };
    const ops = (n) => (s) => n / s;
    const ms = (s) => s * 1000;
    return {
      reference: `${bin} -o cache=auto on a host tmpfs`,
      floor: "jsFloor: the least a JavaScript filesystem can do (names in a Map), the ceiling of any Node-served mount here",
      attributeCacheMs: ATTR_MS,
      files: FILES,
      repoFiles: REPO_FILES,
      megabytes: MB,
      runs: RUNS,
      rows: {
        create: row("create", "ops/s", ops(FILES)),
        stat: row("stat", "ops/s", ops(FILES)),
        read: row("read", "ops/s", ops(FILES)),
        readdir: row("readdir", "listings/s", ops(10)),
        unlink: row("unlink", "ops/s", ops(FILES)),
        gitClone: row("gitClone", "ms", ms),
        gitStatus: row("gitStatus", "ms", ms),
        seqWrite: row("write", "MB/s", ops(MB)),
        seqRead: row("readBig", "MB/s", ops(MB)),
      },
    };
  } finally {
    await lane?.close();
    await vfsd.stop();
    for (const d of [hostDir, vfsdDir, dirname(socket)]) rmSync(d, { recursive: true, force: true });
  }
}

export async function benchFs({ image = process.env.BENCH_IMAGE ?? "debian:12", log = (m) => process.stderr.write(`[bench:fs] ${m}\n`) } = {}) {
  const mounts = await benchMounts({ image, log });
  if (process.env.BENCH_FS_ONLY === "mounts") return { image, mounts };
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
    mounts,
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
