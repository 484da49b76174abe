/**
 * An agent workspace on memfs: the host seeds a task, the agent works in a
 * microVM with real tools (git, python) on a mounted `/workspace`, and the
 * host reads the result straight from memory — no copying in or out.
 */
import { defineSandbox, fs, rootfs } from "@torkbot/sandbox";

export interface WorkspaceOutcome {
  /** What the agent wrote, read by the host from the same memfs. */
  report: string;
  /** The agent's git history, one line per commit. */
  log: string[];
  /** The workspace's top-level entries as the host sees them. */
  entries: string[];
}

export async function runAgentWorkspace(task: string): Promise<WorkspaceOutcome> {
  const workspace = fs.memory({ files: { "/task.txt": task } });
  const sandbox = defineSandbox({ rootfs: rootfs.builtIn("debian:12") });
  await using lane = await sandbox.boot({ mounts: { "/workspace": fs.virtual(workspace) }, cwd: "/workspace" });

  const agent = [
    "set -e",
    "git init -q -b main",
    "git config user.email agent@example.com && git config user.name agent",
    // The "agent": reads the task, writes a report, commits its work.
    `python3 - <<'PY'
task = open("task.txt").read().strip()
with open("report.md", "w") as f:
    f.write(f"# Report\\n\\nTask: {task}\\nWords: {len(task.split())}\\n")
PY`,
    "git add -A && git commit -qm 'agent: write report'",
    "git log --format=%s",
  ].join("\n");
  const result = await lane.exec("sh", ["-c", agent], { timeoutMs: 120_000 });
  if (result.exitCode !== 0) throw new Error(`the agent failed (${result.exitCode}): ${result.stderr}`);

  return {
    report: workspace.readFileSync("/report.md", "utf8") as string,
    log: result.stdout.trim().split("\n"),
    entries: (workspace.readdirSync("/") as string[]).sort(),
  };
}
