/**
 * `importImage(ref, options)`: an OCI image (registry, layout, archive) into
 * the local catalog. The work is done by the `sandbox-image` helper binary
 * (Rust: oci-client, oci-spec, tar, flate2, zstd; e2fsprogs and qemu-img for
 * the filesystem): credentials go to it on stdin, progress comes back as
 * JSON lines, and abort kills it.
 */
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync } from "node:fs";
import { chmod, mkdir, rename, rm } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { createInterface } from "node:readline";
import { artifactPaths, platformPackageName, readCatalog } from "../artifacts.js";
import {
  abortError,
  ImageDigestMismatchError,
  ImageImportError,
  RegistryAuthError,
  SandboxArtifactError,
  SandboxConfigError,
  SandboxError,
  type ImageImportFailure,
} from "../errors.js";
import { checkImageName, defaultImageName, parseImageSource, type ImageSource } from "./reference.js";
import { addImage, blobPath, imagesDir, scratchDir, updateCatalog, type ImageConfigDefaults, type LocalImage } from "./store.js";

/** Progress of an import, as the helper reports it. */
export type ImportProgress =
  | { type: "resolved"; manifestDigest: string | null; configDigest: string; layers: { digest: string; size: number | null }[] }
  | { type: "download"; layer: number; bytes: number; total: number | null; done: boolean }
  | { type: "unpack"; layer: number; bytes: number; done: boolean }
  | { type: "stage"; stage: "filesystem" | "xattrs" | "qcow2" | "digest" }
  | { type: "warning"; message: string };

/** Options of `importImage`: catalog name, registry auth and TLS, compression, progress, cancellation. */
export interface ImportImageOptions {
  /** Catalog name (`name[:tag]`). Default: from the reference (`docker.io/library/alpine:3.23` → `alpine:3.23`). */
  name?: string;
  /** Registry credentials: username + password (basic or token auth, as the registry asks), or a bearer token. */
  auth?: { username: string; password: string } | { token: string };
  /** HTTP instead of HTTPS. Default: true for localhost/127.x registries (like Docker), else false. */
  plainHttp?: boolean;
  /** Extra PEM CA certificate files to trust for the registry. */
  caCertificates?: string[];
  /** zlib-compressed qcow2 clusters: ~3× smaller files, several times slower to import. Default false. */
  compress?: boolean;
  /** Called for each progress event (bytes per layer, stages, warnings). */
  onProgress?: (event: ImportProgress) => void;
  signal?: AbortSignal;
}

/** An image in the local catalog. */
export interface ImportedImage {
  name: string;
  /** `sha256:…` of the image file: the same input always gives the same digest. */
  digest: string;
  path: string;
  fileSizeBytes: number;
  virtualSizeBytes: number;
  /** Manifest digest at the source (absent for docker archives). */
  manifestDigest: string | null;
  platform: string;
  config: ImageConfigDefaults;
}

interface HelperOutcome {
  path: string;
  sha256: string;
  fileSizeBytes: number;
  virtualSizeBytes: number;
  manifestDigest: string | null;
  configDigest: string;
  platform: string;
  refName: string | null;
  config: ImageConfigDefaults;
}

function findOnPath(name: string, override: string | undefined): string | undefined {
  if (override) return override;
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(delimiter)) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** The helper and the tools it runs, or a typed error saying how to get them. */
function importTools() {
  const a = artifactPaths();
  const missing = (what: string) =>
    new SandboxArtifactError(`${what}; reinstall ${platformPackageName()} (in a clone of the repository: \`npm run setup\`)`);
  if (!existsSync(a.imageTool)) throw missing(`the image importer is missing at ${a.imageTool}`);
  const mke2fs = process.env.SANDBOX_MKE2FS ?? join(a.e2fsprogs, "sbin", "mke2fs");
  if (!existsSync(mke2fs)) throw missing(`mke2fs ≥ 1.47.1 (tarball input) is missing at ${mke2fs}`);
  const qemuImg = findOnPath("qemu-img", process.env.SANDBOX_QEMU_IMG);
  if (!qemuImg) {
    throw new SandboxArtifactError("qemu-img was not found on PATH; install it (Debian/Ubuntu: `apt-get install qemu-utils`) or set SANDBOX_QEMU_IMG");
  }
  return {
    helper: a.imageTool,
    tools: {
      mke2fs,
      debugfs: process.env.SANDBOX_DEBUGFS ?? join(a.e2fsprogs, "sbin", "debugfs"),
      qemuImg,
      libraryPath: process.env.SANDBOX_MKE2FS ? undefined : join(a.e2fsprogs, "lib"),
    },
  };
}

