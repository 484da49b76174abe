import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const cli = fileURLToPath(new URL("../../bin/sandbox.js", import.meta.url));

describe("sandbox CLI (the README's main job)", () => {
  it("boots, runs the command, prints its output and timings, and exits with its code", () => {
    const r = spawnSync(process.execPath, [cli, "run", "--image", "busybox", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"], {
      encoding: "utf8",
      timeout: 120_000,
    });
    expect(r.stdout).toBe("hi\n");
    expect(r.stderr).toContain("oops");
    expect(r.stderr).toMatch(/boot \d+ ms, exec \d+ ms, exit 3/);
    expect(r.status).toBe(3);
  });

  it("lists the built-in images", () => {
    const r = spawnSync(process.execPath, [cli, "images"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^debian:12 /m);
    expect(r.stdout).toMatch(/^busybox /m);
  });

  it("explains bad usage and unknown images with a non-zero exit", () => {
    const usage = spawnSync(process.execPath, [cli, "run"], { encoding: "utf8" });
    expect(usage.status).toBe(2);
    expect(usage.stderr).toContain("no command given");
    const unknown = spawnSync(process.execPath, [cli, "run", "--image", "nope", "--", "true"], { encoding: "utf8" });
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toContain('no built-in rootfs image named "nope"; available: debian:12, busybox');
  });
});
