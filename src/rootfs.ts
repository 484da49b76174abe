/** Root filesystem descriptions. A description is inert: nothing boots or reads until `boot()`. */
import { SandboxConfigError } from "./errors.js";
import { checkBlockStore, DEFAULT_STORE_TIMEOUT_MS, type SandboxBlockStore } from "./rootfs/block-store.js";
import { bytes, flatten, type ComposedRootfs, type FlattenedImage, type ImageByteStore } from "./rootfs/image-export.js";
import { absoluteImagePath, checkDigest, type ImageFileRootfs } from "./images/resolve.js";
import type { BuiltRootfs, RootfsBuildOptions } from "./images/build.js";

/** A read-only image from the installed catalog (`rootfs.builtIn`). */
export interface BuiltInRootfs {
  readonly kind: "builtIn";
  /** Catalog name, e.g. `debian:12`, `busybox`, an imported `alpine:3.23`, or `sha256:…`. */
  readonly name: string;
}

export type { ImageFileRootfs };

/** What writable roots and exports are layered over: a catalog image or a pinned image file. */
export type BaseImage = BuiltInRootfs | ImageFileRootfs;

/** A writable root whose changes live in helper memory and vanish when the lane ends. */
export interface EphemeralRootfs {
  readonly kind: "ephemeral";
  readonly base: BaseImage;
  /** Dirty-bytes budget (block-aligned); guest writes past it fail with an I/O error. */
  readonly maxDirtyBytes: number;
}

/** A writable root whose changed blocks persist in a JavaScript block store across boots. */
export interface CowRootfs {
  readonly kind: "cow";
  readonly base: BaseImage;
  readonly writable: SandboxBlockStore;
  /** Dirty bytes buffered by the native runtime before they are written to the store. */
  readonly maxDirtyBytes: number;
  /** Deadline of one store call, retries included; past it the call fails (EIO in the guest, BlockStoreError on the host). */
  readonly storeTimeoutMs: number;
  /** How failed store calls are tried again within `storeTimeoutMs`. */
  readonly retry: StoreRetryPolicy;
}

/**
 * Retries of failed block-store calls (`rootfs.cow({ retry })`). A failed
 * call is tried again after `initialDelayMs`, doubling up to `maxDelayMs`,
 * while attempts remain and the call's `storeTimeoutMs` allows; only a call
 * that still fails reaches the guest as an I/O error. Calls are safe to
 * repeat: a write replaces whole blocks, a flush makes durable what was
 * written (docs/rootfs.md). `rootfs.cow({ retry: false })` makes one attempt.
 */
export interface StoreRetryPolicy {
  /** Attempts in all, the first included (1-100). Default 5. */
  readonly attempts: number;
  /** Default 100. */
  readonly initialDelayMs: number;
  /** Default 2000. */
  readonly maxDelayMs: number;
}

const DEFAULT_RETRY: StoreRetryPolicy = Object.freeze({ attempts: 5, initialDelayMs: 100, maxDelayMs: 2000 });

function retryPolicy(retry: Partial<StoreRetryPolicy> | false | undefined): StoreRetryPolicy {
  if (retry === false) return Object.freeze({ ...DEFAULT_RETRY, attempts: 1 });
  if (retry === undefined) return DEFAULT_RETRY;
  if (typeof retry !== "object" || retry === null) {
    throw new SandboxConfigError("rootfs.cow({ retry }) takes { attempts?, initialDelayMs?, maxDelayMs? } or false");
  }
  const int = (what: string, v: number | undefined, def: number, min: number, max: number) => {
    const n = v ?? def;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new SandboxConfigError(`retry.${what} must be an integer from ${min} to ${max}, got ${String(v)}`);
    return n;
  };
  const initialDelayMs = int("initialDelayMs", retry.initialDelayMs, DEFAULT_RETRY.initialDelayMs, 1, 600_000);
  return Object.freeze({
    attempts: int("attempts", retry.attempts, DEFAULT_RETRY.attempts, 1, 100),
    initialDelayMs,
    maxDelayMs: int("maxDelayMs", retry.maxDelayMs, Math.max(DEFAULT_RETRY.maxDelayMs, initialDelayMs), initialDelayMs, 600_000),
  });
}

