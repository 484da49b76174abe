#!/usr/bin/env node
// Packs what would be published into dist/release/:
//   - the root package @torkbot/sandbox, whose packed manifest lists every
//     platform package as an exact-version optionalDependency (the development
//     package.json cannot: see docs/decisions.md), without dev-only fields;
//   - the current platform's package with its artifacts (helper, addon,
//     kernels, images), after checking they are all there.
// Prints {"root": "<tgz>", "platform": "<tgz>"} on stdout. No install scripts anywhere.
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(repo, "dist", "release");
const stage = join(out, "stage");
const readJson = (p) => JSON.parse(readFileSync(p, "utf8"));
const log = (msg) => process.stderr.write(`[release:pack] ${msg}\n`);

const pkg = readJson(join(repo, "package.json"));
const platformDirs = readdirSync(join(repo, "platform-packages")).filter((d) => existsSync(join(repo, "platform-packages", d, "package.json")));
const platforms = platformDirs.map((dir) => ({ dir, manifest: readJson(join(repo, "platform-packages", dir, "package.json")) }));
for (const p of platforms) {
  if (p.manifest.version !== pkg.version) {
    throw new Error(`platform-packages/${p.dir} is version ${p.manifest.version}, the root package ${pkg.version}: keep them in step`);
  }
  if (p.manifest.scripts && Object.keys(p.manifest.scripts).some((s) => /install/.test(s))) {
    throw new Error(`platform-packages/${p.dir} declares install scripts; packages must not run code at install time`);
  }
}

const current = process.platform === "linux" && process.arch === "x64" ? "linux-x64-gnu" : `${process.platform}-${process.arch}`;
const platform = platforms.find((p) => p.dir === current);
if (!platform) throw new Error(`no platform package for ${current} under platform-packages/`);

// The current platform's artifacts must be complete: a tarball missing one is useless.
const art = join(repo, "platform-packages", current, "artifacts");
const addon = `sandbox.${current}.node`;
// Linux ships the qemu kernel (TCG/KVM fallback); macOS runs krun only.
const kernels = current === "darwin-arm64" ? ["kernel/krun/libkrunfw.so.5", "kernel/krun/root/init"] : ["kernel/qemu/vmlinuz", "kernel/qemu/initramfs.cpio"];
// The image importer and the e2fsprogs it runs (Debian 12's own mke2fs cannot read tarballs).
// macOS packages do not carry them yet (see docs/decisions.md).
const importer = current === "darwin-arm64" ? [] : ["bin/sandbox-image", "tools/e2fsprogs/sbin/mke2fs", "tools/e2fsprogs/sbin/debugfs"];
const required = ["bin/sandbox-host", addon, ...kernels, ...importer, "images/catalog.json"];
for (const r of required) {
  if (!existsSync(join(art, r))) throw new Error(`missing artifact platform-packages/${current}/artifacts/${r}: run \`npm run setup\` first`);
}
for (const image of readJson(join(art, "images", "catalog.json")).images) {
  if (!existsSync(join(art, "images", image.file))) throw new Error(`catalog lists ${image.file}, which is missing: run \`npm run setup\``);
}

log("compiling TypeScript");
execFileSync(process.execPath, [join(repo, "node_modules", "typescript", "bin", "tsc"), "-p", join(repo, "tsconfig.json")], { stdio: "inherit" });

rmSync(out, { recursive: true, force: true });
mkdirSync(stage, { recursive: true });
for (const entry of [...pkg.files, "README.md", "LICENSE"]) {
  const from = join(repo, entry);
  if (existsSync(from)) cpSync(from, join(stage, entry), { recursive: true });
}
const manifest = { ...pkg };
delete manifest.devDependencies;
delete manifest.scripts;
delete manifest.napi;
manifest.files = [...pkg.files];
manifest.optionalDependencies = Object.fromEntries(platforms.map((p) => [p.manifest.name, pkg.version]));
writeFileSync(join(stage, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);

const pack = (dir) => {
  const [info] = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", out], { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }));
  return join(out, info.filename);
};
log(`packing ${pkg.name}`);
const rootTgz = pack(stage);
log(`packing ${platform.manifest.name} (artifacts included; this takes a while)`);
const platformTgz = pack(join(repo, "platform-packages", current));
rmSync(stage, { recursive: true, force: true });
for (const t of [rootTgz, platformTgz]) log(`${t} (${(statSync(t).size / 1e6).toFixed(1)} MB)`);
process.stdout.write(`${JSON.stringify({ root: rootTgz, platform: platformTgz })}\n`);
