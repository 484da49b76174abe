/**
 * `sandbox doctor`: checks what a sandbox needs on this host and says how to
 * fix what is missing. Never throws for a missing piece: every check reports.
 */
import { execFileSync } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync, statSync } from "node:fs";
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
  const ok = checks.every((c) => c.ok);
  return { checks, ok };
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
