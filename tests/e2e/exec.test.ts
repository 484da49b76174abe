import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineSandbox, LaneClosedError, ProcessStartError, rootfs, type Lane } from "../../src/index.js";

const sandbox = defineSandbox({ rootfs: rootfs.builtIn("busybox") });

describe("exec on a real VM (busybox image)", () => {
  let lane: Lane;
  beforeAll(async () => {
    lane = await sandbox.boot({ hostname: "agent-42", cwd: "/tmp", env: { LANE_VAR: "lane" } });
  });
  afterAll(async () => {
    await lane?.close();
  });

  it("reports the backend and why it was chosen", () => {
    expect(["qemu", "krun"]).toContain(lane.info.backend);
    expect(lane.info.backendReason.length).toBeGreaterThan(0);
    expect(lane.info.vmmPid).toBeGreaterThan(0);
  });

  it("returns stdout, stderr and the exit code", async () => {
    const r = await lane.exec("sh", ["-c", "echo out; echo err >&2; exit 7"]);
    expect(r).toMatchObject({ exitCode: 7, stdout: "out\n", stderr: "err\n", timedOut: false, signal: null });
  });

  it("sets the hostname, default cwd and lane env", async () => {
    const r = await lane.exec("sh", ["-c", 'hostname; pwd; echo "$LANE_VAR"']);
    expect(r.stdout).toBe("agent-42\n/tmp\nlane\n");
  });

  it("applies per-exec env and cwd", async () => {
    const r = await lane.exec("sh", ["-c", 'pwd; echo "$FOO"'], { cwd: "/etc", env: { FOO: "bar baz" } });
    expect(r.stdout).toBe("/etc\nbar baz\n");
  });

  it("passes arguments verbatim (no shell in between)", async () => {
    const r = await lane.exec("printf", ["%s|", "a b", "$HOME", "'q'"]);
    expect(r.stdout).toBe("a b|$HOME|'q'|");
  });

  it("keeps binary-unsafe output intact as UTF-8", async () => {
    const r = await lane.exec("printf", ["h\u00e9llo \u2713"]);
    expect(r.stdout).toBe("h\u00e9llo \u2713");
  });

  it("times out with exit code 124 and kills the whole process group", async () => {
    const r = await lane.exec("sh", ["-c", "sleep 100 & sleep 100 & echo $$; wait"], { timeoutMs: 500 });
    expect(r.exitCode).toBe(124);
    expect(r.timedOut).toBe(true);
    const pgid = r.stdout.trim();
    expect(pgid).toMatch(/^\d+$/);
    const survivors = await lane.exec("sh", [
      "-c",
      `for s in /proc/[0-9]*/stat; do read -r line < "$s" 2>/dev/null && echo "$line"; done | awk '$5 == ${pgid} {print $1}'`,
    ]);
    expect(survivors.exitCode).toBe(0);
    expect(survivors.stdout).toBe("");
  });

  it("abort rejects with AbortError, kills the group, and the lane stays usable", async () => {
    const ac = new AbortController();
    const p = lane.exec("sh", ["-c", "echo $$ > /tmp/aborted.pid; sleep 100 & wait"], { signal: ac.signal });
    setTimeout(() => ac.abort(), 300);
    await expect(p).rejects.toMatchObject({ name: "AbortError" });
    const check = await lane.exec("sh", [
      "-c",
      `pg=$(cat /tmp/aborted.pid); for s in /proc/[0-9]*/stat; do read -r line < "$s" 2>/dev/null && echo "$line"; done | awk -v pg="$pg" '$5 == pg {print $1}'; echo ok`,
    ]);
    expect(check.stdout).toBe("ok\n");
  });

  it("rejects an already-aborted signal without starting anything", async () => {
    await expect(lane.exec("true", [], { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: "AbortError" });
  });

  it("surfaces a missing program as a typed error", async () => {
    const err = await lane.exec("/no/such/program").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProcessStartError);
    expect(err).toMatchObject({ errno: "ENOENT" });
  });

  it("surfaces a missing cwd as a typed error", async () => {
    const err = await lane.exec("true", [], { cwd: "/nope" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProcessStartError);
    expect((err as Error).message).toContain("/nope");
  });

  it("runs many commands concurrently on one lane", async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => lane.exec("echo", [String(i)])));
    expect(results.map((r) => r.stdout)).toEqual(Array.from({ length: 20 }, (_, i) => `${i}\n`));
  });

  it("rejects commands after close with LaneClosedError", async () => {
    const other = await sandbox.boot();
    await other.close();
    await expect(other.exec("true")).rejects.toBeInstanceOf(LaneClosedError);
    await other.close(); // idempotent
  });
});
