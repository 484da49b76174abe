/** A `rootfs.cow` root's block store: attached to one lane at a time, listed before any VM starts. */
import { SandboxConfigError } from "../errors.js";
import { checkListed, withStoreDeadline, type SandboxBlockStore } from "../rootfs/block-store.js";
import type { RootfsSpec, StoreRetryPolicy } from "../rootfs.js";

/** Block stores attached to a running lane of this process (a store serves one lane at a time). */
const storesInUse = new WeakSet<SandboxBlockStore>();

export interface AttachedStore {
  store: SandboxBlockStore;
  retry: StoreRetryPolicy;
  /** The store's `list()` answer, served to the engine's first `list` request. */
  listed: number[];
  timeoutMs: number;
  release(): void;
}

/** Takes the store of a cow root for this boot; undefined for other roots. */
export async function attachStore(root: RootfsSpec, base: string): Promise<AttachedStore | undefined> {
  if (root.kind !== "cow") return undefined;
  const store = root.writable;
  if (storesInUse.has(store)) {
    throw new SandboxConfigError(
      "this writable block store is already attached to a running sandbox lane; a rootfs.cow store serves one lane at a time (close the other lane or use another store)",
    );
  }
  storesInUse.add(store);
  const release = () => storesInUse.delete(store);
  // The store's first call, made before any VM starts: a store that rejects this
  // base (BlockStoreBaseMismatchError) or cannot answer fails boot cheaply and clearly.
  try {
    const listed = await withStoreDeadline("list", "list()", root.storeTimeoutMs, async () => checkListed(await store.list({ base })));
    return { store, listed, timeoutMs: root.storeTimeoutMs, retry: root.retry, release };
  } catch (err) {
    release();
    throw err;
  }
}
