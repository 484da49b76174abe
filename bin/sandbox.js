#!/usr/bin/env node
// `sandbox` CLI. In a clone of the repository it first runs scripts/setup when
// the build or the native artifacts are missing, so `node bin/sandbox.js run`
// works on a fresh machine.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const built = existsSync(join(root, "dist/src/index.js"));
const linked = existsSync(join(root, "node_modules/@torkbot/sandbox-linux-x64-gnu/artifacts/bin/sandbox-host"));
if ((!built || !linked) && existsSync(join(root, "scripts/setup")) && !process.env.SANDBOX_SKIP_SETUP) {
  process.stderr.write("[sandbox] first run: building the helper, kernel and images (cached afterwards)\n");
  const r = spawnSync("bash", [join(root, "scripts/setup")], { stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
const { main } = await import(join(root, "dist/src/cli.js"));
process.exitCode = await main(process.argv.slice(2));
