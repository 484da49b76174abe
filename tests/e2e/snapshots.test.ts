import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, truncateSync, cpSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  defineSandbox,
  DirectorySnapshotStore,
  MemoryBlockStore,
  listSavedSnapshots,
  rootfs,
  SandboxSnapshotError,
  type Lane,
  type LaneEvent,
  type SandboxSnapshot,
} from "../../src/index.js";
import { createSandboxCa, generateRsaKey } from "../../src/network/http/ca.js";
import { ADDR, createNetns } from "./netns.js";

// One checkpointed lane serves every test: boots under TCG are the slow part.
const sandbox = defineSandbox({
  rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }),
  resources: { cpus: 1, memoryMiB: 512 },
});

/** The load fixture in its own process, with its own snapshot directory. */
async function runFixtureWith(store: string, id: string, snapshotDir: string) {
  const { execFile } = await import("node:child_process");
  const { fileURLToPath } = await import("node:url");
  const script = fileURLToPath(new URL("./fixtures/snapshot-load.mjs", import.meta.url));
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [script, store, id], { timeout: 300_000, env: { ...process.env, SANDBOX_SNAPSHOT_DIR: snapshotDir } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

const sh = async (lane: Lane, script: string) => {
  const r = await lane.exec("sh", ["-c", script]);
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  return r.stdout.trim();
};

let lane: Lane;
let snap: SandboxSnapshot;
let counterAtCheckpoint = 0;
let checkpointedAt = 0;

beforeAll(async () => {
  lane = await sandbox.boot({ hostname: "original" });
  // A tmpfs /tmp, a change on the ephemeral root, a background counter and a Python REPL in a pty.
  await sh(lane, "mount -t tmpfs tmpfs /tmp && echo hello > /tmp/note && echo on-disk > /root/disk-note");
  await sh(lane, "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/c.tmp; mv /run/c.tmp /run/counter; sleep 0.1; done' >/dev/null 2>&1 &");
  const repl = lane.pty("python3", ["-q", "-i"]);
  const w = repl.input.getWriter();
  // The REPL holds x; a thread of it keeps writing x to /tmp/x, so a restored fork can show the variable is still set.
  await w.write(new TextEncoder().encode("import threading, time\nx = 41 + 1\n"));
  await w.write(new TextEncoder().encode("threading.Thread(target=lambda: [(open('/tmp/x', 'w').write(str(x)), time.sleep(0.2)) for _ in iter(int, 1)], daemon=True).start()\n"));
  void repl.output.pipeTo(new WritableStream());
  for (let i = 0; i < 100 && (await lane.exec("cat", ["/tmp/x"])).stdout !== "42"; i++) await new Promise((r) => setTimeout(r, 100));
  counterAtCheckpoint = Number(await sh(lane, "cat /run/counter"));
  snap = await lane.checkpoint();
  checkpointedAt = Date.now();
}, 300_000);

afterAll(async () => {
  await lane?.close();
  await snap?.delete();
});

describe("snapshots on a real VM (qemu)", () => {
  it("checkpoints a running lane, which keeps running", async () => {
    expect(counterAtCheckpoint).toBeGreaterThan(0);
    expect(snap.stats.pausedMs).toBeGreaterThan(0);
    expect(snap.stats.ramBytes).toBeGreaterThan(16 << 20);
    const after = Number(await sh(lane, "sleep 0.5; cat /run/counter"));
    expect(after).toBeGreaterThan(counterAtCheckpoint);
    expect(await sh(lane, "cat /tmp/note /root/disk-note")).toBe("hello\non-disk");
  });

  it("restores processes, tmpfs files, root changes and a REPL's variable; sets a fresh hostname", async () => {
    await using fork = await snap.boot({ hostname: "fork-a" });
    expect(await sh(fork, "cat /tmp/note /root/disk-note; hostname")).toBe("hello\non-disk\nfork-a");
    const c1 = Number(await sh(fork, "cat /run/counter"));
    // Counting on from where it was, not from zero.
    expect(c1).toBeGreaterThanOrEqual(counterAtCheckpoint);
    const c2 = Number(await sh(fork, "sleep 1; cat /run/counter"));
    expect(c2).toBeGreaterThan(c1);
    // The REPL process (detached from any host handle) still holds x = 42 and rewrites the file.
    expect(await sh(fork, "rm /tmp/x; sleep 1; cat /tmp/x")).toBe("42");
    expect(await sh(fork, "pgrep -c python3")).toBe("1");
  });

  it("a fork can itself be checkpointed (its RAM travels in the stream); that snapshot boots with the fork's changes", async () => {
    await using fork = await snap.boot({ hostname: "gen2" });
    await sh(fork, "echo second > /tmp/gen2 && echo disk2 > /root/gen2");
    const second = await fork.checkpoint();
    try {
      expect(second.stats.ramBytes).toBeGreaterThan(16 << 20);
      // The fork runs on after its own checkpoint.
      expect(await sh(fork, "cat /tmp/gen2")).toBe("second");
      await using grandchild = await second.boot({ hostname: "gen3" });
      expect(await sh(grandchild, "cat /tmp/note /tmp/gen2 /root/disk-note /root/gen2; hostname")).toBe("hello\nsecond\non-disk\ndisk2\ngen3");
      const c1 = Number(await sh(grandchild, "cat /run/counter"));
      expect(Number(await sh(grandchild, "sleep 1; cat /run/counter"))).toBeGreaterThan(c1);
    } finally {
      await second.delete();
    }
  }, 180_000);

  it("10 forks: distinct randomness, private disks", async () => {
    const forks = await Promise.all(Array.from({ length: 10 }, (_, i) => snap.boot({ hostname: `fork-${i}` })));
    try {
      const seen = await Promise.all(forks.map((f) => sh(f, "cat /proc/sys/kernel/random/uuid; head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")));
      const uuids = seen.map((s) => s.split("\n")[0]);
      const bytes = seen.map((s) => s.split("\n")[1]);
      expect(new Set(uuids).size).toBe(10);
      expect(new Set(bytes).size).toBe(10);
      await sh(forks[0]!, "echo mine > /root/only-fork-0 && echo mine > /tmp/only-fork-0 && sync");
      for (const f of forks.slice(1)) expect(await sh(f, "ls /root/only-fork-0 /tmp/only-fork-0 2>/dev/null; true")).toBe("");
      expect(await sh(lane, "ls /root/only-fork-0 /tmp/only-fork-0 2>/dev/null; true")).toBe("");
      await using later = await snap.boot();
      expect(await sh(later, "ls /root/only-fork-0 /tmp/only-fork-0 2>/dev/null; true")).toBe("");
    } finally {
      await Promise.all(forks.map((f) => f.close()));
    }
  }, 300_000);

  it("saves to a directory store; another Node process with another snapshot dir loads and boots it", async () => {
    const storeDir = mkdtempSync(join(tmpdir(), "sbx-snapstore-"));
    try {
      const store = new DirectorySnapshotStore(storeDir);
      const id = await snap.save(store, "snap-1");
      expect(await listSavedSnapshots(store)).toEqual(["snap-1"]);
      const other = mkdtempSync(join(tmpdir(), "sbx-snapdir-"));
      const r = await runFixtureWith(storeDir, id, other);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { stdout: string; dir: string };
      expect(out.dir.startsWith(other)).toBe(true);
      const [note, disk, host, counter] = out.stdout.trim().split("\n");
      expect([note, disk, host]).toEqual(["hello", "on-disk", "elsewhere"]);
      expect(Number(counter)).toBeGreaterThanOrEqual(counterAtCheckpoint);
      rmSync(other, { recursive: true, force: true });

      // A save that died before its manifest is never listed.
      const half = new DirectorySnapshotStore(join(storeDir, "half"));
      cpSync(join(storeDir, "snap-1"), join(storeDir, "half", "snap-2"), { recursive: true });
      unlinkSync(join(storeDir, "half", "snap-2", "manifest.json"));
      expect(await listSavedSnapshots(half)).toEqual([]);
      await expect(sandbox.loadSnapshot(half, "snap-2")).rejects.toBeInstanceOf(SandboxSnapshotError);

      // Truncated: a typed error, fast.
      truncateSync(join(storeDir, "snap-1", "state"), 1000);
      const t = Date.now();
      const err = await sandbox.loadSnapshot(store, "snap-1").catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SandboxSnapshotError);
      expect(String(err)).toMatch(/truncated|corrupt/);
      expect(Date.now() - t).toBeLessThan(5000);
      expect(readdirSync(join(storeDir, "snap-1"))).toContain("manifest.json");
    } finally {
      rmSync(storeDir, { recursive: true, force: true });
    }
  }, 300_000);

  it("refuses to boot a snapshot into a runtime that differs (typed, before booting)", async () => {
    const storeDir = mkdtempSync(join(tmpdir(), "sbx-snapstore-"));
    try {
      const store = new DirectorySnapshotStore(storeDir);
      await snap.save(store, "snap-m");
      const bigger = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }), resources: { cpus: 1, memoryMiB: 768 } });
      const loaded = await bigger.loadSnapshot(store, "snap-m");
      const err = await loaded.boot().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SandboxSnapshotError);
      expect(String(err)).toContain("memoryMiB");
      await loaded.delete();
    } finally {
      rmSync(storeDir, { recursive: true, force: true });
    }
  });

  it("a rootfs.cow lane: the snapshot pins the store's state; later writes of the lane and a fork's writes never change it", async () => {
    const store = new MemoryBlockStore();
    const cow = defineSandbox({ rootfs: rootfs.cow({ base: rootfs.builtIn("debian:12"), writable: store }), resources: { cpus: 1, memoryMiB: 512 } });
    const hash = "sha256sum /root/big | cut -d' ' -f1";
    let atCheckpoint = "";
    let pinned: SandboxSnapshot | undefined;
    try {
      {
        await using l = await cow.boot();
        // 8 MiB that reach the store (sync), and a change still unwritten at the checkpoint.
        await sh(l, "head -c 8388608 /dev/urandom > /root/big && echo v1 > /root/a && sync && echo unsynced > /root/b");
        atCheckpoint = await sh(l, hash);
        pinned = await l.checkpoint();
        expect(pinned.stats.diskBytes).toBeGreaterThanOrEqual(8 << 20);
        // The lane runs on and overwrites everything; its store changes, the snapshot must not.
        await sh(l, "head -c 8388608 /dev/urandom > /root/big && echo v2 > /root/a && sync");
        expect(await sh(l, hash)).not.toBe(atCheckpoint);
      }
      const drop = "sync; echo 3 > /proc/sys/vm/drop_caches";
      for (const name of ["cow-fork-1", "cow-fork-2"]) {
        await using fork = await pinned!.boot({ hostname: name });
        // Page cache dropped: the bytes come from the fork's disk, i.e. the snapshot.
        expect(await sh(fork, `${drop}; ${hash}; cat /root/a /root/b`)).toBe(`${atCheckpoint}\nv1\nunsynced`);
        expect(await sh(fork, "ls /root/from-fork-1 2>/dev/null; true")).toBe("");
        await sh(fork, "echo mine > /root/from-fork-1 && sync");
      }
      // The store has the lane's last state, none of the forks' writes.
      await using again = await cow.boot();
      expect(await sh(again, "cat /root/a; ls /root/from-fork-1 2>/dev/null; true")).toBe("v2");
    } finally {
      await pinned?.delete();
    }
  }, 300_000);

  it("a checkpoint whose store cannot be read fails typed; idle hibernation reports it once and the lane keeps running", async () => {
    const store = new MemoryBlockStore();
    const cow = defineSandbox({ rootfs: rootfs.cow({ base: rootfs.builtIn("debian:12"), writable: store }), resources: { cpus: 1, memoryMiB: 512 } });
    {
      await using first = await cow.boot();
      await sh(first, "head -c 4194304 /dev/urandom > /root/cold && sync");
    }
    // A second lane on the same store never reads /root/cold: only the store holds those blocks.
    const read = store.read.bind(store);
    let failing = false;
    store.read = (range, context) => (failing ? Promise.reject(new Error("store offline")) : read(range, context));
    const events: LaneEvent[] = [];
    await using l = await cow.boot({ idleTimeoutMs: 1000, onEvent: (e) => events.push(e) });
    failing = true;
    const err = await l.checkpoint().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxSnapshotError);
    expect(String(err)).toContain("store offline");
    for (let i = 0; i < 50 && !events.some((e) => e.type === "hibernate-failed"); i++) await new Promise((r) => setTimeout(r, 100));
    const failed = events.find((e) => e.type === "hibernate-failed");
    expect(failed?.type === "hibernate-failed" && failed.error).toBeInstanceOf(SandboxSnapshotError);
    failing = false;
    expect(await sh(l, "echo alive > /root/after && sync && cat /root/after")).toBe("alive");
  }, 180_000);

  it("kill -9 of Node during checkpoint(): no helper or QEMU left, the half-written snapshot is never valid", async () => {
    const parent = mkdtempSync(join(tmpdir(), "sbx-snapkill-"));
    const dir = join(parent, "snap-killed");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(dir);
    try {
      const script = fileURLToPath(new URL("./fixtures/snapshot-kill.mjs", import.meta.url));
      const child = spawn(process.execPath, [script, dir], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      await new Promise<void>((resolve, reject) => {
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString();
          if (out.includes('"ready"')) resolve();
        });
        child.on("exit", (code) => reject(new Error(`snapshot-kill.mjs exited with ${code} before it was ready: ${out}`)));
      });
      // Every descendant of the fixture (the helper, QEMU and whatever they run).
      const descendants = (pid: number): number[] => {
        let kids: number[] = [];
        try {
          kids = execFileSync("pgrep", ["-P", String(pid)]).toString().trim().split("\n").filter(Boolean).map(Number);
        } catch {
          // no children
        }
        return kids.flatMap((k) => [k, ...descendants(k)]);
      };
      const pids = descendants(child.pid!);
      expect(pids.length).toBeGreaterThanOrEqual(2);
      // Kill as soon as the checkpoint has started writing files.
      const deadline = Date.now() + 60_000;
      while (readdirSync(dir).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
      const written = readdirSync(dir);
      // Also what the checkpoint itself started (QEMU's migration writer).
      pids.push(...descendants(child.pid!).filter((p) => !pids.includes(p)));
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      expect(written.length).toBeGreaterThan(0);
      console.log(`kill -9 during checkpoint: files written ${written.join(",")}, pids checked ${pids.length}`);
      expect(out).not.toContain("checkpointed");
      const alive = (p: number) => {
        try {
          process.kill(p, 0);
          return true;
        } catch {
          return false;
        }
      };
      for (let i = 0; i < 100 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
      expect(pids.filter(alive)).toEqual([]);
      // Whatever was half-written is not a snapshot: never listed, and loading it is a typed error.
      const store = new DirectorySnapshotStore(parent);
      expect(await listSavedSnapshots(store)).toEqual([]);
      await expect(sandbox.loadSnapshot(store, basename(dir))).rejects.toBeInstanceOf(SandboxSnapshotError);
      expect(dirname(dir)).toBe(parent);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  }, 300_000);

  it("with HTTP interception: a fork curls https through the middleware with its new CA, and the policy sees its flows", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sbx-snaphttp-"));
    const ns = createNetns();
    try {
      const ca = await createSandboxCa({ commonName: "upstream test CA" });
      const key = await generateRsaKey();
      const keyPem = key.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
      const token = "tok-" + "snapshot-fork";
      writeFileSync(join(dir, "upstream.json"), JSON.stringify({ dnsIp: ADDR.dns, token, zone: { "api.test": ADDR.api }, servers: [{ name: "api.test", ip: ADDR.api, keyPem, certPem: ca.issueLeaf("api.test", key) }] }));
      writeFileSync(join(dir, "lane.json"), JSON.stringify({ dnsIp: ADDR.dns, token, caPem: ca.certPem }));
      await ns.startNode(ns.inet, "http-upstream.mjs", [join(dir, "upstream.json")], (l) => l.includes('"ready"'));
      const { lines } = await ns.startNode(ns.host, "snapshot-http.mjs", [join(dir, "lane.json")], (l) => l.startsWith('{"results"'));
      const { results: r } = JSON.parse(lines.find((l) => l.startsWith('{"results"'))!);
      expect(r.before).toEqual({ exitCode: 0, stdout: JSON.stringify({ server: "api.test", path: "/before-checkpoint", authorized: true }), stderr: "" });
      expect(r.after.stderr).toBe("");
      expect(JSON.parse(r.after.stdout)).toEqual({ server: "api.test", path: "/after-restore", authorized: true });
      expect(r.caChanged).toBe(true);
      // Only the fork was running: the callback and the middleware saw its flow.
      expect(r.seenByFork).toContain("api.test");
      expect(r.seenByFork).toContain("middleware");
    } finally {
      ns.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);

  it("boot({ idleTimeoutMs }) hibernates an idle lane (not while a process runs) and hands the snapshot over in an event", async () => {
    const events: LaneEvent[] = [];
    const idle = await sandbox.boot({ hostname: "idler", idleTimeoutMs: 2000, onEvent: (e) => events.push(e) });
    let woke: Lane | undefined;
    let parked: SandboxSnapshot | undefined;
    try {
      await sh(idle, "echo parked > /root/idle-note");
      // A process running longer than the timeout is activity.
      await sh(idle, "sleep 3");
      const settledAt = Date.now();
      expect(events.filter((e) => e.type === "hibernated" || e.type === "hibernate-failed")).toEqual([]);
      for (let i = 0; i < 300 && !events.some((e) => e.type === "hibernated" || e.type === "hibernate-failed"); i++) await new Promise((r) => setTimeout(r, 100));
      const ev = events.find((e) => e.type === "hibernated" || e.type === "hibernate-failed");
      expect(ev?.type).toBe("hibernated");
      if (ev?.type !== "hibernated") return;
      parked = ev.snapshot;
      expect(ev.idleMs).toBe(2000);
      expect(Date.now() - settledAt).toBeGreaterThanOrEqual(2000);
      expect(idle.closed).toBe(true);
      woke = await ev.snapshot.boot();
      expect(await sh(woke, "cat /root/idle-note; hostname")).toBe("parked\nidler");
    } finally {
      await woke?.close();
      await idle.close();
      await parked?.delete();
    }
  }, 120_000);

  it("a restore 60 s after the checkpoint has the host's clock", async () => {
    const wait = checkpointedAt + 60_000 - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await using fork = await snap.boot();
    const before = Date.now();
    const guest = Number(await sh(fork, "date +%s.%N")) * 1000;
    const after = Date.now();
    expect(guest).toBeGreaterThan(before - 1000);
    expect(guest).toBeLessThan(after + 1000);
  }, 120_000);
});
