/** examples/agent-workspace: a memfs workspace used by real tools in a VM, read back by the host. */
import { expect, it } from "vitest";
import { runAgentWorkspace } from "../../examples/agent-workspace/agent-workspace.js";

it("the agent works in a memfs /workspace and the host reads its report and history", async () => {
  const outcome = await runAgentWorkspace("Summarize the repository in three bullet points");
  expect(outcome.report).toBe("# Report\n\nTask: Summarize the repository in three bullet points\nWords: 7\n");
  expect(outcome.log).toEqual(["agent: write report"]);
  expect(outcome.entries).toEqual([".git", "report.md", "task.txt"]);
}, 300_000);
