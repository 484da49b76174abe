/**
 * From a rootfs description to the image file a VM boots: catalog names
 * (built-in first, then this user's imported and built images) and
 * digest-pinned files from `rootfs.image`, with the image's runtime defaults.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, stat } from "node:fs/promises";
import { isAbsolute, join, resolve as resolvePath } from "node:path";
import { artifactPaths, readCatalog, type ImageEntry } from "../artifacts.js";
import { ImageDigestMismatchError, SandboxConfigError, SandboxError, UnknownImageError } from "../errors.js";
import { blobPath, imagesDir, readLocalCatalog, type ImageConfigDefaults, type ImageUser, type LocalImage } from "./store.js";

/** `rootfs.image(...)`: a user's own image file, pinned by digest. */
export interface ImageFileRootfs {
  readonly kind: "image";
  /** Absolute path of the image file. */
  readonly path: string;
  /** `sha256:<64 hex>` of the file. */
  readonly digest: string;
  /** Container format; detected from the file when absent. */
  readonly format: "qcow2" | "raw" | undefined;
  /** Filesystem inside (what the guest mounts). */
  readonly filesystem: string;
}

/** What a lane inherits from its image unless boot options say otherwise. */
export interface ImageDefaults {
  env: Record<string, string>;
  workingDir?: string;
  user?: ImageUser;
}

/** An image ready to boot. */
export interface ResolvedImage {
  /** Catalog name, `sha256:…` for unnamed images, or the file path. */
  name: string;
  path: string;
  format: "qcow2" | "raw";
  /** sha256 of the image file (hex): the block stores' `context.base`. */
  sha256: string;
  filesystem: string;
  defaults: ImageDefaults;
  /** The image config as imported (Entrypoint/Cmd for `sandbox run --image`). */
  config?: ImageConfigDefaults;
  source: "built-in" | "local" | "file";
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** `sha256:<hex>` → itself; bare hex is accepted too; anything else (tags, `latest`) is refused. */
export function checkDigest(what: string, value: unknown): string {
  const v = typeof value === "string" && /^[0-9a-f]{64}$/.test(value) ? `sha256:${value}` : value;
  if (typeof v !== "string" || !DIGEST.test(v)) {
    throw new SandboxConfigError(
      `${what} must be a sha256 digest such as "sha256:3f5e…" (64 lowercase hex digits), got ${JSON.stringify(value)}; ` +
        "tags and aliases like \"latest\" are not digests — compute one with `sha256sum FILE`",
    );
  }
  return v;
}

function envRecord(entries: readonly string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of entries ?? []) {
    const i = e.indexOf("=");
    if (i > 0) out[e.slice(0, i)] = e.slice(i + 1);
  }
  return out;
}

/** The lane defaults an image config gives (refusing a `User` that did not resolve). */
export function defaultsOf(name: string, config: ImageConfigDefaults | undefined): ImageDefaults {
  if (!config) return { env: {} };
  if (config.userError) {
    throw new SandboxConfigError(`image ${name} cannot boot: ${config.userError}; fix the image's User or its /etc/passwd`);
  }
  const env = envRecord(config.env);
  const user = config.resolvedUser ?? undefined;
  // As container runtimes do: HOME follows the image's user unless the image sets it.
  if (user && env.HOME === undefined) env.HOME = user.home;
  return { env, ...(config.workingDir ? { workingDir: config.workingDir } : {}), ...(user ? { user } : {}) };
}

function builtInCatalog(): { entries: ImageEntry[]; dir: string } {
  try {
    const a = artifactPaths();
    return { entries: readCatalog(a), dir: a.imagesDir };
  } catch (err) {
    // No platform package: boot reports that itself; lookups still see local images.
    if (err instanceof SandboxError) return { entries: [], dir: "" };
    throw err;
  }
}

function fromBuiltIn(e: ImageEntry, dir: string): ResolvedImage {
  return { name: e.name, path: join(dir, e.file), format: e.format, sha256: e.sha256, filesystem: e.filesystem, defaults: { env: {} }, source: "built-in" };
}

function fromLocal(e: LocalImage, dir: string, name: string): ResolvedImage {
  return {
    name,
    path: blobPath(dir, e.sha256),
    format: e.format,
    sha256: e.sha256,
    filesystem: e.filesystem,
    defaults: defaultsOf(name, e.config),
    config: e.config,
    source: "local",
  };
}

