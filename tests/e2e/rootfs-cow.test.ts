import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startFixture } from "./helpers.js";
import {
  defineSandbox,
  DirectoryBlockStore,
  listBuiltInImages,
  MemoryBlockStore,
  BlockStoreError,
  rootfs,
  SandboxConfigError,
  type SandboxBlockChunk,
  type SandboxBlockRange,
  type SandboxBlockStoreContext,
} from "../../src/index.js";

const base = rootfs.builtIn("busybox");
const cow = (writable: MemoryBlockStore | DirectoryBlockStore, maxDirtyBytes?: number) =>
  defineSandbox({ rootfs: rootfs.cow({ base, writable, maxDirtyBytes }) });

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Counts the blocks the runtime reads from the store. */
class CountingStore extends MemoryBlockStore {
  readCalls = 0;
  blocksRead = 0;
  override async read(range: SandboxBlockRange, context: SandboxBlockStoreContext): Promise<readonly SandboxBlockChunk[]> {
    const chunks = await super.read(range, context);
    this.readCalls++;
    this.blocksRead += chunks.length;
    return chunks;
  }
}

class FailingStore extends MemoryBlockStore {
  failWrites = false;
  override async write(chunks: readonly SandboxBlockChunk[], context: SandboxBlockStoreContext): Promise<void> {
    if (this.failWrites) throw new Error("disk quota exceeded (test)");
    return super.write(chunks, context);
  }
}

