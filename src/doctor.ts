/**
 * `sandbox doctor`: checks what a sandbox needs on this host and says how to
 * fix what is missing. Never throws for a missing piece: every check reports.
 */
import { execFileSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { platformPackageName, type Artifacts, type ImageEntry } from "./artifacts.js";
import { chooseBackend, findQemu, probeKrun } from "./backend.js";

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** How to fix it, when not ok. */
  fix?: string;
}

const RESTORE = `run \`npm run setup\` in a clone of the repository, or reinstall ${platformPackageName()}`;

export function runDoctor(artifacts: Artifacts): { checks: Check[]; ok: boolean } {
  const checks: Check[] = [];
  const add = (c: Check) => checks.push(c);

  add({ name: "platform", ok: process.platform === "linux" && process.arch === "x64", detail: `${process.platform}-${process.arch}, Node ${process.version}`, fix: "the qemu backend needs Linux x86-64 (krun on macOS arm64 is planned)" });

  const kvm = existsSync("/dev/kvm");
  let kvmAccess = false;
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    kvmAccess = true;
  } catch {
    // reported below
  }
  add({
    name: "/dev/kvm",
    ok: true,
    detail: !kvm ? "absent" : kvmAccess ? "present, read-write" : "present but not accessible (add yourself to the kvm group)",
  });

  const helperOk = isExecutable(artifacts.helper);
  add({ name: "sandbox-host helper", ok: helperOk, detail: artifacts.helper, fix: RESTORE });
  if (helperOk) {
    const probe = probeKrun(artifacts.helper);
    add({ name: "hardware virtualization", ok: true, detail: probe.hardwareVirtualization ? "present (KVM with VT-x/AMD-V)" : "absent: guests run under software emulation (slower, fully functional)" });
    add({ name: "krun backend", ok: true, detail: probe.usable ? "usable" : `not usable: ${probe.reason}` });
    const choice = chooseBackend("auto", artifacts.helper);
    add({ name: "backend in use", ok: true, detail: `${choice.backend} with ${choice.accel === "tcg" ? "TCG software emulation" : choice.accel.toUpperCase()}` });
  }

  try {
    const qemu = findQemu();
    const version = execFileSync(qemu, ["--version"], { encoding: "utf8", timeout: 5000 }).split("\n")[0];
    add({ name: "qemu", ok: true, detail: `${qemu}: ${version}` });
  } catch (err) {
    add({ name: "qemu", ok: false, detail: (err as Error).message.split("\n")[0]!, fix: "apt-get install --no-install-recommends qemu-system-x86 (or set SANDBOX_QEMU)" });
  }

  for (const [name, path] of [
    ["native addon", artifacts.addon],
    ["guest kernel (qemu)", artifacts.qemuKernel],
    ["guest initramfs (qemu)", artifacts.qemuInitrd],
    ["guest kernel (krun, libkrunfw)", artifacts.krunfw],
    ["guest init (krun)", join(artifacts.krunInitRoot, "init")],
  ] as const) {
    add(fileCheck(name, path));
  }

  const catalogFile = join(artifacts.imagesDir, "catalog.json");
  if (!existsSync(catalogFile)) {
    add({ name: "image catalog", ok: false, detail: `missing: ${catalogFile}`, fix: RESTORE });
  } else {
    const images = (JSON.parse(readFileSync(catalogFile, "utf8")) as { images: ImageEntry[] }).images;
    for (const img of images) {
      const file = join(artifacts.imagesDir, img.file);
      const size = existsSync(file) ? statSync(file).size : -1;
      const ok = size === img.fileSizeBytes;
      add({
        name: `image ${img.name}`,
        ok,
        detail: ok ? `${(size / 1048576).toFixed(1)} MiB, sha256:${img.sha256.slice(0, 16)}` : size < 0 ? `missing: ${file}` : `size ${size} does not match the catalog (${img.fileSizeBytes})`,
        fix: RESTORE,
      });
    }
  }
  for (const c of importChecks(artifacts)) add(c);
  const ok = checks.every((c) => c.ok);
  return { checks, ok };
}

/** What `sandbox images import` needs: the importer, an mke2fs that reads tarballs, qemu-img. */
function importChecks(artifacts: Artifacts): Check[] {
  const out: Check[] = [fileCheck("image importer", artifacts.imageTool)];
  const mke2fs = join(artifacts.e2fsprogs, "sbin", "mke2fs");
  if (!existsSync(mke2fs)) {
    out.push({ name: "mke2fs (image import)", ok: false, detail: `missing: ${mke2fs}`, fix: RESTORE });
  } else {
    // A one-entry tarball through `-d -`: fails without libarchive.so.13.
    const dir = mkdtempSync(join(tmpdir(), "sandbox-doctor-"));
    try {
      writeFileSync(join(dir, "img"), "");
      execFileSync("truncate", ["-s", "8M", join(dir, "img")]);
      const tar = Buffer.alloc(1024); // an empty archive: two zero blocks
      execFileSync(mke2fs, ["-q", "-F", "-t", "ext4", "-d", "-", join(dir, "img")], {
        input: tar,
        env: { ...process.env, LD_LIBRARY_PATH: join(artifacts.e2fsprogs, "lib") },
        stdio: ["pipe", "ignore", "pipe"],
        timeout: 10_000,
      });
      const version = readFileSync(join(artifacts.e2fsprogs, "VERSION"), "utf8").trim();
      out.push({ name: "mke2fs (image import)", ok: true, detail: `${version}, reads tarballs` });
    } catch (err) {
      const why = ((err as { stderr?: Buffer }).stderr?.toString() ?? (err as Error).message).trim().split("\n")[0];
      out.push({ name: "mke2fs (image import)", ok: false, detail: `cannot build from a tarball: ${why}`, fix: "apt-get install libarchive13 (mke2fs loads it to read layers)" });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  try {
    const version = execFileSync(process.env.SANDBOX_QEMU_IMG ?? "qemu-img", ["--version"], { encoding: "utf8", timeout: 5000 }).split("\n")[0];
    out.push({ name: "qemu-img (image import)", ok: true, detail: version ?? "" });
  } catch (err) {
    out.push({ name: "qemu-img (image import)", ok: false, detail: (err as Error).message.split("\n")[0]!, fix: "apt-get install qemu-utils (or set SANDBOX_QEMU_IMG)" });
  }
  return out;
}

function fileCheck(name: string, path: string): Check {
  return existsSync(path)
    ? { name, ok: true, detail: path }
    : { name, ok: false, detail: `missing: ${path}`, fix: RESTORE };
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