/** The registry reference to suggest for a name nobody has (`alpine:3.23` → `docker.io/library/alpine:3.23`). */
function importHint(name: string): string {
  const repo = name.split(":")[0] ?? name;
  if (repo.includes(".") || repo.includes("localhost")) return name;
  return repo.includes("/") ? `docker.io/${name}` : `docker.io/library/${name}`;
}

/**
 * A catalog image by `name`, `name:tag`, `name@sha256:…` (must still be that
 * digest) or `sha256:…`. Built-in names win; a name without a tag also
 * finds `name:latest`.
 */
export function findCatalogImage(ref: string): ResolvedImage {
  const builtIn = builtInCatalog();
  const dir = imagesDir();
  const local = readLocalCatalog(dir);
  const unknown = () =>
    new UnknownImageError(ref, [...builtIn.entries.map((e) => e.name), ...local.flatMap((e) => e.names)], { importHint: importHint(ref) });

  if (DIGEST.test(ref)) {
    const hex = ref.slice(7);
    const b = builtIn.entries.find((e) => e.sha256 === hex);
    if (b) return fromBuiltIn(b, builtIn.dir);
    const l = local.find((e) => e.sha256 === hex);
    if (l) return fromLocal(l, dir, l.names[0] ?? ref);
    throw unknown();
  }
  const at = ref.lastIndexOf("@");
  const [name, pin] = at > 0 ? [ref.slice(0, at), checkDigest(`the digest in ${JSON.stringify(ref)}`, ref.slice(at + 1))] : [ref, undefined];
  const found = lookupName(name, builtIn, local, dir);
  if (!found) throw unknown();
  if (pin && `sha256:${found.sha256}` !== pin) {
    throw new ImageDigestMismatchError(
      `image ${name}`,
      pin,
      `sha256:${found.sha256}`,
      `the name now points at other bytes; pin the new digest or import the pinned image again under this name`,
    );
  }
  return found;
}

function lookupName(name: string, builtIn: { entries: ImageEntry[]; dir: string }, local: LocalImage[], dir: string): ResolvedImage | undefined {
  const b = builtIn.entries.find((e) => e.name === name);
  if (b) return fromBuiltIn(b, builtIn.dir);
  const candidates = name.slice(name.lastIndexOf("/") + 1).includes(":") ? [name] : [name, `${name}:latest`];
  for (const n of candidates) {
    const l = local.find((e) => e.names.includes(n));
    if (l) return fromLocal(l, dir, n);
  }
  return undefined;
}

/** Verified file digests by identity (path, inode, size, mtime): a file is hashed once per process unless it changes. */
const verified = new Map<string, string>();

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

async function detectFormat(path: string): Promise<"qcow2" | "raw"> {
  const fh = await open(path, "r");
  try {
    const { buffer, bytesRead } = await fh.read(Buffer.alloc(4), 0, 4, 0);
    return bytesRead === 4 && buffer.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? "qcow2" : "raw";
  } finally {
    await fh.close();
  }
}

/** A `rootfs.image` file, checked against its digest before anything boots. */
export async function resolveImageFile(spec: ImageFileRootfs): Promise<ResolvedImage> {
  const s = await stat(spec.path).catch((err: NodeJS.ErrnoException) => {
    throw new SandboxConfigError(`rootfs.image: cannot read ${spec.path}: ${err.code ?? err.message}`);
  });
  if (!s.isFile()) throw new SandboxConfigError(`rootfs.image: ${spec.path} is not a regular file`);
  const identity = `${spec.path}\0${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
  let actual = verified.get(identity);
  if (!actual) {
    actual = `sha256:${await sha256File(spec.path)}`;
    verified.set(identity, actual);
  }
  if (actual !== spec.digest) {
    throw new ImageDigestMismatchError(`rootfs.image file ${spec.path}`, spec.digest, actual);
  }
  const format = await detectFormat(spec.path);
  if (spec.format && spec.format !== format) {
    throw new SandboxConfigError(`rootfs.image: ${spec.path} is a ${format} image, but format: ${JSON.stringify(spec.format)} was given`);
  }
  return { name: spec.path, path: spec.path, format, sha256: actual.slice(7), filesystem: spec.filesystem, defaults: { env: {} }, source: "file" };
}

/** The image behind a base description: a catalog name or a pinned file. */
export async function resolveImage(base: { kind: "builtIn"; name: string } | ImageFileRootfs): Promise<ResolvedImage> {
  return base.kind === "image" ? resolveImageFile(base) : findCatalogImage(base.name);
}

/** `rootfs.image` path normalisation: relative paths are taken from the current directory. */
export function absoluteImagePath(path: string): string {
  return isAbsolute(path) ? path : resolvePath(path);
}
