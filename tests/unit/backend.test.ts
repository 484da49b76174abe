import { describe, expect, it } from "vitest";
import { resolveArtifacts } from "../../src/artifacts.js";
import { chooseBackend, probeKrun } from "../../src/backend.js";

describe("backend choice on this host", () => {
  it("probes krun quickly and falls back to qemu with the reason", () => {
    const { helper } = resolveArtifacts();
    const t0 = performance.now();
    const probe = probeKrun(helper);
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeLessThan(1000);
    expect(typeof probe.reason).toBe("string");
    expect(probe.reason.length).toBeGreaterThan(10);
    const choice = chooseBackend("auto", helper);
    if (probe.usable) {
      expect(choice.backend).toBe("krun");
    } else {
      expect(choice.backend).toBe("qemu");
      expect(choice.reason).toContain("krun not usable here");
      expect(choice.reason).toContain(probe.reason);
      expect(() => chooseBackend("krun", helper)).toThrow(/krun cannot run here/);
    }
  });
});

describe("krun probe against this machine's facts", () => {
  it("says no where there is no hardware virtualization or KVM is PVM", async () => {
    const { existsSync, readFileSync } = await import("node:fs");
    const flags = readFileSync("/proc/cpuinfo", "utf8");
    const noHw = !/\b(vmx|svm)\b/.test(flags) || existsSync("/sys/module/kvm_pvm") || !existsSync("/dev/kvm");
    const probe = probeKrun(resolveArtifacts().helper);
    if (noHw) {
      expect(probe.usable).toBe(false);
      expect(probe.hardwareVirtualization).toBe(false);
      expect(chooseBackend("auto", resolveArtifacts().helper)).toMatchObject({ backend: "qemu", accel: "tcg" });
    } else {
      expect(probe.hardwareVirtualization).toBe(true);
    }
  });
});

describe("artifacts per backend", () => {
  it("asks only for the chosen backend's kernel, so a krun-only package is complete", async () => {
    const { mkdtempSync, mkdirSync, writeFileSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { artifactPaths, requireBackendArtifacts } = await import("../../src/artifacts.js");
    const { SandboxArtifactError } = await import("../../src/errors.js");
    const dir = mkdtempSync(join(tmpdir(), "artifacts-"));
    try {
      const a = artifactPaths(dir);
      mkdirSync(join(dir, "kernel", "krun", "root"), { recursive: true });
      writeFileSync(a.krunfw, "");
      writeFileSync(join(a.krunInitRoot, "init"), "");
      expect(() => requireBackendArtifacts(a, "krun")).not.toThrow();
      const err = (() => {
        try {
          requireBackendArtifacts(a, "qemu");
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(SandboxArtifactError);
      expect((err as Error).message).toContain(`guest kernel (qemu) is missing at ${a.qemuKernel}`);
      expect((err as Error).message).toContain("npm run setup");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
