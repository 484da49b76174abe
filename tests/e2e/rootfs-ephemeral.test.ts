import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { defineSandbox, listBuiltInImages, rootfs } from "../../src/index.js";
import { resolveArtifacts } from "../../src/artifacts.js";

const QUOTA = 32 * 1024 * 1024;
const sandbox = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("busybox"), maxDirtyBytes: QUOTA }) });

const vmHwmBytes = (pid: number) =>
  Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024;

describe("rootfs.ephemeral on a real VM", () => {
  it("gives a writable root whose changes vanish with the lane, leaving the image untouched", async () => {
    const image = listBuiltInImages().find((i) => i.name === "busybox")!;
    const file = join(resolveArtifacts().imagesDir, image.file);
    {
      await using lane = await sandbox.boot();
      const w = await lane.exec("sh", ["-c", "echo persisted? > /root/note && mkdir -p /opt/x && cat /root/note && grep ' / ' /proc/mounts"]);
      expect(w.exitCode).toBe(0);
      expect(w.stdout).toMatch(/^persisted\?\n\/dev\/vda \/ ext4 rw/);
    }
    {
      await using lane = await sandbox.boot();
      const r = await lane.exec("sh", ["-c", "ls /root/note /opt/x 2>&1; true"]);
      expect(r.stdout).toContain("No such file or directory");
    }
    expect(createHash("sha256").update(readFileSync(file)).digest("hex")).toBe(image.sha256);
  });

  it("fails guest writes past maxDirtyBytes while helper memory stays bounded", async () => {
    await using lane = await sandbox.boot();
    const small = await lane.exec("sh", ["-c", "dd if=/dev/urandom of=/root/small bs=1M count=4 conv=fsync 2>&1 && echo ok"]);
    expect(small.stdout).toContain("ok");
    const big = await lane.exec("sh", ["-c", "dd if=/dev/urandom of=/root/big bs=1M count=100 conv=fsync 2>&1; echo rc=$?"]);
    // Which error dd sees depends on which write hits the budget first: its own
    // data (EIO), or a journal commit, after which ext4 remounts read-only (EROFS).
    expect(big.stdout).toMatch(/Input\/output error|No space left|Read-only file system/);
    expect(big.stdout).not.toContain("rc=0");
    // The budget, not the guest, bounds what the helper holds (plus its own small footprint).
    expect(vmHwmBytes(lane.info.helperPid)).toBeLessThan(QUOTA + 48 * 1024 * 1024);
    // The lane survives the failed write.
    expect((await lane.exec("cat", ["/proc/uptime"])).exitCode).toBe(0);
  });
});
