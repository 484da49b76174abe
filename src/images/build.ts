/**
 * `rootfs.build`: a new catalog image from a base and setup steps. The base
 * boots with a block copy-on-write overlay (in memory) under the given
 * network policy, the steps run, the lane powers off (every dirty block
 * reaches the overlay), and base + overlay are flattened into a standalone
 * qcow2 whose sha256 names it. Results are cached by (base digest, steps,
 * env, workdir, copied content): the same inputs return the cached image
 * without booting.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, lstat, mkdir, readdir, readlink, rename, rm } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { create as createTar } from "tar";
import { ImageBuildError, SandboxConfigError } from "../errors.js";
import type { NetworkPolicy } from "../network/policy.js";
import type { BaseImage, BuiltInRootfs } from "../rootfs.js";
import { MemoryBlockStore } from "../rootfs/memory-store.js";
import { rootfs } from "../rootfs.js";
import { defineSandbox, type Sandbox } from "../sandbox.js";
import { openFileByteSink } from "../rootfs/qcow2-writer.js";
import { checkAbsolutePath, checkEnv } from "../validate.js";
import { checkImageName } from "./reference.js";
import { resolveImage, sha256File } from "./resolve.js";
import { addImage, blobPath, imagesDir, readLocalCatalog, scratchDir, updateCatalog, type ImageConfigDefaults } from "./store.js";

/** One setup step: a shell command (`sh -c`), an argv, or a host file/directory copied in. */
export type BuildStep = { run: string | string[] } | { copy: string; to: string };

/** Options of `rootfs.build`: the base, the setup steps, and what the steps may reach and see. */
export interface RootfsBuildOptions {
  base: BaseImage;
  steps: BuildStep[];
  /** Egress for the steps (`network.policy(...)`); absent: no network at all. */
  network?: NetworkPolicy;
  /** Environment of the steps, and a default of the resulting image (like Dockerfile ENV). */
  env?: Record<string, string>;
  /** Working directory of the steps (created if missing) and of lanes booted from the result. */
  workdir?: string;
  /** Catalog name (`name:tag`) for the result; it is always reachable by its digest. */
  name?: string;
  resources?: { cpus?: number; memoryMiB?: number };
  /** Each step's deadline (default 30 minutes). */
  stepTimeoutMs?: number;
  /** zlib-compressed qcow2 clusters (smaller file, slower build). Default false. */
  compress?: boolean;
  /** Step output as it happens. */
  onOutput?: (chunk: Uint8Array, stream: "stdout" | "stderr", step: number) => void;
  /** Called as each step starts (and with `cached: true` when nothing has to run). */
  onStep?: (event: { step: number; total: number; description: string } | { cached: true; digest: string }) => void;
  signal?: AbortSignal;
}

/** A built image: usable wherever `rootfs.builtIn(...)` is (its name pins the digest). */
export interface BuiltRootfs extends BuiltInRootfs {
  /** `sha256:…` of the image file. */
  readonly digest: string;
  /** True when the result came from the build cache. */
  readonly cached: boolean;
}

const DEFAULT_STEP_TIMEOUT_MS = 30 * 60_000;
/** Kept from each step's output for the error message when it fails. */
const OUTPUT_TAIL = 8 * 1024;

type CheckedStep = { run: string[]; description: string } | { copy: string; to: string; description: string };

function checkSteps(steps: unknown): CheckedStep[] {
  if (!Array.isArray(steps) || steps.length === 0) {
    throw new SandboxConfigError('rootfs.build({ steps }) needs at least one step: { run: "…" } or { copy: hostPath, to: guestPath }');
  }
  return steps.map((s: unknown, i) => {
    const where = `rootfs.build step ${i + 1}`;
    if (s && typeof s === "object" && "run" in s) {
      const run = (s as { run: unknown }).run;
      if (typeof run === "string" && run.trim() !== "") return { run: ["/bin/sh", "-c", run], description: run };
      if (Array.isArray(run) && run.length > 0 && run.every((a) => typeof a === "string")) return { run: run as string[], description: run.join(" ") };
      throw new SandboxConfigError(`${where}: run must be a shell command string or a non-empty argv array`);
    }
    if (s && typeof s === "object" && "copy" in s) {
      const { copy, to } = s as { copy: unknown; to: unknown };
      if (typeof copy !== "string" || copy === "") throw new SandboxConfigError(`${where}: copy must be a host path`);
      const src = resolve(copy);
      if (!existsSync(src)) throw new SandboxConfigError(`${where}: ${src} does not exist`);
      return { copy: src, to: checkAbsolutePath(`${where}: to`, to), description: `copy ${copy} → ${String(to)}` };
    }
    throw new SandboxConfigError(`${where} must be { run } or { copy, to }`);
  });
}