/** Any root filesystem a definition can name (`rootfs.builtIn`, `rootfs.image`, `rootfs.ephemeral`, `rootfs.cow`). */
export type RootfsSpec = BuiltInRootfs | ImageFileRootfs | EphemeralRootfs | CowRootfs;
export type { ComposedRootfs, FlattenedImage, ImageByteStore };

/** Copy-on-write block size used by the native engine. */
export const COW_BLOCK_SIZE = 64 * 1024;
/** Default dirty-bytes budget (64 MiB). */
export const DEFAULT_MAX_DIRTY_BYTES = 64 * 1024 * 1024;

function isBase(value: unknown): value is BaseImage {
  const kind = (value as { kind?: unknown } | null)?.kind;
  return kind === "builtIn" || kind === "image";
}

const BASE_HINT = 'rootfs.builtIn("…") or rootfs.image({ path, digest })';

/**
 * Root filesystems: read-only catalog images (`builtIn`) and your own pinned
 * images (`image`), images built from setup steps (`build`), writable roots
 * whose changes are discarded (`ephemeral`) or kept in your own block store
 * (`cow`), and the offline view and export of a store (`compose`, `flatten`,
 * `bytes`). See docs/rootfs.md and docs/images.md.
 */
export const rootfs = {
  /**
   * A read-only image from the catalog: the platform package's built-in
   * images (`debian:12`, `busybox`), then images this user imported
   * (`importImage`, `sandbox images import`) or built (`rootfs.build`).
   * Accepts `name`, `name:tag`, `name@sha256:…` (refused unless the name
   * still has that digest) and `sha256:…`. See `listImages()`.
   */
  builtIn(name: string): BuiltInRootfs {
    if (typeof name !== "string" || name.trim() === "") {
      throw new SandboxConfigError('rootfs.builtIn(name) needs an image name such as "debian:12"');
    }
    return Object.freeze({ kind: "builtIn" as const, name });
  },

  /**
   * Your own image file (qcow2 or raw, holding an ext4 filesystem), pinned by
   * its sha256: `boot()` hashes the file first and fails with
   * `ImageDigestMismatchError` (both digests named) if it changed. Read-only
   * like a built-in image; usable as `base` of `ephemeral`, `cow` and `compose`.
   */
  image(options: { path: string; digest: string; format?: "qcow2" | "raw"; filesystem?: string }): ImageFileRootfs {
    if (typeof options?.path !== "string" || options.path === "" || options.path.includes("\0")) {
      throw new SandboxConfigError("rootfs.image({ path }) needs the path of an image file");
    }
    const digest = checkDigest("rootfs.image({ digest })", options.digest);
    if (options.format !== undefined && options.format !== "qcow2" && options.format !== "raw") {
      throw new SandboxConfigError(`rootfs.image({ format }) must be "qcow2" or "raw", got ${JSON.stringify(options.format)}`);
    }
    const filesystem = options.filesystem ?? "ext4";
    if (!/^[a-z0-9]+$/.test(filesystem)) throw new SandboxConfigError(`rootfs.image({ filesystem }) must be a filesystem type such as "ext4"`);
    return Object.freeze({ kind: "image" as const, path: absoluteImagePath(options.path), digest, format: options.format, filesystem });
  },

  /**
   * Builds a new catalog image from `base` by running setup steps in a VM
   * (see `RootfsBuildOptions`); the same base digest and steps are a cache
   * hit. Resolves to `rootfs.builtIn(name)` of the result (or of its digest).
   */
  // Loaded on first use: the builder boots VMs, so it depends on the rest of the library.
  build: (options: RootfsBuildOptions): Promise<BuiltRootfs> => import("./images/build.js").then((m) => m.build(options)),

  /**
   * A writable rootfs over a built-in image: clean blocks come from the image,
   * dirty blocks are kept by the native runtime in memory up to `maxDirtyBytes`
   * (default 64 MiB, rounded down to whole 64 KiB blocks), and everything is
   * discarded when the lane ends. Writes past the budget fail in the guest.
   */
  ephemeral(options: { base: BaseImage; maxDirtyBytes?: number }): EphemeralRootfs {
    const base = options?.base;
    if (!isBase(base)) {
      throw new SandboxConfigError(`rootfs.ephemeral({ base }) needs base: ${BASE_HINT}`);
    }
    return Object.freeze({ kind: "ephemeral" as const, base, maxDirtyBytes: dirtyBudget(options.maxDirtyBytes) });
  },

  /**
   * A writable rootfs over a built-in image whose changed blocks live in
   * `writable`: clean blocks come from the image, stored blocks are read
   * lazily, and dirty blocks are written to the store whenever
   * `maxDirtyBytes` (default 64 MiB, whole 64 KiB blocks) fills up and when
   * the guest syncs or shuts down. Attach a store to one running lane at a time.
   * Each store call must settle within `storeTimeoutMs` (default 30 s); a
   * failed call is retried within that time (`retry`, see StoreRetryPolicy;
   * each retry is a `store-retry` event of `boot({ onEvent })`), and a call
   * that still fails or is late is an I/O error in the guest and a
   * `BlockStoreError` on the host (`boot({ onError })`, and `lane.close()` rejects).
   */
  cow(
    options:
      | { base: BaseImage; writable: SandboxBlockStore; maxDirtyBytes?: number; storeTimeoutMs?: number; retry?: Partial<StoreRetryPolicy> | false }
      | { source: ComposedRootfs; maxDirtyBytes?: number; storeTimeoutMs?: number; retry?: Partial<StoreRetryPolicy> | false },
  ): CowRootfs {
    if (options && "source" in options) {
      const { source } = options;
      if (source?.kind !== "composed") throw new SandboxConfigError("rootfs.cow({ source }) needs source: rootfs.compose({ base, overlay })");
      return rootfs.cow({
        base: source.base,
        writable: source.overlay,
        maxDirtyBytes: options.maxDirtyBytes,
        storeTimeoutMs: options.storeTimeoutMs,
        retry: options.retry,
      });
    }
    const base = options?.base;
    if (!isBase(base)) {
      throw new SandboxConfigError(`rootfs.cow({ base }) needs base: ${BASE_HINT}`);
    }
    const writable = checkBlockStore(options.writable, COW_BLOCK_SIZE);
    const storeTimeoutMs = options.storeTimeoutMs ?? DEFAULT_STORE_TIMEOUT_MS;
    if (!Number.isSafeInteger(storeTimeoutMs) || storeTimeoutMs < 1 || storeTimeoutMs > 3_600_000) {
      throw new SandboxConfigError(`storeTimeoutMs must be an integer between 1 and 3600000 ms, got ${String(storeTimeoutMs)}`);
    }
    return Object.freeze({
      kind: "cow" as const,
      base,
      writable,
      maxDirtyBytes: dirtyBudget(options.maxDirtyBytes),
      storeTimeoutMs,
      retry: retryPolicy(options.retry),
    });
  },

  /** The merged view of a base image and a block-store overlay, for boot (`cow({ source })`) or export. */
  compose(options: { base: BaseImage; overlay: SandboxBlockStore }): ComposedRootfs {
    const base = options?.base;
    if (!isBase(base)) {
      throw new SandboxConfigError(`rootfs.compose({ base }) needs base: ${BASE_HINT}`);
    }
    return Object.freeze({ kind: "composed" as const, base, overlay: checkBlockStore(options.overlay, COW_BLOCK_SIZE) });
  },

  /** Writes a standalone QCOW2 of `source` into `dest` (random-access image storage). */
  flatten,

  /** Streams an image container's bytes: a built-in image file or a flattened image. */
  bytes,
};

/** maxDirtyBytes: at least one block, rounded down to whole blocks. */
function dirtyBudget(value: number | undefined): number {
  const requested = value ?? DEFAULT_MAX_DIRTY_BYTES;
  if (typeof requested !== "number" || !Number.isSafeInteger(requested) || requested < COW_BLOCK_SIZE) {
    throw new SandboxConfigError(
      `maxDirtyBytes must be an integer of at least ${COW_BLOCK_SIZE} bytes (one block), got ${String(requested)}`,
    );
  }
  return Math.floor(requested / COW_BLOCK_SIZE) * COW_BLOCK_SIZE;
}

export function isRootfsSpec(value: unknown): value is RootfsSpec {
  if (typeof value !== "object" || value === null) return false;
  const kind = (value as { kind?: unknown }).kind;
  const base = (value as { base?: unknown }).base;
  return kind === "builtIn" || kind === "image" || ((kind === "ephemeral" || kind === "cow") && isBase(base));
}
