/** The helper's `Launch` request and the guest's `Configure`, built once, typed end to end. */
import type { Artifacts } from "../artifacts.js";
import { findQemu, type BackendChoice } from "../backend.js";
import { SandboxArtifactError } from "../errors.js";
import { helperServedDir } from "../fs/host-dir.js";
import type { SandboxFileSystem } from "../fs/types.js";
import type { Configure, Disk, Launch, NetLaunch } from "../protocol/contract.js";
import { COW_BLOCK_SIZE, rootfs as rootfsApi, type RootfsSpec } from "../rootfs.js";
import { helperDeadlineMs, SANDBOX_RESOLVER } from "../network/bridge.js";
import type { NetworkPolicy } from "../network/policy.js";
import type { ResolvedImage } from "../images/resolve.js";
import type { SandboxResources } from "../sandbox.js";

/** The guest's side of the network (sandbox-net's defaults). */
const GUEST_NET = {
  address: "10.0.2.15",
  prefixLen: 24,
  gateway: "10.0.2.2",
  nameserver: SANDBOX_RESOLVER,
  mtu: 1500,
  // A ULA: the guest side only; flows leave the host from its own (real) IPv6 sockets.
  ipv6: { address: "fd53:5342::15", prefixLen: 64, gateway: "fd53:5342::2" },
} as const;

/** virtio-fs tag of mount number `i`. */
export function mountTag(i: number): string {
  return `sandbox-fs-${i}`;
}

/** The image file attached as the root disk (what `resolveImage` returned). */
type RootImage = Pick<ResolvedImage, "name" | "path" | "format" | "filesystem" | "defaults">;

/** Catalog images and `rootfs.image` files are attached read-only; writable roots layer over them. */
function readOnlyRoot(root: RootfsSpec): root is Extract<RootfsSpec, { kind: "builtIn" | "image" }> {
  return root.kind === "builtIn" || root.kind === "image";
}

function rootDisk(image: RootImage, root: RootfsSpec): Disk {
  const path = image.path;
  if (readOnlyRoot(root)) return { path, format: image.format, readOnly: true };
  return {
    path,
    format: image.format,
    readOnly: false,
    cow: {
      mode: root.kind === "cow" ? "persistent" : "ephemeral",
      maxDirtyBytes: root.maxDirtyBytes,
      blockSize: COW_BLOCK_SIZE,
      // The helper's own deadline trails Node's, so Node's error (with the store's words) is what ends the call.
      storeTimeoutMs: root.kind === "cow" ? root.storeTimeoutMs + 1000 : undefined,
    },
  };
}

/** The network part of a Launch for `policy`, with the intercept socket Node listens on. */
export function networkLaunch(policy: NetworkPolicy, interceptSocket: string): NetLaunch {
  return {
    policyDeadlineMs: helperDeadlineMs(policy),
    maxFlows: policy.maxFlows,
    maxConnectsPerSecond: policy.maxConnectsPerSecond,
    connectBurst: policy.connectBurst,
    allowProtected: policy.allowProtectedCidrs.map((c) => c.text),
    interceptSocket,
  };
}

/** The helper's Launch request for one boot (exported for benchmarks). */
export function launchSpec(
  artifacts: Artifacts,
  image: RootImage,
  resources: Required<SandboxResources>,
  choice: BackendChoice,
  root: RootfsSpec = rootfsApi.builtIn(image.name),
  mounts: number | readonly { attributeCacheMs?: number; readOnly?: boolean; fs?: SandboxFileSystem }[] = 0,
  network?: NetLaunch,
): Launch {
  return {
    backend: choice.backend,
    cpus: resources.cpus,
    memoryMib: resources.memoryMiB,
    kernel: artifacts.qemuKernel,
    initrd: artifacts.qemuInitrd,
    krunfw: artifacts.krunfw,
    initRoot: artifacts.krunInitRoot,
    cmdline: [],
    disks: [rootDisk(image, root)],
    qemu: choice.backend === "qemu" ? findQemu() : undefined,
    accel: choice.backend === "qemu" ? choice.accel : undefined,
    network,
    mounts: (typeof mounts === "number" ? Array.from({ length: mounts }, () => ({})) : mounts).map((m: { attributeCacheMs?: number; readOnly?: boolean; fs?: SandboxFileSystem }, i) => {
      const dir = m.fs ? helperServedDir(m.fs) : undefined;
      return {
        tag: mountTag(i),
        ...(m.attributeCacheMs ? { attrCacheMs: m.attributeCacheMs } : {}),
        ...(dir ? { hostDir: { path: dir.path, readOnly: dir.readOnly || m.readOnly === true } } : {}),
      };
    }),
  };
}

export interface ConfigureInput {
  hostname: string;
  cwd: string;
  env: Record<string, string>;
  image: RootImage;
  root: RootfsSpec;
  mounts: readonly { target: string; mount: { readOnly: boolean } }[];
  network: boolean;
  caCertPem: string | undefined;
  /** The CA came with the network policy (not `boot({ interceptCa })`): see Configure.caOptional. */
  caOptional: boolean;
  resources: Required<SandboxResources>;
  writableRoot?: boolean;
}

/** The guest's configuration, sent when init says Hello. */
export function configureMessage(c: ConfigureInput): Configure {
  if (c.image.filesystem !== "ext4") {
    throw new SandboxArtifactError(`image ${c.image.name} has a ${c.image.filesystem} filesystem; the guest init mounts ext4 roots`);
  }
  return {
    hostname: c.hostname,
    cwd: c.cwd,
    env: c.env,
    root: { device: "/dev/vda", fstype: "ext4", readOnly: readOnlyRoot(c.root) && !c.writableRoot },
    mounts: c.mounts.map((m, i) => ({
      tag: mountTag(i),
      target: m.target,
      readOnly: m.mount.readOnly,
      // Only a root whose changes are discarded may get new directories.
      createOnRoot: c.root.kind === "ephemeral",
    })),
    limits: { maxProcesses: c.resources.maxProcesses, workloadMemoryMib: c.resources.workloadMemoryMiB },
    ...(c.caCertPem === undefined ? {} : { caCertPem: c.caCertPem }),
    ...(c.caCertPem !== undefined && c.caOptional ? { caOptional: true } : {}),
    ...(c.network ? { network: { ...GUEST_NET } } : {}),
    // The image config's User, resolved at import: init drops every process to it.
    ...(c.image.defaults.user ? { user: { uid: c.image.defaults.user.uid, gid: c.image.defaults.user.gid, groups: c.image.defaults.user.groups } } : {}),
  };
}