/** A digest of a host tree: names, types, modes, symlink targets and file contents (not times or owners). */
async function treeDigest(path: string): Promise<string> {
  const h = createHash("sha256");
  const walk = async (p: string, rel: string): Promise<void> => {
    const s = await lstat(p);
    const mode = (s.mode & 0o7777).toString(8);
    if (s.isSymbolicLink()) h.update(`l ${rel} ${mode} ${await readlink(p)}\0`);
    else if (s.isFile()) h.update(`f ${rel} ${mode} ${await sha256File(p)}\0`);
    else if (s.isDirectory()) {
      h.update(`d ${rel} ${mode}\0`);
      for (const name of (await readdir(p)).sort()) await walk(join(p, name), rel === "" ? name : `${rel}/${name}`);
    } else throw new SandboxConfigError(`rootfs.build copy: ${p} is not a file, directory or symlink`);
  };
  await walk(path, "");
  return h.digest("hex");
}

async function buildKey(baseSha: string, steps: CheckedStep[], env: Record<string, string>, workdir: string | undefined, compress: boolean) {
  const parts = [];
  for (const s of steps) parts.push("run" in s ? { run: s.run } : { copy: await treeDigest(s.copy), name: basename(s.copy), to: s.to });
  const env2 = Object.fromEntries(Object.entries(env).sort(([a], [b]) => (a < b ? -1 : 1)));
  return createHash("sha256").update(JSON.stringify({ v: 1, base: baseSha, steps: parts, env: env2, workdir: workdir ?? null, compress })).digest("hex");
}

/** Drains a process output stream into `onOutput` and a bounded tail. */
async function pump(stream: ReadableStream<Uint8Array>, tail: { text: string }, emit: (c: Uint8Array) => void) {
  const decoder = new TextDecoder();
  for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) {
    emit(chunk);
    tail.text = (tail.text + decoder.decode(chunk, { stream: true })).slice(-OUTPUT_TAIL);
  }
}

/** The new image's config: the base's, with the build's env and workdir on top. */
function resultConfig(base: ImageConfigDefaults | undefined, env: Record<string, string>, workdir: string | undefined): ImageConfigDefaults {
  const merged = new Map<string, string>();
  for (const e of base?.env ?? []) {
    const i = e.indexOf("=");
    if (i > 0) merged.set(e.slice(0, i), e.slice(i + 1));
  }
  for (const [k, v] of Object.entries(env)) merged.set(k, v);
  return {
    ...(base ?? {}),
    env: [...merged].map(([k, v]) => `${k}=${v}`),
    ...(workdir ? { workingDir: workdir } : {}),
  };
}

