/** Root filesystem descriptions. A description is inert: nothing boots or reads until `boot()`. */
import { SandboxConfigError } from "./errors.js";

export interface BuiltInRootfs {
  readonly kind: "builtIn";
  /** Catalog name, e.g. `debian:12` or `busybox`. */
  readonly name: string;
}

/** A writable root whose changes live in helper memory and vanish when the lane ends. */
export interface EphemeralRootfs {
  readonly kind: "ephemeral";
  readonly base: BuiltInRootfs;
  /** Dirty-bytes budget (block-aligned); guest writes past it fail with an I/O error. */
  readonly maxDirtyBytes: number;
}

export type RootfsSpec = BuiltInRootfs | EphemeralRootfs;

/** Copy-on-write block size used by the native engine. */
export const COW_BLOCK_SIZE = 64 * 1024;
/** Default dirty-bytes budget (64 MiB). */
export const DEFAULT_MAX_DIRTY_BYTES = 64 * 1024 * 1024;

export const rootfs = {
  /** A read-only image from the installed catalog (see `listBuiltInImages()`). */
  builtIn(name: string): BuiltInRootfs {
    if (typeof name !== "string" || name.trim() === "") {
      throw new SandboxConfigError('rootfs.builtIn(name) needs an image name such as "debian:12"');
    }
    return Object.freeze({ kind: "builtIn" as const, name });
  },

  /**
   * A writable rootfs over a built-in image: clean blocks come from the image,
   * dirty blocks are kept by the native runtime in memory up to `maxDirtyBytes`
   * (default 64 MiB, rounded down to whole 64 KiB blocks), and everything is
   * discarded when the lane ends. Writes past the budget fail in the guest.
   */
  ephemeral(options: { base: BuiltInRootfs; maxDirtyBytes?: number }): EphemeralRootfs {
    const base = options?.base;
    if (!base || base.kind !== "builtIn") {
      throw new SandboxConfigError('rootfs.ephemeral({ base }) needs base: rootfs.builtIn("…")');
    }
    const requested = options.maxDirtyBytes ?? DEFAULT_MAX_DIRTY_BYTES;
    if (typeof requested !== "number" || !Number.isSafeInteger(requested) || requested < COW_BLOCK_SIZE) {
      throw new SandboxConfigError(
        `maxDirtyBytes must be an integer of at least ${COW_BLOCK_SIZE} bytes (one block), got ${String(requested)}`,
      );
    }
    const maxDirtyBytes = Math.floor(requested / COW_BLOCK_SIZE) * COW_BLOCK_SIZE;
    return Object.freeze({ kind: "ephemeral" as const, base, maxDirtyBytes });
  },
};

export function isRootfsSpec(value: unknown): value is RootfsSpec {
  if (typeof value !== "object" || value === null) return false;
  const kind = (value as { kind?: unknown }).kind;
  return kind === "builtIn" || (kind === "ephemeral" && isRootfsSpec((value as { base?: unknown }).base));
}
