/**
 * The release tarballs work on their own: `npm run release:pack`, then in an
 * empty directory outside the repository `npm install <root.tgz> <platform.tgz>`
 * and a short script using the public API boots a sandbox and runs a command.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const repo = fileURLToPath(new URL("../..", import.meta.url));
const dirs: string[] = [];
let tarballs: { root: string; platform: string };

/** The environment of a user's shell: nothing pointing back into this repository. */
function userEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith("SANDBOX_") || k.startsWith("npm_") || k.startsWith("VITEST")) delete env[k];
  env.NODE_ENV = "production";
  return env;
}

function emptyDir(): string {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), "sandbox-release-")));
  dirs.push(dir);
  writeFileSync(join(dir, "package.json"), '{ "name": "user-project", "private": true, "type": "module" }\n');
  return dir;
}

beforeAll(async () => {
  const { stdout } = await run(process.execPath, [join(repo, "scripts", "release-pack.mjs")], { cwd: repo, maxBuffer: 1 << 24 });
  tarballs = JSON.parse(stdout.trim().split("\n").pop()!);
}, 600_000);

afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe("npm run release:pack", () => {
  it("packs a root manifest with the platform packages as optional dependencies and no install scripts", async () => {
    const { stdout } = await run("tar", ["-xOzf", tarballs.root, "package/package.json"]);
    const manifest = JSON.parse(stdout) as Record<string, unknown> & { optionalDependencies: Record<string, string>; version: string };
    expect(manifest.optionalDependencies).toEqual({
      "@torkbot/sandbox-darwin-arm64": manifest.version,
      "@torkbot/sandbox-linux-x64-gnu": manifest.version,
    });
    expect(manifest.scripts).toBeUndefined();
    expect(manifest.devDependencies).toBeUndefined();
    const platform = JSON.parse((await run("tar", ["-xOzf", tarballs.platform, "package/package.json"])).stdout);
    expect(platform).toMatchObject({ name: "@torkbot/sandbox-linux-x64-gnu", os: ["linux"], cpu: ["x64"], libc: ["glibc"] });
    expect(platform.scripts).toBeUndefined();
  });

  it("installs into an empty directory and boots a sandbox from the installed files alone", async () => {
    const dir = emptyDir();
    await run("npm", ["install", "--no-audit", "--no-fund", tarballs.root, tarballs.platform], { cwd: dir, env: userEnv(), timeout: 300_000 });
    writeFileSync(
      join(dir, "script.mjs"),
      [
        'import { readlinkSync } from "node:fs";',
        'import { defineSandbox, rootfs } from "@torkbot/sandbox";',
        'const sandbox = defineSandbox({ rootfs: rootfs.builtIn("busybox") });',
        'const lane = await sandbox.boot({ hostname: "packed" });',
        "try {",
        '  const r = await lane.exec("sh", ["-c", "echo hello from $(hostname) on $(uname -s)"]);',
        "  process.stdout.write(r.stdout);",
        // Where the helper really runs from: the installed platform package.
        "  console.log(readlinkSync(`/proc/${lane.info.helperPid}/exe`));",
        "} finally {",
        "  await lane.close();",
        "}",
      ].join("\n"),
    );
    const { stdout } = await run(process.execPath, ["script.mjs"], { cwd: dir, env: userEnv(), timeout: 300_000 });
    const [greeting, helper] = stdout.trim().split("\n");
    expect(greeting).toBe("hello from packed on Linux");
    expect(helper).toBe(join(dir, "node_modules", "@torkbot", "sandbox-linux-x64-gnu", "artifacts", "bin", "sandbox-host"));
    // The published typings are complete: a strict consumer compiles without skipLibCheck.
    writeFileSync(
      join(dir, "check.mts"),
      'import { defineSandbox, rootfs, BlockStoreError, type SandboxBlockStore } from "@torkbot/sandbox";\n' +
        "export const store: SandboxBlockStore | undefined = undefined;\n" +
        'export const lane = await defineSandbox({ rootfs: rootfs.builtIn("busybox") }).boot({ onError: (e: BlockStoreError) => e });\n',
    );
    const tsc = join(repo, "node_modules", "typescript", "bin", "tsc");
    const types = join(repo, "node_modules", "@types");
    const check = await run(process.execPath, [tsc, "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", "--lib", "es2022,esnext.disposable,dom", "--typeRoots", types, "--types", "node", "check.mts"], { cwd: dir }).then(
      () => "",
      (e: { stdout?: string }) => e.stdout ?? "tsc failed",
    );
    expect(check).toBe("");
    // Installed copies, not links back into the repository.
    const lock = readFileSync(join(dir, "package-lock.json"), "utf8");
    expect(lock).not.toContain('"link": true');
  });

  it("without the platform package, boot fails with an error naming the package to install", async () => {
    const dir = emptyDir();
    await run("npm", ["install", "--no-audit", "--no-fund", "--omit=optional", tarballs.root], { cwd: dir, env: userEnv(), timeout: 300_000 });
    writeFileSync(
      join(dir, "script.mjs"),
      'import { defineSandbox } from "@torkbot/sandbox";\n' +
        "await defineSandbox().boot().then(() => console.log('booted?'), (e) => console.log(`${e.name}: ${e.message}`));\n",
    );
    const { stdout } = await run(process.execPath, ["script.mjs"], { cwd: dir, env: userEnv(), timeout: 120_000 });
    expect(stdout).toMatch(/^SandboxArtifactError: the platform package @torkbot\/sandbox-linux-x64-gnu is not installed; install it with `npm install @torkbot\/sandbox-linux-x64-gnu`/);
  });
});
