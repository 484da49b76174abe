/** `defineSandbox`: a checked, frozen description of a machine; `boot()` starts one (src/boot/). */
import type { BackendName } from "./backend.js";
import { bootLane, snapshotBooter } from "./boot/index.js";
import { rm } from "node:fs/promises";
import { SandboxSnapshot, snapshotDir } from "./snapshot.js";
import { fetchSnapshotFiles, type SandboxSnapshotStore } from "./snapshot-store.js";
import { SandboxConfigError, type BlockStoreError } from "./errors.js";
import type { LaneDiagnostic } from "./helper-connection.js";
import type { StoreRetryEvent } from "./rootfs/block-store.js";
import type { Lane } from "./lane.js";
import { isRootfsSpec, rootfs as rootfsApi, type RootfsSpec } from "./rootfs.js";
import type { VirtualMount } from "./fs/types.js";
import { checkInteger } from "./validate.js";
import { isNetworkPolicy, type NetworkPolicy } from "./network/policy.js";

/** @internal Benchmarks and tests boot through these. */
export { bootLane, type BootInternals } from "./boot/index.js";
/** @internal */
export { launchSpec } from "./boot/launch.js";

/** What the machine gets: vCPUs, memory, the VMM backend, and the limits every command runs under. */
export interface SandboxResources {
  /** Virtual CPUs (1-64). Default 1. */
  cpus?: number;
  /** Guest memory in MiB (128-1048576). Default 512. */
  memoryMiB?: number;
  /** VMM backend. Default `auto`: krun where hardware virtualization works, else qemu. */
  backend?: BackendName;
  /**
   * Processes (and threads) one command and everything it starts may have at
   * once (16-4194304). Default 1024. Every command runs in a cgroup of its own
   * below init's, so a fork bomb hits this limit while init, the control port
   * and other lanes keep working; a timeout or abort kills the whole cgroup.
   */
  maxProcesses?: number;
  /**
   * Memory of all commands together, MiB (16 to `memoryMiB` - 32). Default
   * `memoryMiB` minus an eighth (at least 64 MiB) kept for the guest kernel
   * and init. Past it the guest's OOM killer ends the largest command's whole
   * process tree: its exit code is 137 with `oomKilled: true`.
   */
  workloadMemoryMiB?: number;
}

/** A machine, described: root filesystem, resources, network policy. Pass it to `defineSandbox`. */
export interface SandboxDefinition {
  /** Root filesystem. Default `rootfs.builtIn("debian:12")`. */
  rootfs?: RootfsSpec;
  resources?: SandboxResources;
  /**
   * Egress policy (`network.policy(...)`). Absent: the guest has no network device
   * at all — no egress, no DNS.
   */
  network?: NetworkPolicy;
}

/**
 * Per-boot options of `sandbox.boot()`: what differs between lanes of one definition
 * (hostname, working directory, environment, mounts) and how the boot and the lane are
 * watched (deadline, abort, error and event hooks).
 */
export interface BootOptions {
  /** Kernel hostname. Default `sandbox`. */
  hostname?: string;
  /** Default working directory for processes; must exist in the guest. Default `/`. */
  cwd?: string;
  /** Environment every process of this lane starts with. */
  env?: Record<string, string>;
  /** How long to wait for the guest to be ready. Default 120000 (software emulation is slow). */
  timeoutMs?: number;
  /**
   * How long the guest may stay silent (no frame, not even the answer to a
   * liveness ping, sent after 5 s of silence) before the lane is ended with
   * `SandboxUnresponsiveError`. Default 30000.
   */
  livenessTimeoutMs?: number;
  /** Aborts the boot; the VM is torn down and the promise rejects with an AbortError. */
  signal?: AbortSignal;
  /**
   * Called for failures the lane survives, as they happen: today a
   * `rootfs.cow` block store call that failed or missed its deadline (the
   * guest saw an I/O error). Such a failure also makes `lane.close()` reject.
   * Exceptions thrown by the callback are ignored.
   */
  onError?: (error: BlockStoreError) => void;
  /**
   * Called with what the lane reports about itself as it runs: today the
   * helper's diagnostics (a filesystem answer it had to refuse, a store call
   * that missed its deadline, why the network stack stopped). Exceptions
   * thrown by the callback are ignored.
   */
  onEvent?: (event: LaneEvent) => void;
  /**
   * @internal The HTTP interception CA of this boot (`createSandboxCa()`); only its
   * public certificate goes to the guest. The network policy wiring sets it. A
   * promise is awaited only when the guest asks for its configuration, so key
   * generation overlaps the VM's boot.
   */
  interceptCa?: { readonly certPem: string } | Promise<{ readonly certPem: string }>;
  /**
   * Guest path → `fs.virtual(...)` filesystem, mounted before `cwd` is checked
   * (parents before children). Missing targets are created on init-owned tmpfs
   * (/run, /tmp…), inside an earlier mount, or on an ephemeral root; on a
   * built-in or durable root the target must exist (built-in images have /workspace and /mnt).
   */
  mounts?: Record<string, VirtualMount>;
  /**
   * Hibernates the lane on its own after this long (ms, ≥ 1000) with no
   * exec/spawn/pty running or started and no `lane.fs` request: `lane.hibernate()`, then a
   * `hibernated` event (`boot({ onEvent })`) carrying the snapshot to wake it
   * with (`event.snapshot.boot()`). A lane that cannot be checkpointed (a
   * `rootfs.cow`) gets a `hibernate-failed` event instead and keeps running.
   * Default: never.
   */
  idleTimeoutMs?: number;
}

