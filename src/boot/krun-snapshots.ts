/**
 * What the krun backend can snapshot (the rules mirror the helper's own
 * refusals, so a lane refuses before any guest is paused), and which files a
 * krun snapshot's requirements pin.
 */
import { join } from "node:path";
import type { Artifacts } from "../artifacts.js";
import type { RootfsSpec } from "../rootfs.js";

/** Why a krun lane booted like this cannot be checkpointed, if it cannot. */
export function krunSnapshotRefusal(root: RootfsSpec, mounts: number, network: boolean): { refuse: string } | undefined {
  if (network) {
    return { refuse: "it has a network.policy, and libkrun 0.1.42 cannot pause the krun network device at a frame boundary; use the qemu backend or boot it without network" };
  }
  if (mounts > 0) return { refuse: "it has mounts (the krun virtio-fs bridge has no state capture yet)" };
  if (root.kind !== "builtIn" && root.kind !== "image") {
    return { refuse: `its root is rootfs.${root.kind} (writable), and the krun backend writes disks in place; use a read-only root (tmpfs such as /tmp is captured with RAM)` };
  }
  return undefined;
}

/** The guest kernel and init whose sha256 a snapshot of `backend` requires. */
export function snapshotBootFiles(backend: "qemu" | "krun", a: Artifacts): { kernel: string; initrd: string } {
  return backend === "krun" ? { kernel: a.krunfw, initrd: join(a.krunInitRoot, "init") } : { kernel: a.qemuKernel, initrd: a.qemuInitrd };
}