function isLoopbackRegistry(reference: string): boolean {
  const host = reference.split("/")[0] ?? "";
  return reference.includes("/") && /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/.test(host);
}

function requestSource(source: ImageSource, options: ImportImageOptions) {
  if (source.kind !== "registry") return source;
  const auth = options.auth;
  if (auth !== undefined && !("token" in auth ? typeof auth.token === "string" : typeof auth?.username === "string" && typeof auth.password === "string")) {
    throw new SandboxConfigError("importImage({ auth }) must be { username, password } or { token }");
  }
  return {
    kind: "registry" as const,
    reference: source.reference,
    ...(auth && "token" in auth ? { token: auth.token } : {}),
    ...(auth && "username" in auth ? { username: auth.username, password: auth.password } : {}),
    plainHttp: options.plainHttp ?? isLoopbackRegistry(source.reference),
    caCertPaths: options.caCertificates ?? [],
  };
}

function failure(event: { kind: string; message: string; what?: string; expected?: string; actual?: string }): SandboxError {
  switch (event.kind) {
    case "auth":
      return new RegistryAuthError(event.message);
    case "digest-mismatch":
      return new ImageDigestMismatchError(
        event.what ?? "a blob",
        event.expected ?? "?",
        event.actual ?? "?",
        "the source is corrupt or was tampered with; nothing was imported",
      );
    default:
      return new ImageImportError(event.kind as ImageImportFailure, event.message);
  }
}

function progressOf(e: Record<string, unknown>): ImportProgress | undefined {
  switch (e.event) {
    case "resolved":
      return { type: "resolved", manifestDigest: (e.manifestDigest as string) ?? null, configDigest: e.configDigest as string, layers: e.layers as [] };
    case "download":
      return { type: "download", layer: e.layer as number, bytes: e.bytes as number, total: (e.total as number) ?? null, done: e.done === true };
    case "unpack":
      return { type: "unpack", layer: e.layer as number, bytes: e.bytes as number, done: e.done === true };
    case "stage":
      return { type: "stage", stage: e.stage as "filesystem" };
    case "warning":
      return { type: "warning", message: e.message as string };
    default:
      return undefined;
  }
}

/** Runs the helper once; resolves with its `done` outcome. */
function runHelper(helper: string, request: unknown, options: ImportImageOptions): Promise<HelperOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(helper, ["import"], { stdio: ["pipe", "pipe", "pipe"] });
    let outcome: HelperOutcome | undefined;
    let error: SandboxError | undefined;
    let stderr = "";
    const onAbort = () => child.kill("SIGKILL");
    options.signal?.addEventListener("abort", onAbort, { once: true });
    child.stderr.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-8192);
    });
    createInterface({ input: child.stdout }).on("line", (line) => {
      let e: Record<string, unknown>;
      try {
        e = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return; // not ours (a library printing to stdout); the exit status decides
      }
      if (e.event === "done") outcome = e.image as HelperOutcome;
      else if (e.event === "error") error = failure(e as never);
      else {
        const p = progressOf(e);
        if (p && options.onProgress) {
          try {
            options.onProgress(p);
          } catch {
            // a throwing progress callback must not break the import
          }
        }
      }
    });
    child.on("error", (err) => reject(new ImageImportError("tool", `cannot run the image importer ${helper}: ${err.message}`, { cause: err })));
    child.on("close", (code, signal) => {
      options.signal?.removeEventListener("abort", onAbort);
      if (options.signal?.aborted) return reject(abortError(options.signal));
      if (error) return reject(error);
      if (code === 0 && outcome) return resolve(outcome);
      reject(new ImageImportError("tool", `the image importer exited with ${signal ?? `code ${code}`}${stderr ? `: ${stderr.trim()}` : ""}`));
    });
    child.stdin.on("error", () => {}); // an early exit is reported by "close"
    child.stdin.end(JSON.stringify(request));
  });
}

