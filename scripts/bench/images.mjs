#!/usr/bin/env node
// Image import benchmark, its floor measured in the same run: a ~300 MiB
// image (real files: the host's /usr/lib and /usr/share, gzip layers by umoci)
// served by docker-registry on 127.0.0.1, fetched with `skopeo copy … dir:`
// (download + digest check, no unpacking: the floor) and imported with
// importImage (download, verify, decompress, ext4, qcow2), alternating, N
// rounds. Reports p50s and the ratio (target ≤ 2), for the default
// uncompressed qcow2 and once with compress: true.
// skopeo-to-dir never decompresses, so two more references are measured in
// the same rounds: the floor any import has (skopeo's fetch plus one
// `gzip -dc` of every layer to /dev/null) and the daemonless way to get a
// mere directory (`skopeo copy … oci:` + `umoci unpack --rootless`).
//
// Standalone: `node scripts/bench/images.mjs` (after `npm run setup` and
// scripts/setup-test-tools); also run by scripts/bench.mjs.
// Env: BENCH_IMAGE_MIB (default 300), BENCH_IMAGE_ROUNDS (default 3).
import { execFileSync, spawn } from "node:child_process";
import { cpSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const MIB = Number(process.env.BENCH_IMAGE_MIB ?? 300);
const ROUNDS = Number(process.env.BENCH_IMAGE_ROUNDS ?? 3);
const round = (x) => Math.round(x * 100) / 100;
const p50 = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Regular files under `dirs`, sorted, until `bytes` are reached (symlinks and dirs come along). */
function pickFiles(dirs, bytes) {
  const out = [];
  let total = 0;
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      if (total >= bytes) return;
      const p = join(d, name);
      let s;
      try {
        s = lstatSync(p);
      } catch {
        continue;
      }
      if (s.isDirectory()) walk(p);
      else if (s.isFile() && s.size < 8 << 20) {
        out.push(p);
        total += s.size;
      }
    }
  };
  for (const d of dirs) walk(d);
  return { files: out, total };
}

