/**
 * Chooses the VMM backend. `auto` asks the helper once per process whether a
 * libkrun guest can really run here (hardware virtualization, not just a
 * /dev/kvm node) and falls back to QEMU; the choice and the reason are
 * reported on `lane.info`.
 */
import { execFileSync } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import { SandboxArtifactError, SandboxConfigError } from "./errors.js";

/**
 * Which VMM runs a lane: `krun` (libkrun; hardware virtualization), `qemu`
 * (KVM when usable, else TCG), or `auto` (krun where it works, else qemu).
 */
export type BackendName = "auto" | "qemu" | "krun";

export interface KrunProbe {
  usable: boolean;
  reason: string;
  /** Whether KVM with real hardware virtualization is available (QEMU can use it too). */
  hardwareVirtualization: boolean;
}

/** The backend `auto` (or an explicit choice) resolved to, and why. */
export interface BackendChoice {
  backend: "qemu" | "krun";
  accel: "kvm" | "tcg" | "hvf";
  reason: string;
}

const probes = new Map<string, KrunProbe>();

export function probeKrun(helper: string): KrunProbe {
  const hit = probes.get(helper);
  if (hit) return hit;
  let probe: KrunProbe;
  try {
    const out = execFileSync(helper, ["--probe-krun"], { encoding: "utf8", timeout: 5000 });
    probe = JSON.parse(out) as KrunProbe;
  } catch (err) {
    probe = { usable: false, reason: `the krun probe failed: ${(err as Error).message}`, hardwareVirtualization: false };
  }
  probes.set(helper, probe);
  return probe;
}

export function chooseBackend(requested: BackendName, helper: string): BackendChoice {
  const probe = probeKrun(helper);
  if (requested === "krun") {
    if (!probe.usable) {
      throw new SandboxConfigError(`resources.backend is "krun" but krun cannot run here: ${probe.reason}. Use "auto" or "qemu"`);
    }
    return { backend: "krun", accel: process.platform === "darwin" ? "hvf" : "kvm", reason: "requested" };
  }
  if (requested === "auto" && probe.usable) {
    return { backend: "krun", accel: process.platform === "darwin" ? "hvf" : "kvm", reason: "krun is usable: " + probe.reason };
  }
  const accel = probe.hardwareVirtualization ? "kvm" : "tcg";
  const why =
    requested === "qemu"
      ? "requested"
      : `krun not usable here: ${probe.reason}; using qemu with ${accel === "kvm" ? "KVM" : "TCG software emulation"}`;
  return { backend: "qemu", accel, reason: why };
}

/** Finds qemu-system-x86_64 (SANDBOX_QEMU overrides the PATH lookup). */
export function findQemu(): string {
  const override = process.env.SANDBOX_QEMU;
  if (override) return override;
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(delimiter)) {
    const candidate = join(dir, "qemu-system-x86_64");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  throw new SandboxArtifactError(
    "qemu-system-x86_64 was not found on PATH; install it (Debian/Ubuntu: `apt-get install --no-install-recommends qemu-system-x86`) or set SANDBOX_QEMU",
  );
}