/**
 * Something a running lane reports: `diagnostic` = the helper's or the guest
 * init's own words, with level and source; `store-retry` = a `rootfs.cow`
 * store call failed and will be tried again (the guest sees nothing yet).
 */
export type LaneEvent = ({ type: "diagnostic" } & LaneDiagnostic) | StoreRetryEvent | IdleHibernateEvent;

/**
 * `boot({ idleTimeoutMs })` fired: `hibernated` = the lane was checkpointed and
 * powered off after `idleMs` without exec/spawn/pty/lane.fs activity, and `snapshot`
 * wakes it (`snapshot.boot()`; delete it when done); `hibernate-failed` = the
 * checkpoint failed (`error`), and the lane keeps running.
 */
export type IdleHibernateEvent =
  | { type: "hibernated"; snapshot: SandboxSnapshot; idleMs: number }
  | { type: "hibernate-failed"; error: unknown; idleMs: number };

/**
 * A checked, frozen machine description (`defineSandbox`). Nothing runs until `boot()`,
 * which may be called any number of times: each call starts a new microVM, a `Lane`.
 */
export interface Sandbox {
  readonly definition: Readonly<Required<Pick<SandboxDefinition, "rootfs">>> & { resources: Required<SandboxResources>; network?: NetworkPolicy };
  boot(options?: BootOptions): Promise<Lane>;
  /**
   * Fetches snapshot `id` from `store` into a local directory (default: a new
   * one under the OS temp dir), verifying every file's size and sha256; a
   * missing, truncated or corrupt snapshot rejects with SandboxSnapshotError.
   * Its `boot()` refuses (SandboxSnapshotError, before booting) when this
   * sandbox's library version, backend, image, kernel, memory or vCPUs differ
   * from the ones it was taken with.
   */
  loadSnapshot(store: SandboxSnapshotStore, id: string, options?: { dir?: string }): Promise<SandboxSnapshot>;
}

/**
 * Describes a machine without starting it. Checks the definition at once
 * (SandboxConfigError says what is wrong) and applies the defaults: the
 * `debian:12` built-in image, 1 vCPU, 512 MiB, backend `auto`, no network.
 *
 * ```ts
 * const sandbox = defineSandbox({ rootfs: rootfs.builtIn("debian:12"), resources: { memoryMiB: 1024 } });
 * await using lane = await sandbox.boot();
 * ```
 */
export function defineSandbox(definition: SandboxDefinition = {}): Sandbox {
  if (typeof definition !== "object" || definition === null) {
    throw new SandboxConfigError("defineSandbox(definition) needs an object");
  }
  const root = definition.rootfs ?? rootfsApi.builtIn("debian:12");
  if (!isRootfsSpec(root)) {
    throw new SandboxConfigError("definition.rootfs must come from rootfs.builtIn(...), rootfs.image(...), rootfs.ephemeral(...) or rootfs.cow(...)");
  }
  const r = definition.resources ?? {};
  const resources: Required<SandboxResources> = {
    cpus: checkInteger("resources.cpus", r.cpus ?? 1, 1, 64),
    memoryMiB: checkInteger("resources.memoryMiB", r.memoryMiB ?? 512, 128, 1 << 20),
    backend: r.backend ?? "auto",
    maxProcesses: checkInteger("resources.maxProcesses", r.maxProcesses ?? 1024, 16, 4_194_304),
    workloadMemoryMiB: 0,
  };
  const memory = resources.memoryMiB;
  resources.workloadMemoryMiB = checkInteger(
    "resources.workloadMemoryMiB",
    r.workloadMemoryMiB ?? memory - Math.max(64, Math.floor(memory / 8)),
    16,
    memory - 32,
  );
  if (!["auto", "qemu", "krun"].includes(resources.backend)) {
    throw new SandboxConfigError(`resources.backend must be "auto", "qemu" or "krun", got ${JSON.stringify(resources.backend)}`);
  }
  if (definition.network !== undefined && !isNetworkPolicy(definition.network)) {
    throw new SandboxConfigError("definition.network must come from network.policy(...)");
  }
  const frozen = Object.freeze({ rootfs: root, resources: Object.freeze(resources), network: definition.network });
  return {
    definition: frozen,
    boot: (options) => bootLane(frozen.rootfs, frozen.resources, options ?? {}, frozen.network),
    loadSnapshot: async (store, id, options = {}) => {
      const dir = await snapshotDir(options.dir);
      try {
        const manifest = await fetchSnapshotFiles(store, id, dir);
        const requires = manifest.requires;
        const hostname = typeof manifest.hostname === "string" ? manifest.hostname : "sandbox";
        const boot = snapshotBooter(frozen.rootfs, frozen.resources, frozen.network, {}, hostname, requires);
        return new SandboxSnapshot(dir, { pausedMs: 0, ramBytes: 0, diskBytes: 0, totalMs: 0 }, hostname, boot, () => Promise.resolve(requires));
      } catch (err) {
        if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
        throw err;
      }
    },
  };
}

export { findImage, listBuiltInImages } from "./catalog.js";
