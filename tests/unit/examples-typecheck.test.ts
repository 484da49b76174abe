/** The examples compile as user code would: `tsc --noEmit --strict`, importing "@torkbot/sandbox" by name. */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { expect, it } from "vitest";

it("examples/ type-check under tsc --strict", async () => {
  const root = fileURLToPath(new URL("../..", import.meta.url));
  const tsc = fileURLToPath(new URL("../../node_modules/typescript/bin/tsc", import.meta.url));
  const result = await promisify(execFile)(process.execPath, [tsc, "-p", "examples/tsconfig.json", "--noEmit", "--strict", "--listFilesOnly"], {
    cwd: root,
  }).catch((e: { stdout?: string; stderr?: string; code?: number }) => e);
  // --listFilesOnly proves the examples are part of the program; the real check runs next.
  expect(result.stdout ?? "").toContain("examples/s3-block-store/s3-block-store.ts");
  expect(result.stdout ?? "").toContain("examples/agent-workspace/agent-workspace.ts");
  expect(result.stdout ?? "").toContain("examples/github-token-injection/github-token-injection.ts");
  const check = await promisify(execFile)(process.execPath, [tsc, "-p", "examples/tsconfig.json", "--noEmit", "--strict"], { cwd: root }).then(
    () => ({ code: 0, stdout: "" }),
    (e: { stdout?: string; code?: number }) => ({ code: e.code ?? 1, stdout: e.stdout ?? "" }),
  );
  expect(check.stdout).toBe("");
  expect(check.code).toBe(0);
}, 120_000);
