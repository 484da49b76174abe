import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveArtifacts } from "../../src/artifacts.js";
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

  it("forwards stdin with its EOF, streams output as it comes, and exits like a shell (127, 126, 128+N)", async () => {
    const piped = spawnSync(process.execPath, [cli, "run", "--image", "busybox", "--", "cat"], { input: "x\n", encoding: "utf8", timeout: 120_000 });
    expect(piped.stdout).toBe("x\n");
    expect(piped.status).toBe(0);
    const missing = spawnSync(process.execPath, [cli, "run", "--image", "busybox", "--", "no-such-cmd"], { encoding: "utf8", timeout: 120_000 });
    expect(missing.status).toBe(127);
    expect(missing.stderr).toContain("no-such-cmd: command not found");
    const notExec = spawnSync(process.execPath, [cli, "run", "--image", "busybox", "--", "/etc/passwd"], { encoding: "utf8", timeout: 120_000 });
    expect(notExec.status).toBe(126);
    const killed = spawnSync(process.execPath, [cli, "run", "--image", "busybox", "--", "sh", "-c", "kill -9 $$"], { encoding: "utf8", timeout: 120_000 });
    expect(killed.status).toBe(137);
    // `a` must reach us while the command still sleeps, before `b` exists.
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, [cli, "run", "--image", "busybox", "--", "sh", "-c", "echo a; sleep 2; echo b"], { stdio: ["ignore", "pipe", "pipe"] });
    const seen: { text: string; at: number }[] = [];
    child.stdout.on("data", (d: Buffer) => seen.push({ text: d.toString(), at: performance.now() }));
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    expect(code).toBe(0);
    const a = seen.find((s) => s.text.includes("a"));
    const b = seen.find((s) => s.text.includes("b"));
    expect(a && b).toBeTruthy();
    expect(b!.at - a!.at).toBeGreaterThan(1500);
  });

  it("lists the built-in images", () => {
    const r = spawnSync(process.execPath, [cli, "images"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^debian\s+12\s+sha256:[0-9a-f]{12}\s+[\d.]+ MiB\s+built-in$/m);
    expect(r.stdout).toMatch(/^busybox\s+-\s+sha256:/m);
  });

  it("explains bad usage and unknown images with a non-zero exit", () => {
    const usage = spawnSync(process.execPath, [cli, "run"], { encoding: "utf8" });
    expect(usage.status).toBe(2);
    expect(usage.stderr).toContain("no command given");
    const unknown = spawnSync(process.execPath, [cli, "run", "--image", "nope", "--", "true"], { encoding: "utf8" });
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toContain('no rootfs image named "nope"; installed: debian:12, busybox.');
    expect(unknown.stderr).toContain("sandbox images import docker.io/library/nope --name nope");
  });

  it("doctor reports the host, the backend in use and every artifact", () => {
    const r = spawnSync(process.execPath, [cli, "doctor"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^ok {3}qemu: .*QEMU emulator version/m);
    expect(r.stdout).toMatch(/^ok {3}image debian:12: /m);
    expect(r.stdout).toMatch(/^ok {3}guest initramfs \(qemu\): /m);
    const noHw = !/\b(vmx|svm)\b/.test(execFileSync("cat", ["/proc/cpuinfo"], { encoding: "utf8" })) || existsSync("/sys/module/kvm_pvm");
    if (noHw) {
      expect(r.stdout).toMatch(/^ok {3}hardware virtualization: absent/m);
      expect(r.stdout).toMatch(/^ok {3}backend in use: qemu with TCG/m);
    }
    expect(r.stdout).toContain("everything needed is present");
  });

  it("snapshot save / ls / run --from / rm: a snapshot taken from the shell resumes with its files and processes", () => {
    const store = mkdtempSync(join(tmpdir(), "sandbox-cli-snaps-"));
    try {
      const setup = "echo installed > /root/tool && nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/c; sleep 0.1; done' >/dev/null 2>&1 & sleep 1";
      const saved = spawnSync(process.execPath, [cli, "snapshot", "save", store, "--id", "base", "--", "sh", "-c", setup], { encoding: "utf8", timeout: 300_000 });
      expect(saved.stderr).toMatch(/snapshot base saved in .*: paused \d+ ms, RAM [\d.]+ MiB/);
      expect(saved.stdout.trim()).toBe("base");
      expect(saved.status).toBe(0);
      const ls = spawnSync(process.execPath, [cli, "snapshot", "ls", store], { encoding: "utf8" });
      expect(ls.stdout).toBe("base\n");
      const script = "cat /root/tool; a=$(cat /run/c); sleep 0.5; b=$(cat /run/c); [ $b -gt $a ] && [ $a -gt 3 ] && echo counting; hostname";
      const resumed = spawnSync(process.execPath, [cli, "run", "--from", store, "--", "sh", "-c", script], { encoding: "utf8", timeout: 300_000 });
      expect(resumed.stdout).toBe("installed\ncounting\nsandbox\n");
      expect(resumed.status).toBe(0);
      // Each run is a fork: the snapshot is still there and boots again, with another hostname.
      const again = spawnSync(process.execPath, [cli, "run", "--from", store, "--id", "base", "--hostname", "fork2", "--", "hostname"], { encoding: "utf8", timeout: 300_000 });
      expect(again.stdout).toBe("fork2\n");
      const wrongId = spawnSync(process.execPath, [cli, "run", "--from", store, "--id", "nope", "--", "true"], { encoding: "utf8" });
      expect(wrongId.status).toBe(1);
      expect(wrongId.stderr).toContain("has no complete snapshot nope (it has base)");
      const rm = spawnSync(process.execPath, [cli, "snapshot", "rm", store, "base"], { encoding: "utf8" });
      expect(rm.status).toBe(0);
      expect(spawnSync(process.execPath, [cli, "snapshot", "ls", store], { encoding: "utf8" }).stdout).toBe("");
    } finally {
      rmSync(store, { recursive: true, force: true });
    }
  });

  it("doctor names a missing artifact and how to restore it", () => {
    const copy = mkdtempSync(join(tmpdir(), "sandbox-artifacts-"));
    try {
      // A hard-linked copy of the artifact tree, minus the initramfs.
      execFileSync("cp", ["-al", `${resolveArtifacts().dir}/.`, copy]);
      rmSync(join(copy, "kernel/qemu/initramfs.cpio"));
      const r = spawnSync(process.execPath, [cli, "doctor"], { encoding: "utf8", env: { ...process.env, SANDBOX_ARTIFACTS_DIR: copy } });
      expect(r.status).toBe(1);
      expect(r.stdout).toMatch(/^FAIL guest initramfs \(qemu\): missing: .*initramfs\.cpio$/m);
      expect(r.stdout).toMatch(/fix: run `npm run setup` in a clone of the repository, or reinstall @torkbot\/sandbox-linux-x64-gnu/);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });
});