describe("rootfs.cow on a real VM", () => {
  it("keeps the guest's changes in a MemoryBlockStore across boots", async () => {
    const store = new MemoryBlockStore();
    const sandbox = cow(store);
    {
      await using lane = await sandbox.boot();
      const w = await lane.exec("sh", ["-c", "echo kept > /root/note && mkdir -p /opt/x && grep ' / ' /proc/mounts"]);
      expect(w.exitCode).toBe(0);
      expect(w.stdout).toMatch(/^\/dev\/vda \/ ext4 rw/);
    }
    expect(store.size).toBeGreaterThan(0);
    {
      await using lane = await sandbox.boot();
      const r = await lane.exec("sh", ["-c", "cat /root/note && test -d /opt/x && echo dir"]);
      expect(r.stdout).toBe("kept\ndir\n");
    }
  });

  it("keeps changes in a DirectoryBlockStore across two separate boots and store objects", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sandbox-cow-"));
    dirs.push(dir);
    {
      await using lane = await cow(new DirectoryBlockStore(dir)).boot();
      const w = await lane.exec("sh", ["-c", "dd if=/dev/urandom of=/root/blob bs=64k count=40 2>/dev/null && md5sum /root/blob"]);
      expect(w.exitCode).toBe(0);
      await lane.close();
      const sha = listBuiltInImages().find((i) => i.name === "busybox")!.sha256;
      expect(readdirSync(join(dir, sha)).filter((n) => n.endsWith(".blk")).length).toBeGreaterThan(40);
      {
        await using again = await cow(new DirectoryBlockStore(dir)).boot();
        const r = await again.exec("md5sum", ["/root/blob"]);
        expect(r.stdout).toBe(w.stdout);
      }
    }
  });

  it("reads stored blocks lazily: a trivial command touches a small part of the store", async () => {
    const store = new CountingStore();
    {
      // A small budget forces write-backs during the run as well as at shutdown.
      await using lane = await cow(store, 4 * 1024 * 1024).boot();
      const w = await lane.exec("sh", ["-c", "dd if=/dev/urandom of=/root/big bs=1M count=24 2>/dev/null && echo ok"]);
      expect(w.stdout).toBe("ok\n");
    }
    const stored = store.size;
    expect(stored).toBeGreaterThan(24 * 16);
    store.readCalls = 0;
    store.blocksRead = 0;
    {
      await using lane = await cow(store).boot();
      expect((await lane.exec("true")).exitCode).toBe(0);
    }
    expect(store.blocksRead).toBeLessThan(stored / 4);
    if (process.env.SANDBOX_DEBUG) console.log(`lazy reads: ${store.blocksRead} of ${stored} stored blocks in ${store.readCalls} calls`);
  });

  it("reports a failing store as an I/O error in the guest and as a BlockStoreError on the host", async () => {
    const store = new FailingStore();
    const seen: BlockStoreError[] = [];
    const lane = await cow(store).boot({ onError: (e) => seen.push(e) });
    store.failWrites = true;
    const r = await lane.exec("sh", ["-c", "dd if=/dev/zero of=/root/f bs=64k count=8 conv=fsync 2>&1; echo rc=$?"]);
    expect(r.stdout).toMatch(/Input\/output error/);
    expect(r.stdout).not.toContain("rc=0");
    // Reported while the lane runs, before anyone closes it.
    expect(seen.length).toBeGreaterThan(0);
    expect(seen[0]).toBeInstanceOf(BlockStoreError);
    expect(seen[0]!.op).toBe("write");
    expect((seen[0]!.cause as Error).message).toBe("disk quota exceeded (test)");
    const started = Date.now();
    const closed = await lane.close().then(() => undefined, (e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(60_000);
    expect(closed).toBe(seen[0]);
    expect((closed as BlockStoreError).failures).toBe(seen.length);
    expect((closed as BlockStoreError).message).toMatch(/write\(.*failed: disk quota exceeded \(test\)/);
    // close() keeps its answer.
    await expect(lane.close()).rejects.toBe(closed);
  });

  it("refuses a second running lane on the same store with a typed error", async () => {
    const store = new MemoryBlockStore();
    const sandbox = cow(store);
    {
      await using lane = await sandbox.boot();
      await expect(sandbox.boot()).rejects.toThrow(SandboxConfigError);
      await expect(sandbox.boot()).rejects.toThrow(/already attached to a running sandbox lane/);
      expect((await lane.exec("true")).exitCode).toBe(0);
    }
    // Released once the lane ended.
    await using again = await sandbox.boot();
    expect((await again.exec("true")).exitCode).toBe(0);
  });
});

describe("rootfs.cow across Node processes (debian:12, DirectoryBlockStore)", () => {
  it("keeps an installed .deb and written files from one process to the next", async () => {
    const { execFileSync } = await import("node:child_process");
    const { mkdirSync, writeFileSync, chmodSync } = await import("node:fs");
    const { fileURLToPath } = await import("node:url");
    const work = mkdtempSync(join(tmpdir(), "sandbox-deb-"));
    dirs.push(work);
    // A tiny local package, built on the host with dpkg-deb.
    const pkg = join(work, "pkg");
    mkdirSync(join(pkg, "DEBIAN"), { recursive: true });
    mkdirSync(join(pkg, "usr/local/bin"), { recursive: true });
    writeFileSync(
      join(pkg, "DEBIAN/control"),
      "Package: sandbox-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@example.invalid>\nDescription: test package\n",
    );
    writeFileSync(join(pkg, "usr/local/bin/sandbox-hello"), "#!/bin/sh\necho hello-from-deb\n");
    chmodSync(join(pkg, "usr/local/bin/sandbox-hello"), 0o755);
    const deb = join(work, "hello.deb");
    execFileSync("dpkg-deb", ["--root-owner-group", "--build", pkg, deb], { stdio: "ignore" });

    const store = join(work, "store");
    const step = fileURLToPath(new URL("./fixtures/cow-step.mjs", import.meta.url));
    const run = (...args: string[]) =>
      JSON.parse(execFileSync(process.execPath, [step, store, ...args], { encoding: "utf8", timeout: 120_000 }).trim().split("\n").pop()!);
    const first = run("install", deb);
    expect(first).toMatchObject({ exitCode: 0, stdout: "ok\n" });
    const second = run("check");
    expect(second).toMatchObject({ exitCode: 0, stdout: "hello-from-deb\nkept\n1\n" });
  });
});

describe("rootfs.cow after kill -9 of Node during heavy writes", () => {
  it("mounts again (journal replay) with every block acknowledged by a completed sync", async () => {
    const store = mkdtempSync(join(tmpdir(), "sandbox-crash-"));
    dirs.push(store);
    const { child, line } = await startFixture("cow-crash.mjs", [store]);
    const synced = JSON.parse(line) as { exitCode: number; stdout: string };
    expect(synced.exitCode).toBe(0);
    const beforeHash = synced.stdout.split(" ")[0];
    await new Promise((r) => setTimeout(r, 3000)); // let the churn write through the budget
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));

    await using lane = await cow(new DirectoryBlockStore(store)).boot();
    const r = await lane.exec("sh", ["-c", "cat /root/marker && sha256sum /root/before && grep ' / ' /proc/mounts"]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain("durable\n");
    expect(r.stdout).toContain(`${beforeHash}  /root/before`);
    expect(r.stdout).toMatch(/\/dev\/vda \/ ext4 rw/);
  });
});
