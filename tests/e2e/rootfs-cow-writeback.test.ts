/**
 * The copy-on-write engine on a real VM: guest I/O does not wait on store
 * calls it does not need, and a clean close leaves the root filesystem clean.
 */
import { describe, expect, it } from "vitest";
import {
  BlockStoreError,
  defineSandbox,
  MemoryBlockStore,
  rootfs,
  type SandboxBlockStoreContext,
} from "../../src/index.js";
import { alive, waitUntil } from "./helpers.js";

const debian = rootfs.builtIn("debian:12");

/** A store whose flush() never settles once `hang` is set. */
class HungFlushStore extends MemoryBlockStore {
  hang = false;
  flushCalls = 0;
  override async flush(): Promise<void> {
    this.flushCalls++;
    if (this.hang) return new Promise(() => {});
  }
}

describe("rootfs.cow write-back on a real VM", () => {
  it("reads of the base image complete in < 2 s while the store's flush() never resolves", async () => {
    const store = new HungFlushStore();
    const seen: BlockStoreError[] = [];
    const lane = await defineSandbox({ rootfs: rootfs.cow({ base: debian, writable: store, storeTimeoutMs: 8000 }) }).boot({
      onError: (e) => seen.push(e),
    });
    store.hang = true;
    const before = store.flushCalls;
    // A sync in the background: its FLUSH reaches the store and hangs there.
    const bg = await lane.exec("sh", ["-c", "echo data > /root/f && (nohup sync >/dev/null 2>&1 &) && echo started"]);
    expect(bg.stdout).toBe("started\n");
    expect(await waitUntil(() => store.flushCalls > before, 10_000)).toBe(true);

    // Base blocks nobody read yet: the middle of the device (O_DIRECT, no
    // guest cache) and a large library no boot touches.
    const started = Date.now();
    const r = await lane.exec("sh", [
      "-c",
      `set -e
       mib=$(( $(cat /sys/block/vda/size) / 2048 ))
       t0=$(date +%s%N)
       dd if=/dev/vda of=/dev/null bs=1M count=8 skip=$(( mib / 2 )) iflag=direct status=none
       t1=$(date +%s%N)
       lib=$(ls -S /usr/lib/x86_64-linux-gnu/*.so* | head -1)
       cat "$lib" > /dev/null
       t2=$(date +%s%N)
       echo "dd_ms=$(( (t1 - t0) / 1000000 )) cat_ms=$(( (t2 - t1) / 1000000 )) lib=$lib"`,
    ]);
    const elapsed = Date.now() - started;
    expect(r.exitCode, r.stderr).toBe(0);
    const m = /dd_ms=(\d+) cat_ms=(\d+)/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    console.log(`while flush() hangs: ${r.stdout.trim()}, exec round trip ${elapsed} ms`);
    expect(Number(m![1])).toBeLessThan(2000);
    expect(Number(m![2])).toBeLessThan(2000);
    expect(elapsed).toBeLessThan(4000);
    // The flush was still hung the whole time: nothing timed out yet.
    expect(seen).toEqual([]);

    // Every hung flush fails at storeTimeoutMs; close() then reports it.
    store.hang = false;
    const closed = await lane.close().then(() => undefined, (e: unknown) => e);
    expect(closed).toBeInstanceOf(BlockStoreError);
    expect((closed as BlockStoreError).op).toBe("flush");
    expect((closed as BlockStoreError).timedOut).toBe(true);
  });

  it("close() settles within storeTimeoutMs + 10 s while the store's flush() never resolves", async () => {
    const store = new HungFlushStore();
    const lane = await defineSandbox({ rootfs: rootfs.cow({ base: debian, writable: store, storeTimeoutMs: 5000 }) }).boot({ onError: () => {} });
    await lane.exec("sh", ["-c", "echo data > /root/g"]);
    store.hang = true;
    const t0 = Date.now();
    const closed = await lane.close().then(() => undefined, (e: unknown) => e);
    const took = Date.now() - t0;
    console.log(`close() with a hung flush took ${took} ms`);
    expect(took).toBeLessThan(5000 + 10_000);
    expect(closed).toBeInstanceOf(BlockStoreError);
    expect(await waitUntil(() => !alive(lane.info.vmmPid) && !alive(lane.info.helperPid), 5000)).toBe(true);
  });

  it("after a clean close() the next boot mounts the root without journal recovery", async () => {
    const store = new MemoryBlockStore();
    const sandbox = defineSandbox({ rootfs: rootfs.cow({ base: debian, writable: store }) });
    {
      await using lane = await sandbox.boot();
      // Synced and unsynced changes, and a file deleted while open (an orphan
      // inode until its last user dies at shutdown).
      const w = await lane.exec("sh", [
        "-c",
        `echo synced > /root/a && sync
         dd if=/dev/urandom of=/root/big bs=64k count=64 status=none
         (exec 3</root/big; rm /root/big; sleep 600) >/dev/null 2>&1 &
         echo unsynced > /root/b
         echo ok`,
      ]);
      expect(w.stdout).toBe("ok\n");
    }
    await using lane = await sandbox.boot();
    const r = await lane.exec("sh", ["-c", "cat /root/a /root/b; dmesg | grep 'EXT4-fs (vda)'"]);
    console.log(`next boot: ${r.stdout.trim().replaceAll("\n", " | ")}`);
    expect(r.stdout).toMatch(/^synced\nunsynced\n/);
    expect(r.stdout).toMatch(/EXT4-fs \(vda\): mounted filesystem/);
    expect(r.stdout).not.toMatch(/recovery complete|orphan/i);
  });
});
