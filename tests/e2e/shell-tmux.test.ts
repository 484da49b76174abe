// Drives `sandbox shell` in a real terminal (tmux), as a person would.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { waitUntil } from "./helpers.js";

const cli = fileURLToPath(new URL("../../bin/sandbox.js", import.meta.url));
const session = `sandbox-shell-${process.pid}`;
const tmux = (...args: string[]) => execFileSync("tmux", ["-f", "/dev/null", "-L", session, ...args], { encoding: "utf8" });
const screen = () => tmux("capture-pane", "-p", "-t", session);
const qemuPids = () => {
  try {
    return execFileSync("pgrep", ["-f", "qemu-system-x86_64"], { encoding: "utf8" }).split("\n").filter(Boolean);
  } catch {
    return [];
  }
};

async function waitForScreen(re: RegExp, timeoutMs = 60_000): Promise<void> {
  const ok = await waitUntil(() => re.test(screen()), timeoutMs);
  if (!ok) throw new Error(`screen never matched ${re}:\n${screen()}`);
}

describe("sandbox shell in a real terminal", () => {
  afterAll(() => {
    try {
      tmux("kill-server");
    } catch {
      // already gone
    }
  });

  it("echoes, forwards resizes and ^C, propagates the exit status and leaves no VM", async () => {
    const before = new Set(qemuPids());
    const dir = mkdtempSync(join(tmpdir(), "sandbox-shell-"));
    const exitFile = join(dir, "exit");
    tmux(
      "new-session", "-d", "-s", session, "-x", "100", "-y", "30",
      `${process.execPath} ${cli} shell --image busybox; echo $? > ${exitFile}; sleep 60`,
    );
    tmux("set", "-t", session, "status", "off");
    await waitForScreen(/^~ #/m);

    tmux("send-keys", "-t", session, "echo hi", "Enter");
    await waitForScreen(/^hi$/m);

    tmux("resize-window", "-t", session, "-x", "120", "-y", "40");
    tmux("send-keys", "-t", session, "stty size", "Enter");
    await waitForScreen(/^40 120$/m);

    tmux("send-keys", "-t", session, "sleep 100", "Enter");
    await new Promise((r) => setTimeout(r, 500));
    tmux("send-keys", "-t", session, "C-c");
    tmux("send-keys", "-t", session, "echo after-$((20+1))", "Enter");
    await waitForScreen(/^after-21$/m);

    tmux("send-keys", "-t", session, "exit 3", "Enter");
    expect(await waitUntil(() => existsSync(exitFile) && readFileSync(exitFile, "utf8").trim() !== "", 30_000)).toBe(true);
    expect(readFileSync(exitFile, "utf8").trim()).toBe("3");
    const leftover = await waitUntil(() => qemuPids().every((p) => before.has(p)), 5000);
    expect(leftover).toBe(true);
  });
});