function sourceRecord(source: ImageSource, out: HelperOutcome): LocalImage["source"] {
  if (source.kind === "registry") return { kind: "registry", reference: source.reference, manifestDigest: out.manifestDigest, platform: out.platform };
  return { kind: source.kind, path: source.path, reference: source.reference ?? null, manifestDigest: out.manifestDigest, platform: out.platform };
}

/**
 * Imports an OCI image into the local catalog, so that
 * `rootfs.builtIn(name)` boots it. `ref` is a registry reference
 * (`registry/repo:tag`, `…@sha256:…`), `oci:DIR[:TAG]`,
 * `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:REPO:TAG]`, or a path.
 * Every blob is verified against its digest; a multi-platform index is
 * narrowed to this host's platform; layers are applied with whiteouts,
 * opaque directories, hardlinks, modes, ownership and xattrs. The image
 * config's Env, WorkingDir and User become the defaults of lanes booted
 * from it. Importing the same image again yields the same digest.
 *
 * Fails with `RegistryAuthError`, `ImageDigestMismatchError`,
 * `ImageImportError` (`reason`: not-found, platform, unsupported…),
 * `SandboxConfigError`, `SandboxArtifactError` or an `AbortError`.
 */
export async function importImage(ref: string, options: ImportImageOptions = {}): Promise<ImportedImage> {
  const source = parseImageSource(ref);
  if (options.name !== undefined) checkImageName(options.name);
  const reserved = new Set(readBuiltInNames());
  const refuseBuiltIn = (name: string) => {
    if (reserved.has(name)) {
      throw new SandboxConfigError(`${name} is the name of a built-in image; import under another name (--name NAME / { name })`);
    }
  };
  // A registry import's default name is known up front: fail before downloading anything.
  if (options.name !== undefined) refuseBuiltIn(options.name);
  else if (source.kind === "registry") refuseBuiltIn(defaultImageName(source, null));
  options.signal?.throwIfAborted();
  const { helper, tools } = importTools();
  const dir = imagesDir();
  const work = await scratchDir(dir, "import");
  try {
    const request = {
      source: requestSource(source, options),
      workDir: join(work, "w"),
      output: join(work, "image.qcow2"),
      compress: options.compress === true,
      tools,
    };
    const out = await runHelper(helper, request, options);
    const name = checkImageName(options.name ?? defaultImageName(source, out.refName));
    refuseBuiltIn(name);
    const dest = blobPath(dir, out.sha256);
    await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
    await chmod(out.path, 0o444);
    // Same digest, same bytes: an existing file is as good as ours.
    if (!existsSync(dest)) await rename(out.path, dest);
    const entry = await updateCatalog(dir, (images) =>
      addImage(
        images,
        {
          sha256: out.sha256,
          file: `blobs/sha256/${out.sha256}.qcow2`,
          names: [],
          format: "qcow2",
          filesystem: "ext4",
          virtualSizeBytes: out.virtualSizeBytes,
          fileSizeBytes: out.fileSizeBytes,
          compressed: options.compress === true,
          source: sourceRecord(source, out),
          config: out.config,
          createdAt: new Date().toISOString(),
        },
        name,
      ),
    );
    return {
      name,
      digest: `sha256:${entry.sha256}`,
      path: dest,
      fileSizeBytes: entry.fileSizeBytes,
      virtualSizeBytes: entry.virtualSizeBytes,
      manifestDigest: out.manifestDigest,
      platform: out.platform,
      config: entry.config,
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function readBuiltInNames(): string[] {
  try {
    return readCatalog(artifactPaths()).map((e) => e.name);
  } catch {
    return [];
  }
}
