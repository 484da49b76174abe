/**
 * A lane survives its workload: fork bombs and memory hogs are contained by
 * the guest's cgroups (init, the control port and the kernel stay
 * responsive), and host-side deadlines settle even when the guest cannot
 * answer at all (its VMM stopped with SIGSTOP, as a wedged kernel would be).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineSandbox, rootfs, SandboxUnresponsiveError, type Lane } from "../../src/index.js";
import { alive, waitUntil } from "./helpers.js";

const BOMB = ":(){ :|:& };:";

describe("containment of the workload (debian:12)", () => {
  let lane: Lane;
  beforeAll(async () => {
    lane = await defineSandbox({ rootfs: rootfs.builtIn("debian:12"), resources: { memoryMiB: 512 } }).boot();
  });
  afterAll(() => lane?.close());

  it("a fork bomb under timeoutMs ends with 124 within 10 s, and the lane answers within 2 s after — ten times in a row", async () => {
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now();
      const r = await lane.exec("bash", ["-c", BOMB], { timeoutMs: 5000 });
      const took = performance.now() - t0;
      expect(r.exitCode, `bomb ${i}`).toBe(124);
      expect(r.timedOut).toBe(true);
      expect(took, `bomb ${i}`).toBeLessThan(10_000);
      const t1 = performance.now();
      const ok = await lane.exec("true");
      expect(ok.exitCode).toBe(0);
      expect(performance.now() - t1, `exec after bomb ${i}`).toBeLessThan(2000);
    }
    // Nothing of the bombs is left: the only command cgroup is this check's own (sh and cat).
    const ps = await lane.exec("sh", ["-c", "find /sys/fs/cgroup/workload -mindepth 1 -maxdepth 1 -type d | wc -l; cat /sys/fs/cgroup/workload/pids.current"]);
    const [leaves, pids] = ps.stdout.trim().split("\n").map(Number);
    expect(leaves).toBe(1);
    expect(pids).toBeLessThanOrEqual(3);
  }, 240_000);

  it("a command that outlives its leader with its output open is waited for, and its timeout kills the whole tree", async () => {
    const r = await lane.exec("sh", ["-c", "(sleep 30; echo late) & echo early"], { timeoutMs: 2000 });
    expect(r).toMatchObject({ exitCode: 124, timedOut: true, stdout: "early\n" });
    // With its output redirected, a background process outlives the command as it would a shell.
    const bg = await lane.exec("sh", ["-c", "sleep 30 >/dev/null 2>&1 & echo $!"]);
    expect(bg.exitCode).toBe(0);
    const pid = bg.stdout.trim();
    expect((await lane.exec("kill", ["-0", pid])).exitCode).toBe(0);
    await lane.exec("kill", [pid]);
  });

  it("a memory hog is killed by the OOM killer: exit 137 with oomKilled, and the lane stays usable", async () => {
    const r = await lane.exec("python3", ["-c", "x = []\nwhile True: x.append(bytearray(16 << 20))"], { timeoutMs: 60_000 });
    expect(r.exitCode).toBe(137);
    expect(r.oomKilled).toBe(true);
    expect(r.timedOut).toBe(false);
    expect((await lane.exec("echo", ["still here"])).stdout).toBe("still here\n");
    const plain = await lane.exec("sh", ["-c", "kill -9 $$"]);
    expect(plain).toMatchObject({ exitCode: 137, oomKilled: false });
  }, 120_000);

  it("too many processes in one command fail there, not in init", async () => {
    const few = await defineSandbox({ rootfs: rootfs.builtIn("busybox"), resources: { maxProcesses: 32 } }).boot();
    try {
      const r = await few.exec("sh", ["-c", "for i in $(seq 64); do sleep 5 & done 2>&1; wait"], { timeoutMs: 20_000 });
      expect(r.stdout + r.stderr).toMatch(/can't fork|Resource temporarily unavailable|Cannot fork/i);
      expect((await few.exec("true")).exitCode).toBe(0);
    } finally {
      await few.close();
    }
  });
});

describe("host-side deadlines when the guest cannot answer (VMM stopped)", () => {
  it("exec and spawn with timeoutMs settle within 5 s, abort at once, close() within 10 s, nothing left behind", async () => {
    const lane = await defineSandbox({ rootfs: rootfs.builtIn("busybox") }).boot();
    const { vmmPid, helperPid } = lane.info;
    process.kill(vmmPid, "SIGSTOP");
    try {
      const t0 = performance.now();
      const exec = lane.exec("sleep", ["100"], { timeoutMs: 2000 });
      const child = lane.spawn("sleep", ["100"], { timeoutMs: 2000 });
      const ac = new AbortController();
      const aborted = lane.exec("sleep", ["100"], { signal: ac.signal });
      setTimeout(() => ac.abort(), 100);
      await expect(aborted).rejects.toMatchObject({ name: "AbortError" });
      expect(performance.now() - t0).toBeLessThan(1000);
      expect(await exec).toMatchObject({ exitCode: 124, timedOut: true });
      expect(await child.exit).toMatchObject({ exitCode: 124, timedOut: true });
      expect(performance.now() - t0).toBeLessThan(5000);
      const t1 = performance.now();
      await lane.close().catch(() => {});
      expect(performance.now() - t1).toBeLessThan(10_000);
    } finally {
      try {
        process.kill(vmmPid, "SIGCONT");
      } catch {}
    }
    expect(await waitUntil(() => !alive(vmmPid) && !alive(helperPid), 5000)).toBe(true);
  });

  it("a guest silent past livenessTimeoutMs ends the lane with SandboxUnresponsiveError", async () => {
    const lane = await defineSandbox({ rootfs: rootfs.builtIn("busybox") }).boot({ livenessTimeoutMs: 6000 });
    const { vmmPid, helperPid } = lane.info;
    const pending = lane.exec("sleep", ["100"]);
    await new Promise((r) => setTimeout(r, 500));
    process.kill(vmmPid, "SIGSTOP");
    const t0 = performance.now();
    const err = await pending.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SandboxUnresponsiveError);
    expect(String((err as Error).message)).toMatch(/has not answered for \d+ s/);
    expect(performance.now() - t0).toBeLessThan(12_000);
    expect(lane.endError).toBe(err);
    expect(await waitUntil(() => !alive(vmmPid) && !alive(helperPid), 5000)).toBe(true);
    await lane.close();
  });
});
