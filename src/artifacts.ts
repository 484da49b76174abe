/**
 * Finds the current platform's native artifacts: the optional dependency
 * `@torkbot/sandbox-<platform>` (materialised under node_modules in a clone by
 * `npm run artifacts:link-current`), or SANDBOX_ARTIFACTS_DIR when set.
 */
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { SandboxArtifactError } from "./errors.js";

/** One image of the platform package's built-in catalog (`images/catalog.json`). */
export interface ImageEntry {
  name: string;
  file: string;
  format: "qcow2" | "raw";
  filesystem: string;
  virtualSizeBytes: number;
  fileSizeBytes: number;
  sha256: string;
  description?: string;
}

export interface Artifacts {
  dir: string;
  helper: string;
  addon: string;
  qemuKernel: string;
  qemuInitrd: string;
  krunfw: string;
  /** Directory served as the virtio-fs root holding the guest init (krun). */
  krunInitRoot: string;
  imagesDir: string;
  /** The OCI image importer (`sandbox-image import`). */
  imageTool: string;
  /** e2fsprogs ≥ 1.47.1 for the importer: `sbin/{mke2fs,debugfs}`, `lib/`. */
  e2fsprogs: string;
}

export function platformPackageName(platform = process.platform, arch = process.arch): string {
  const suffix = platform === "linux" ? "-gnu" : "";
  return `@torkbot/sandbox-${platform}-${arch}${suffix}`;
}

let cached: Artifacts | undefined;

/** Where every artifact should be, without checking that it is there. */
export function artifactPaths(dir = process.env.SANDBOX_ARTIFACTS_DIR ?? findPackageArtifacts()): Artifacts {
  return {
    dir,
    helper: join(dir, "bin", "sandbox-host"),
    addon: join(dir, `sandbox.${process.platform}-${process.arch}${process.platform === "linux" ? "-gnu" : ""}.node`),
    qemuKernel: join(dir, "kernel", "qemu", "vmlinuz"),
    qemuInitrd: join(dir, "kernel", "qemu", "initramfs.cpio"),
    krunfw: join(dir, "kernel", "krun", "libkrunfw.so.5"),
    krunInitRoot: join(dir, "kernel", "krun", "root"),
    imagesDir: join(dir, "images"),
    imageTool: join(dir, "bin", "sandbox-image"),
    e2fsprogs: join(dir, "tools", "e2fsprogs"),
  };
}

/** The helper and the addon: every backend needs them. */
export function resolveArtifacts(): Artifacts {
  if (cached) return cached;
  const a = artifactPaths();
  requirePresent([
    ["sandbox-host helper", a.helper],
    ["native addon", a.addon],
  ]);
  cached = a;
  return a;
}

/**
 * The guest kernel and init of one backend. Checked once the backend is chosen,
 * so a platform package that ships only one backend (darwin: krun) is complete.
 */
export function requireBackendArtifacts(a: Artifacts, backend: "qemu" | "krun"): void {
  requirePresent(
    backend === "qemu"
      ? [
          ["guest kernel (qemu)", a.qemuKernel],
          ["guest initramfs (qemu)", a.qemuInitrd],
        ]
      : [
          ["guest kernel (krun, libkrunfw)", a.krunfw],
          ["guest init (krun)", join(a.krunInitRoot, "init")],
        ],
  );
}

function requirePresent(entries: ReadonlyArray<readonly [string, string]>): void {
  for (const [what, path] of entries) {
    if (!existsSync(path)) {
      throw new SandboxArtifactError(
        `the ${what} is missing at ${path}; reinstall ${platformPackageName()} (or, in a clone, run \`npm run setup\`)`,
      );
    }
  }
}

function findPackageArtifacts(): string {
  const pkg = platformPackageName();
  const require = createRequire(import.meta.url);
  try {
    return join(dirname(require.resolve(`${pkg}/package.json`)), "artifacts");
  } catch {
    throw new SandboxArtifactError(
      `the platform package ${pkg} is not installed; install it with \`npm install ${pkg}\` ` +
        `(in a clone of the repository, run \`npm run setup\`). Supported platforms: linux-x64-gnu, darwin-arm64`,
    );
  }
}

export function readCatalog(a: Artifacts = resolveArtifacts()): ImageEntry[] {
  const file = join(a.imagesDir, "catalog.json");
  if (!existsSync(file)) {
    throw new SandboxArtifactError(
      `no built-in image catalog at ${file}; reinstall ${platformPackageName()} (in a clone: \`npm run setup\`)`,
    );
  }
  const parsed = JSON.parse(readFileSync(file, "utf8")) as { images: ImageEntry[] };
  return parsed.images;
}
