/**
 * Mounts across checkpoint and restore (qemu): QEMU 7.2 cannot migrate
 * vhost-user-fs, so a checkpoint unplugs each mount's device, captures, and
 * plugs a fresh one back; a restore plugs the devices its boot options give.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineSandbox, fs, rootfs, SandboxSnapshotError, type Lane, type LaneEvent, type SandboxSnapshot } from "../../src/index.js";
import type { MemoryFileSystem } from "../../src/fs/memory.js";

const sandbox = defineSandbox({
  rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }),
  resources: { cpus: 1, memoryMiB: 512 },
});

const sh = async (lane: Lane, script: string) => {
  const r = await lane.exec("sh", ["-c", script]);
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  return r.stdout.trim();
};

let shared: MemoryFileSystem;
let lane: Lane;
let snap: SandboxSnapshot;

beforeAll(async () => {
  shared = fs.memory();
  shared.writeFileSync("/from-host", "host file\n");
  lane = await sandbox.boot({ mounts: { "/mnt/shared": fs.virtual(shared) } });
  await sh(lane, "echo before > /mnt/shared/before && echo in-tmp > /run/note");
  // A process holding a descriptor and its working directory on the mount across the checkpoint.
  await sh(
    lane,
    "cd /mnt/shared && nohup sh -c 'exec 3</mnt/shared/from-host; sleep 1; while :; do " +
      "if cat <&3 >/dev/null 2>>/run/fd-err; then echo ok > /run/fd; else echo failed > /run/fd; fi; " +
      "if ls . >/dev/null 2>>/run/cwd-err; then echo ok > /run/cwd; else echo failed > /run/cwd; fi; sleep 0.2; done' >/dev/null 2>&1 &",
  );
  for (let i = 0; i < 50 && (await lane.exec("cat", ["/run/fd"])).stdout.trim() !== "ok"; i++) await new Promise((r) => setTimeout(r, 100));
  snap = await lane.checkpoint();
}, 300_000);

afterAll(async () => {
  await lane?.close();
  await snap?.delete();
});

describe("mounts across checkpoint/restore (qemu)", () => {
  it("the checkpointed lane keeps its mounts: guest writes after the capture reach the JavaScript filesystem", async () => {
    expect(snap.stats.pausedMs).toBeGreaterThan(0);
    expect(await sh(lane, "cat /mnt/shared/from-host /mnt/shared/before")).toBe("host file\nbefore");
    await sh(lane, "echo after > /mnt/shared/after");
    expect(shared.readFileSync("/after", "utf8")).toBe("after\n");
    expect(await sh(lane, "grep -c virtiofs /proc/mounts")).toBe("1");
  });

  it("descriptors and working directories opened on a mount before the capture fail with ENOTCONN afterwards", async () => {
    for (let i = 0; i < 50 && (await lane.exec("cat", ["/run/cwd"])).stdout.trim() !== "failed"; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await sh(lane, "cat /run/fd /run/cwd")).toBe("failed\nfailed");
    expect(await sh(lane, "cat /run/fd-err /run/cwd-err")).toMatch(/not connected/i);
  });

  it("a restore takes the mounts of its boot options at the same paths; guest writes reach the new filesystem", async () => {
    const other = fs.memory();
    other.writeFileSync("/from-host", "other host file\n");
    await using fork = await snap.boot({ mounts: { "/mnt/shared": fs.virtual(other) } });
    expect(await sh(fork, "cat /run/note /mnt/shared/from-host")).toBe("in-tmp\nother host file");
    await sh(fork, "echo from-fork > /mnt/shared/written");
    expect(other.readFileSync("/written", "utf8")).toBe("from-fork\n");
    expect(shared.existsSync("/written")).toBe(false);
  });

  it("by default a fork gets the checkpointed lane's mounts (the same host objects)", async () => {
    await using fork = await snap.boot();
    await sh(fork, "echo default-fork > /mnt/shared/default");
    expect(shared.readFileSync("/default", "utf8")).toBe("default-fork\n");
  });

  it("a restore with other mount paths is refused with a typed error before booting", async () => {
    const started = Date.now();
    const e = await snap.boot({ mounts: { "/mnt/elsewhere": fs.virtual(fs.memory()) } }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(SandboxSnapshotError);
    expect(String((e as Error).message)).toContain("/mnt/shared");
    const none = await snap.boot({ mounts: {} }).catch((err: unknown) => err);
    expect(none).toBeInstanceOf(SandboxSnapshotError);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("several mounts, one nested in another, come back in order after a restore, each with its own filesystem", async () => {
    const [outer, inner] = [fs.memory(), fs.memory()];
    // The third is a host directory, which the helper serves itself: its device comes back too.
    const hostDirs = mkdtempSync(join(tmpdir(), "sandbox-snap-hostdir-"));
    const [thirdDir, tDir] = [join(hostDirs, "third"), join(hostDirs, "t")];
    mkdirSync(thirdDir);
    mkdirSync(tDir);
    const third = fs.hostDir(thirdDir);
    outer.mkdirSync("/inner");
    await using multi = await sandbox.boot({ mounts: { "/mnt/outer": fs.virtual(outer), "/mnt/outer/inner": fs.virtual(inner), "/srv/third": fs.virtual(third) } });
    await sh(multi, "echo o > /mnt/outer/o && echo i > /mnt/outer/inner/i && echo t > /srv/third/t");
    const multiSnap = await multi.checkpoint();
    try {
      // The checkpointed lane has all three back.
      await sh(multi, "echo o2 > /mnt/outer/o2 && echo i2 > /mnt/outer/inner/i2 && echo t2 > /srv/third/t2");
      expect([outer.readFileSync("/o2", "utf8"), inner.readFileSync("/i2", "utf8"), readFileSync(join(thirdDir, "t2"), "utf8")]).toEqual(["o2\n", "i2\n", "t2\n"]);
      // A restore with three fresh filesystems: each guest path reaches its own.
      const [o, i, t] = [fs.memory(), fs.memory(), fs.hostDir(tDir)];
      o.mkdirSync("/inner");
      o.writeFileSync("/which", "outer\n");
      i.writeFileSync("/which", "inner\n");
      writeFileSync(join(tDir, "which"), "third\n");
      const warnings: string[] = [];
      const onEvent = (e: LaneEvent) => void (e.type === "diagnostic" && warnings.push(e.message));
      await using fork = await multiSnap.boot({ mounts: { "/mnt/outer": fs.virtual(o), "/mnt/outer/inner": fs.virtual(i), "/srv/third": fs.virtual(t) }, onEvent });
      expect(warnings).toEqual([]);
      expect(await sh(fork, "cat /mnt/outer/which /mnt/outer/inner/which /srv/third/which")).toBe("outer\ninner\nthird");
      expect(await sh(fork, "grep -c virtiofs /proc/mounts")).toBe("3");
      await sh(fork, "echo w > /mnt/outer/inner/w");
      expect([i.existsSync("/w"), o.existsSync("/inner/w"), inner.existsSync("/w")]).toEqual([true, false, false]);
      await sh(fork, "echo t3 > /srv/third/t3");
      expect([existsSync(join(tDir, "t3")), existsSync(join(thirdDir, "t3"))]).toEqual([true, false]);
    } finally {
      await multiSnap.delete();
      rmSync(hostDirs, { recursive: true, force: true });
    }
  });

  it("a fork with mounts can itself be checkpointed, and its snapshot boots", async () => {
    await using fork = await snap.boot();
    await sh(fork, "echo gen2 > /run/gen");
    const second = await fork.checkpoint();
    try {
      await using grandchild = await second.boot();
      expect(await sh(grandchild, "cat /run/note /run/gen /mnt/shared/from-host")).toBe("in-tmp\ngen2\nhost file");
      await sh(grandchild, "echo gen3 > /mnt/shared/gen3");
      expect(shared.readFileSync("/gen3", "utf8")).toBe("gen3\n");
    } finally {
      await second.delete();
    }
  });
});
