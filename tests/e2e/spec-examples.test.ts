/**
 * The specification's own spawn and pty examples, run literally in a child
 * Node process: a missing command whose streams are piped with no handler,
 * and a pty piped to the process while `await using` closes its lane. Neither
 * may leave an unhandled rejection (which ends a Node process).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import ts from "typescript";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

describe("the specification's spawn and pty examples", () => {
  it("run without an unhandled rejection, and the start failure reaches whoever awaits exit", async () => {
    const dir = mkdtempSync(join(tmpdir(), "spec-examples-"));
    try {
      const report = join(dir, "report.json");
      // Node 20 needs `await using` compiled: transpile as a user's tsc build would (target ES2022).
      const source = readFileSync(fileURLToPath(new URL("./fixtures/spec-examples.ts", import.meta.url)), "utf8");
      const dist = new URL("../../dist/src/index.js", import.meta.url).href;
      const js = ts.transpileModule(source.replace("SANDBOX_DIST", dist), {
        compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, lib: ["lib.esnext.d.ts"] },
      }).outputText;
      const script = join(dir, "spec-examples.mjs");
      writeFileSync(script, js);
      // stdin stays open (never written), so the pty's input pipe is still running when the lane closes.
      const child = spawn(process.execPath, [script, report], { stdio: ["pipe", "ignore", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((r) => child.on("exit", r));
      expect(code, stderr).toBe(0);
      const r = JSON.parse(readFileSync(report, "utf8"));
      expect(r.unhandled).toEqual([]);
      expect(r.outcomes.spawn).toEqual({ error: "ProcessStartError", code: "ENOENT" });
      expect(r.outcomes.pty).toBe("closed by await using while piping");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
