import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineSandbox, rootfs, type Lane } from "../../src/index.js";

describe("debian:12 built-in image", () => {
  let lane: Lane;
  beforeAll(async () => {
    lane = await defineSandbox({ rootfs: rootfs.builtIn("debian:12"), resources: { cpus: 2, memoryMiB: 768 } }).boot({
      cwd: "/root",
    });
  });
  afterAll(async () => {
    await lane?.close();
  });

  it("ships the promised tools", async () => {
    const r = await lane.exec("sh", [
      "-c",
      "python3 -c 'print(6*7)' && curl --version | head -1 && git --version && ps -o pid= -p 1 && ls /etc/ssl/certs/ca-certificates.crt",
    ]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toBe("42");
    expect(lines[1]).toMatch(/^curl \d/);
    expect(lines[2]).toMatch(/^git version \d/);
    expect(lines[3]!.trim()).toBe("1");
  });

  it("sees the requested CPUs and memory", async () => {
    const r = await lane.exec("sh", ["-c", "nproc; awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo"]);
    const [cpus, memMiB] = r.stdout.trim().split("\n").map(Number);
    expect(cpus).toBe(2);
    expect(memMiB).toBeGreaterThan(600);
    expect(memMiB).toBeLessThanOrEqual(768);
  });

  it("keeps the built-in rootfs read-only while /tmp is writable", async () => {
    const ro = await lane.exec("sh", ["-c", "touch /etc/should-fail"]);
    expect(ro.exitCode).not.toBe(0);
    expect(ro.stderr).toMatch(/Read-only file system/);
    const tmp = await lane.exec("sh", ["-c", "echo ok > /tmp/x && cat /tmp/x"]);
    expect(tmp.stdout).toBe("ok\n");
  });
});
