/**
 * Snapshots of running lanes: `lane.checkpoint()` captures guest memory,
 * device state and the root disk's changes into a directory while the
 * lane keeps running; `snapshot.boot()` resumes a new lane — a fork — from it.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { basename } from "node:path";
import type { Lane } from "./lane.js";
import type { LaneEvent } from "./sandbox.js";
import type { VirtualMount } from "./fs/types.js";
import { saveSnapshotFiles, type SandboxSnapshotStore, type SnapshotRequirements } from "./snapshot-store.js";

/** Options of `lane.checkpoint`. */
export interface CheckpointOptions {
  /** An empty directory to write the snapshot into. Default: a new one under the OS temp dir (`SANDBOX_SNAPSHOT_DIR` overrides). */
  dir?: string;
}

/** Options of `snapshot.boot`: what a fork may change. */
export interface SnapshotBootOptions {
  /** The restored guest's hostname. Default: the checkpointed lane's. */
  hostname?: string;
  /**
   * The fork's own dirty-bytes budget for root-disk writes (as
   * `rootfs.ephemeral({ maxDirtyBytes })`), on top of the snapshot's changes,
   * which are read from the snapshot's files. Default: the checkpointed
   * root's `maxDirtyBytes`. A fork's root is always ephemeral: the writes of a
   * fork of a `rootfs.cow` lane never reach that lane's store.
   */
  maxDirtyBytes?: number;
  /** How long the restore may take. Default 60 s. */
  timeoutMs?: number;
  /** Abort the restore. */
  signal?: AbortSignal;
  /** Silence from the guest after which the lane ends (as `boot({ livenessTimeoutMs })`). */
  livenessTimeoutMs?: number;
  /**
   * The restored lane's mounts, at exactly the guest paths (and read-only
   * flags) the snapshot was taken with; init mounts them where they were.
   * Default: the checkpointed lane's mounts (the same host objects) for a
   * snapshot of this process, none for a loaded one.
   */
  mounts?: Record<string, VirtualMount>;
  /**
   * The restored lane's events (as `boot({ onEvent })`): among them the
   * guest's warnings from the restore, e.g. a mount that did not come back.
   */
  onEvent?: (event: LaneEvent) => void;
}

/** What a checkpoint cost. */
export interface SnapshotStats {
  /** How long the guest was paused for the capture, ms. */
  pausedMs: number;
  /** Guest RAM bytes written (all-zero MiB chunks are skipped). */
  ramBytes: number;
  /** Root-disk bytes captured: an ephemeral root's changes, or a `rootfs.cow` root's stored and unwritten blocks. */
  diskBytes: number;
  /** Host wall time of the whole `checkpoint()` call, ms. */
  totalMs: number;
}

/** How a snapshot boots: the boot of the lane it came from, with a fork's options. */
export type SnapshotBooter = (dir: string, options: SnapshotBootOptions) => Promise<Lane>;

/**
 * A checkpoint of a lane (`lane.checkpoint()`, `lane.hibernate()`). Every
 * `boot()` is a fork: a new lane whose guest resumes where the checkpoint
 * was taken — its processes keep running, files in /tmp and the root's
 * changes are there — with its own disk overlay, fresh entropy, the host's
 * clock and fresh network state. Host-side handles of the old lane's
 * processes (exec promises, spawn streams, ptys) do not carry over: those
 * processes run on in the guest, detached, with their output discarded.
 */
export class SandboxSnapshot {
  /** The directory holding the snapshot's files. */
  readonly dir: string;
  /** What the checkpoint cost. */
  readonly stats: SnapshotStats;
  /** The checkpointed lane's hostname (a fork's default). */
  readonly hostname: string;
  readonly #boot: SnapshotBooter;
  readonly #requires: () => Promise<SnapshotRequirements>;

  /** @internal Snapshots come from `lane.checkpoint()` and `sandbox.loadSnapshot()`. */
  constructor(dir: string, stats: SnapshotStats, hostname: string, boot: SnapshotBooter, requires: () => Promise<SnapshotRequirements>) {
    this.dir = dir;
    this.stats = Object.freeze({ ...stats });
    this.hostname = hostname;
    this.#boot = boot;
    this.#requires = requires;
  }

  /**
   * Writes the snapshot to `store` under `id` (default: its directory's name):
   * every file, then a manifest with their sizes and sha256 and what booting
   * it requires (library version, backend, image, kernel and initramfs
   * digests, memory, vCPUs). Until the manifest is written the snapshot is
   * not listed; resolves with the id.
   */
  async save(store: SandboxSnapshotStore, id: string = basename(this.dir)): Promise<string> {
    await saveSnapshotFiles(store, this.dir, id, this.hostname, await this.#requires());
    return id;
  }

  /** Resumes a new lane from this snapshot (a fork; the snapshot stays usable). */
  boot(options: SnapshotBootOptions = {}): Promise<Lane> {
    return this.#boot(this.dir, options);
  }

  /** Deletes the snapshot's files. Lanes booted from it must be closed first. */
  async delete(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** A new empty directory for a checkpoint. */
export async function snapshotDir(dir: string | undefined): Promise<string> {
  if (dir !== undefined) return dir;
  const root = process.env.SANDBOX_SNAPSHOT_DIR || join(tmpdir(), "torkbot-sandbox-snapshots");
  mkdirSync(root, { recursive: true });
  return mkdtemp(join(root, "snap-"));
}
