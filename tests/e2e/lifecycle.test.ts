import { describe, expect, it } from "vitest";
import { defineSandbox, rootfs, SandboxBootError, UnknownImageError } from "../../src/index.js";
import { alive, startFixture, waitUntil } from "./helpers.js";

const sandbox = defineSandbox({ rootfs: rootfs.builtIn("busybox") });

describe("lane lifecycle on real VMs", () => {
  it("runs two lanes at once, isolated from each other", async () => {
    await using a = await sandbox.boot({ hostname: "lane-a" });
    await using b = await sandbox.boot({ hostname: "lane-b" });
    const [ra, rb] = await Promise.all([
      a.exec("sh", ["-c", "hostname; echo a > /tmp/who; cat /tmp/who"]),
      b.exec("sh", ["-c", "hostname; cat /tmp/who 2>/dev/null || echo none"]),
    ]);
    expect(ra.stdout).toBe("lane-a\na\n");
    expect(rb.stdout).toBe("lane-b\nnone\n");
    expect(a.info.vmmPid).not.toBe(b.info.vmmPid);
  });

  it("await using tears the VM down at scope exit", async () => {
    let pids: number[] = [];
    {
      await using lane = await sandbox.boot();
      pids = [lane.info.helperPid, lane.info.vmmPid];
      expect(pids.every(alive)).toBe(true);
    }
    expect(await waitUntil(() => !pids.some(alive), 5000)).toBe(true);
  });

  it("surfaces the guest init's own error when boot fails", async () => {
    const err = await sandbox.boot({ cwd: "/does/not/exist" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxBootError);
    const boot = err as SandboxBootError;
    expect(boot.stage).toBe("cwd");
    expect(boot.guestMessage).toContain("/does/not/exist");
    expect(boot.message).toContain("No such file or directory");
  });

  it("rejects an unknown image with the list of available ones", async () => {
    const err = await defineSandbox({ rootfs: rootfs.builtIn("alpine:3.23") }).boot().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnknownImageError);
    expect((err as UnknownImageError).available).toContain("busybox");
    expect((err as Error).message).toContain("sandbox images import docker.io/library/alpine:3.23 --name alpine:3.23");
  });

  it("leaves no helper or VMM behind after kill -9 of the Node process", async () => {
    const { child, line } = await startFixture("hold-lane.mjs");
    const { helperPid, vmmPid } = JSON.parse(line) as { helperPid: number; vmmPid: number };
    expect(alive(helperPid) && alive(vmmPid)).toBe(true);
    child.kill("SIGKILL");
    const gone = await waitUntil(() => !alive(helperPid) && !alive(vmmPid), 5000);
    expect(gone).toBe(true);
  });
});