async function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRegistry(work) {
  const port = await freePort();
  const config = join(work, "registry.yml");
  writeFileSync(config, `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(work, "registry")}\nhttp:\n  addr: 127.0.0.1:${port}\n`);
  const child = spawn("docker-registry", ["serve", config], { stdio: "ignore" });
  for (let i = 0; i < 150; i++) {
    try {
      await fetch(`http://127.0.0.1:${port}/v2/`);
      return { host: `127.0.0.1:${port}`, stop: () => child.kill("SIGTERM") };
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  child.kill("SIGKILL");
  throw new Error("docker-registry did not start");
}

export async function benchImages({ log = (m) => process.stderr.write(`[bench] ${m}\n`) } = {}) {
  const { importImage } = await import(pathToFileURL(join(root, "dist/src/index.js")).href);
  const work = mkdtempSync(join(tmpdir(), "sandbox-bench-images-"));
  const savedDir = process.env.SANDBOX_IMAGES_DIR;
  const registry = await startRegistry(work);
  try {
    log(`images: building a ${MIB} MiB image from host files (umoci)`);
    const layout = join(work, "layout");
    const bundle = join(work, "bundle");
    execFileSync("umoci", ["init", "--layout", layout]);
    execFileSync("umoci", ["new", "--image", `${layout}:big`]);
    execFileSync("umoci", ["unpack", "--rootless", "--image", `${layout}:big`, bundle]);
    const { files, total } = pickFiles(["/usr/lib/x86_64-linux-gnu", "/usr/share"], MIB << 20);
    for (const f of files) {
      const dest = join(bundle, "rootfs", f);
      mkdirSync(dirname(dest), { recursive: true });
      cpSync(f, dest);
    }
    execFileSync("umoci", ["repack", "--image", `${layout}:big`, bundle]);
    execFileSync("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:big`, `docker://${registry.host}/bench/big:1`]);
    const compressed = Number(execFileSync("du", ["-sb", join(layout, "blobs")], { encoding: "utf8" }).split("\t")[0]);
    rmSync(bundle, { recursive: true, force: true });

    const ref = `${registry.host}/bench/big:1`;
    const skopeoMs = [];
    const importMs = [];
    const decompressFloorMs = [];
    const umociMs = [];
    let digest = null;
    let uncompressedSize = 0;
    for (let i = 0; i < ROUNDS; i++) {
      const dest = join(work, `skopeo-${i}`);
      let t = performance.now();
      execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${ref}`, `dir:${dest}`]);
      skopeoMs.push(performance.now() - t);
      const fetched = performance.now() - t;
      t = performance.now();
      for (const blob of readdirSync(dest)) {
        const path = join(dest, blob);
        if (/^[0-9a-f]{64}$/.test(blob) && statSync(path).size > 1 << 20) execFileSync("sh", ["-c", 'gzip -dc "$1" >/dev/null', "sh", path]);
      }
      decompressFloorMs.push(fetched + performance.now() - t);
      rmSync(dest, { recursive: true, force: true });

      const ociDest = join(work, `umoci-${i}`);
      t = performance.now();
      execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${ref}`, `oci:${ociDest}:big`]);
      execFileSync("umoci", ["unpack", "--rootless", "--image", `${ociDest}:big`, `${ociDest}-bundle`], { stdio: "ignore" });
      umociMs.push(performance.now() - t);
      rmSync(ociDest, { recursive: true, force: true });
      rmSync(`${ociDest}-bundle`, { recursive: true, force: true });

      process.env.SANDBOX_IMAGES_DIR = join(work, `store-${i}`);
      t = performance.now();
      const image = await importImage(ref, { name: "bench/big:1" });
      uncompressedSize = image.fileSizeBytes;
      importMs.push(performance.now() - t);
      if (digest && digest !== image.digest) throw new Error(`import ${i} gave ${image.digest}, earlier ${digest}`);
      digest = image.digest;
      rmSync(process.env.SANDBOX_IMAGES_DIR, { recursive: true, force: true });
      log(`images: round ${i + 1}: skopeo ${Math.round(skopeoMs[i])} ms, +gunzip ${Math.round(decompressFloorMs[i])} ms, +umoci unpack ${Math.round(umociMs[i])} ms, import ${Math.round(importMs[i])} ms`);
    }
    process.env.SANDBOX_IMAGES_DIR = join(work, "store-compressed");
    let t = performance.now();
    const compressedImage = await importImage(ref, { name: "bench/big:1", compress: true });
    const importCompressedMs = performance.now() - t;
    log(`images: compressed import ${Math.round(importCompressedMs)} ms`);
    const s = p50(skopeoMs);
    return {
      image: { layers: 1, uncompressedMiB: round(total / 1048576), compressedMiB: round(compressed / 1048576), files: files.length },
      skopeoCopyToDirMs: skopeoMs.map(Math.round),
      importMs: importMs.map(Math.round),
      importRatio: round(p50(importMs) / s),
      fetchAndDecompressFloorMs: decompressFloorMs.map(Math.round),
      importRatioToDecompressFloor: round(p50(importMs) / p50(decompressFloorMs)),
      // > 2 means the ≤ 2× target is below what decompressing the layers alone costs.
      decompressFloorRatioToSkopeo: round(p50(decompressFloorMs) / s),
      skopeoUmociUnpackMs: umociMs.map(Math.round),
      importRatioToUmociUnpack: round(p50(importMs) / p50(umociMs)),
      importCompressedMs: Math.round(importCompressedMs),
      importCompressedRatio: round(importCompressedMs / s),
      qcow2MiB: { uncompressed: round(uncompressedSize / 1048576), compressed: round(compressedImage.fileSizeBytes / 1048576) },
      sameDigestEveryRound: true,
      targetRatioMax: 2,
      ok: p50(importMs) / s <= 2,
    };
  } finally {
    registry.stop();
    process.env.SANDBOX_IMAGES_DIR = savedDir;
    rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify({ date: new Date().toISOString(), images: await benchImages() }, null, 2));
}
