/**
 * Object storage fails transiently as a matter of course: a store call that
 * fails is retried within storeTimeoutMs, so the guest never sees the error.
 */
import { describe, expect, it } from "vitest";
import {
  defineSandbox,
  MemoryBlockStore,
  rootfs,
  type LaneEvent,
  type SandboxBlockChunk,
  type SandboxBlockRange,
  type SandboxBlockStoreContext,
} from "../../src/index.js";

/** Fails every distinct call once, then lets its retry through. */
class FlakyStore extends MemoryBlockStore {
  readonly seen = new Set<string>();
  failuresInjected = 0;
  #once(key: string): void {
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.failuresInjected++;
    throw new Error(`transient failure of ${key}`);
  }
  override async read(range: SandboxBlockRange, ctx: SandboxBlockStoreContext): Promise<readonly SandboxBlockChunk[]> {
    this.#once(`read ${range.start}+${range.count}`);
    return super.read(range, ctx);
  }
  override async write(chunks: readonly SandboxBlockChunk[], ctx: SandboxBlockStoreContext): Promise<void> {
    this.#once(`write ${chunks.map((c) => c.index).join(",")}`);
    return super.write(chunks, ctx);
  }
  #flushes = 0;
  override async flush(): Promise<void> {
    // Every flush fails once: its retry (the next call) goes through.
    if (this.#flushes++ % 2 === 0) {
      this.failuresInjected++;
      throw new Error("transient failure of flush");
    }
  }
}

describe("rootfs.cow store retries", () => {
  it("a store that fails each call once: 64 MiB written and synced without an error in the guest; retries are events", async () => {
    const store = new FlakyStore();
    const events: LaneEvent[] = [];
    const errors: unknown[] = [];
    const sandbox = defineSandbox({ rootfs: rootfs.cow({ base: rootfs.builtIn("debian:12"), writable: store, storeTimeoutMs: 20_000 }) });
    const lane = await sandbox.boot({ onEvent: (e) => events.push(e), onError: (e) => errors.push(e) });
    const w = await lane.exec("sh", [
      "-c",
      "set -e; head -c 67108864 /dev/urandom > /root/big; sync; sha256sum /root/big | cut -d' ' -f1 > /root/big.sum; sync; cat /root/big.sum",
    ]);
    expect(w.exitCode, w.stderr).toBe(0);
    const sum = w.stdout.trim();
    await lane.close();
    expect(errors).toEqual([]);
    const retries = events.filter((e) => e.type === "store-retry");
    expect(retries.length).toBeGreaterThan(10);
    expect(retries.length).toBe(store.failuresInjected);
    expect(new Set(retries.map((e) => e.type === "store-retry" && e.op))).toEqual(new Set(["write", "flush", ...(retries.some((e) => e.type === "store-retry" && e.op === "read") ? ["read"] : [])]));

    // A fresh boot reads the file back from the store (each read failing once too).
    await using again = await sandbox.boot({ onError: (e) => errors.push(e) });
    const r = await again.exec("sh", ["-c", "sha256sum /root/big | cut -d' ' -f1"]);
    expect(r.stdout.trim()).toBe(sum);
    expect(errors).toEqual([]);
  }, 300_000);
});