export async function build(options: RootfsBuildOptions): Promise<BuiltRootfs> {
  const base = options?.base;
  if (!base || (base.kind !== "builtIn" && base.kind !== "image")) {
    throw new SandboxConfigError("rootfs.build({ base }) needs base: rootfs.builtIn(\"…\") or rootfs.image({ path, digest })");
  }
  const steps = checkSteps(options.steps);
  const env = checkEnv("rootfs.build({ env })", options.env);
  const workdir = options.workdir === undefined ? undefined : checkAbsolutePath("rootfs.build({ workdir })", options.workdir);
  const name = options.name === undefined ? undefined : checkImageName(options.name);
  const compress = options.compress === true;
  const baseImage = await resolveImage(base);
  const key = await buildKey(baseImage.sha256, steps, env, workdir, compress);
  const dir = imagesDir();
  const spec = (sha256: string, cached: boolean): BuiltRootfs =>
    Object.freeze({ kind: "builtIn" as const, name: name ? `${name}@sha256:${sha256}` : `sha256:${sha256}`, digest: `sha256:${sha256}`, cached });

  const hit = readLocalCatalog(dir).find((e) => e.source.kind === "build" && e.source.buildKey === key && existsSync(blobPath(dir, e.sha256)));
  if (hit) {
    if (name && !hit.names.includes(name)) await updateCatalog(dir, (images) => addImage(images, hit, name));
    options.onStep?.({ cached: true, digest: `sha256:${hit.sha256}` });
    return spec(hit.sha256, true);
  }

  const overlay = new MemoryBlockStore();
  const sandbox = defineSandbox({
    rootfs: rootfs.cow({ base, writable: overlay, maxDirtyBytes: 256 << 20 }),
    resources: options.resources,
    ...(options.network ? { network: options.network } : {}),
  });
  const stepTimeoutMs = options.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
  const lane = await sandbox.boot({ cwd: "/", env, signal: options.signal });
  try {
    const cwd = workdir ?? baseImage.defaults.workingDir ?? "/";
    if (workdir) await runOrFail(lane, -1, ["mkdir", "-p", workdir], "/", stepTimeoutMs, options, `create workdir ${workdir}`);
    for (const [i, step] of steps.entries()) {
      options.signal?.throwIfAborted();
      options.onStep?.({ step: i, total: steps.length, description: step.description });
      if ("run" in step) await runOrFail(lane, i, step.run, cwd, stepTimeoutMs, options, step.description);
      else await copyIn(lane, i, step, stepTimeoutMs, options);
    }
    await runOrFail(lane, steps.length, ["sync"], "/", stepTimeoutMs, options, "sync");
  } finally {
    // close() resolves once every dirty block is in the overlay (and rejects if one is not).
    await lane.close();
  }

  const work = await scratchDir(dir, "build");
  try {
    const flat = join(work, "image.qcow2");
    const sink = await openFileByteSink(flat);
    try {
      // flatten only writes here; `read` completes the ImageByteStore contract.
      const dest = { ...sink, read: () => Promise.reject(new Error("not readable while building")) };
      await rootfs.flatten({ format: "qcow2", source: rootfs.compose({ base, overlay }), dest });
    } finally {
      await sink.close();
    }
    let file = flat;
    if (compress) {
      file = join(work, "compressed.qcow2");
      await promisify(execFile)("qemu-img", ["convert", "-q", "-c", "-f", "qcow2", "-O", "qcow2", "-o", "compat=1.1,compression_type=zlib", flat, file]);
    }
    const sha256 = await sha256File(file);
    const { size } = await lstat(file);
    const { virtualSizeBytes } = await import("../rootfs/qcow2-reader.js").then(async ({ Qcow2Reader }) => {
      const r = await Qcow2Reader.openFile(file, { name: "build result" });
      try {
        return { virtualSizeBytes: Number(r.virtualSize) };
      } finally {
        await r.close();
      }
    });
    await mkdir(dirname(blobPath(dir, sha256)), { recursive: true });
    await chmod(file, 0o444);
    if (!existsSync(blobPath(dir, sha256))) await rename(file, blobPath(dir, sha256));
    await updateCatalog(dir, (images) =>
      addImage(
        images,
        {
          sha256,
          file: `blobs/sha256/${sha256}.qcow2`,
          names: [],
          format: "qcow2",
          filesystem: "ext4",
          virtualSizeBytes,
          fileSizeBytes: size,
          compressed: compress,
          source: { kind: "build", base: baseImage.source === "file" ? `sha256:${baseImage.sha256}` : `${baseImage.name}@sha256:${baseImage.sha256}`, buildKey: key, steps: steps.length },
          config: resultConfig(baseImage.config, env, workdir),
          createdAt: new Date().toISOString(),
        },
        name,
      ),
    );
    return spec(sha256, false);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

type BuildLane = Awaited<ReturnType<Sandbox["boot"]>>;

async function runOrFail(
  lane: BuildLane,
  step: number,
  argv: string[],
  cwd: string,
  timeoutMs: number,
  options: RootfsBuildOptions,
  description: string,
  stdin?: AsyncIterable<Uint8Array>,
): Promise<void> {
  const child = lane.spawn(argv[0]!, argv.slice(1), { cwd, timeoutMs, signal: options.signal });
  const tail = { text: "" };
  const emit = (stream: "stdout" | "stderr") => (c: Uint8Array) => {
    try {
      options.onOutput?.(c, stream, step);
    } catch {
      // a throwing output callback must not break the build
    }
  };
  const feeding = (async () => {
    const w = child.stdin.getWriter();
    try {
      if (stdin) for await (const chunk of stdin) await w.write(chunk);
    } finally {
      await w.close().catch(() => {});
    }
  })();
  const [exit] = await Promise.all([child.exit, pump(child.stdout, tail, emit("stdout")), pump(child.stderr, tail, emit("stderr")), feeding]).catch(
    (err: unknown) => {
      throw new ImageBuildError(step, `build step ${step + 1} (${description}) could not run: ${(err as Error).message}`, { cause: err, output: tail.text });
    },
  );
  if (exit.exitCode !== 0) {
    const why = exit.timedOut ? `timed out after ${timeoutMs} ms` : `exited with code ${exit.exitCode}`;
    throw new ImageBuildError(step, `build step ${step + 1} (${description}) ${why}${tail.text ? `; its output ended with:\n${tail.text.trimEnd()}` : ""}`, {
      exitCode: exit.exitCode,
      output: tail.text,
    });
  }
}

/** `copy`: a tar of the host path streamed into `tar -x` in the guest, owned by root like Docker's COPY. */
async function copyIn(lane: BuildLane, step: number, s: { copy: string; to: string; description: string }, timeoutMs: number, options: RootfsBuildOptions) {
  const isDir = (await lstat(s.copy)).isDirectory();
  const tar = createTar({ cwd: isDir ? s.copy : dirname(s.copy), portable: true, follow: false }, [isDir ? "." : basename(s.copy)]);
  // A directory's contents go into `to`; a file becomes `to` (or lands inside it when `to` ends in "/").
  const script = isDir
    ? 'mkdir -p "$1" && tar -x -f - -C "$1"'
    : 'case "$1" in */) d="$1"; t="$1$2";; *) d=$(dirname "$1"); t="$1";; esac; mkdir -p "$d" && x=$(mktemp -d) && tar -x -f - -C "$x" && mv -f "$x/$2" "$t" && rmdir "$x"';
  await runOrFail(lane, step, ["/bin/sh", "-c", script, "sh", s.to, basename(s.copy)], "/", timeoutMs, options, s.description, tar as unknown as AsyncIterable<Uint8Array>);
}

