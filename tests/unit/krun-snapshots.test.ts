import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { artifactPaths } from "../../src/artifacts.js";
import { krunSnapshotRefusal, snapshotBootFiles } from "../../src/boot/krun-snapshots.js";
import { rootfs } from "../../src/rootfs.js";
import { requirementMismatch, type SnapshotRequirements } from "../../src/snapshot-store.js";

describe("krun snapshots (Node side)", () => {
  const readOnly = rootfs.builtIn("debian:12");

  it("accepts a read-only lane without network or mounts", () => {
    expect(krunSnapshotRefusal(readOnly, 0, false)).toBeUndefined();
  });

  it("refuses what the krun helper cannot capture, saying why", () => {
    expect(krunSnapshotRefusal(readOnly, 0, true)?.refuse).toMatch(/network.*qemu/);
    expect(krunSnapshotRefusal(readOnly, 2, false)?.refuse).toMatch(/mounts/);
    const eph = rootfs.ephemeral({ base: readOnly });
    expect(krunSnapshotRefusal(eph, 0, false)?.refuse).toMatch(/rootfs\.ephemeral.*read-only root/);
  });

  it("pins the krun kernel library and init, not qemu's, in a krun snapshot's requirements", () => {
    const a = artifactPaths("/pkg");
    expect(snapshotBootFiles("krun", a)).toEqual({ kernel: a.krunfw, initrd: join(a.krunInitRoot, "init") });
    expect(snapshotBootFiles("qemu", a)).toEqual({ kernel: a.qemuKernel, initrd: a.qemuInitrd });
    expect(snapshotBootFiles("krun", a).kernel).not.toBe(snapshotBootFiles("qemu", a).kernel);
  });

  it("a krun snapshot is refused by a qemu runtime (and back) before booting", () => {
    const krun: SnapshotRequirements = { version: "0.1.0", backend: "krun", imageSha256: "a", kernelSha256: "fw", initrdSha256: "init", memoryMiB: 512, cpus: 1, rootDisk: "writable" };
    const qemu = { ...krun, backend: "qemu", kernelSha256: "vmlinuz", initrdSha256: "initrd" };
    expect(requirementMismatch(krun, qemu)).toBe('it was taken with backend "krun", this runtime has "qemu"');
    expect(requirementMismatch(qemu, krun)).toMatch(/backend "qemu"/);
    expect(requirementMismatch(krun, { ...krun })).toBeUndefined();
  });
});
