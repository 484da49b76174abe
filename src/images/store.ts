/**
 * The local image store: images this user imported or built, next to (never
 * inside) the platform package's built-in catalog.
 *
 *   <dir>/catalog.json              names, digests, sources, image defaults
 *   <dir>/blobs/sha256/<hex>.qcow2  one read-only file per image, named by its sha256
 *   <dir>/tmp/                      imports and builds in progress
 *
 * `<dir>` is `SANDBOX_IMAGES_DIR`, else `$XDG_DATA_HOME/torkbot-sandbox/images`
 * (`~/.local/share/…`; macOS `~/Library/Application Support/…`). Data, not
 * cache: code that says `rootfs.builtIn("alpine:3.23")` must keep working
 * after a cache is wiped. Writers take a lock file, so concurrent imports
 * (other processes too) never lose each other's entries.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { mkdir, open, readdir, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { ImageImportError } from "../errors.js";

/** How `User` of an image config resolved against its /etc/passwd. */
export interface ImageUser {
  uid: number;
  gid: number;
  groups: number[];
  home: string;
}

/** Runtime defaults from an image config (OCI `config` section, or a build's env/workdir). */
export interface ImageConfigDefaults {
  /** `KEY=value` entries. */
  env: string[];
  workingDir?: string | null;
  /** `User` as written in the config. */
  user?: string | null;
  resolvedUser?: ImageUser | null;
  /** Why `User` did not resolve; such an image refuses to boot. */
  userError?: string | null;
  entrypoint?: string[] | null;
  cmd?: string[] | null;
  labels?: Record<string, string>;
}

export type LocalImageSource =
  | { kind: "registry"; reference: string; manifestDigest: string | null; platform: string }
  | { kind: "oci-layout" | "oci-archive" | "docker-archive" | "archive"; path: string; reference: string | null; manifestDigest: string | null; platform: string }
  | { kind: "build"; base: string; buildKey: string; steps: number };

/** One image file in the local store and every name that points at it. */
export interface LocalImage {
  /** sha256 of the image file (hex). */
  sha256: string;
  /** Path relative to the store directory. */
  file: string;
  names: string[];
  format: "qcow2";
  filesystem: "ext4";
  virtualSizeBytes: number;
  fileSizeBytes: number;
  compressed: boolean;
  source: LocalImageSource;
  config: ImageConfigDefaults;
  createdAt: string;
}

interface CatalogFile {
  version: 1;
  images: LocalImage[];
}

/** The store directory (not created). */
export function imagesDir(): string {
  if (process.env.SANDBOX_IMAGES_DIR) return process.env.SANDBOX_IMAGES_DIR;
  if (process.platform === "darwin") return join(homedir(), "Library", "Application Support", "torkbot-sandbox", "images");
  const data = process.env.XDG_DATA_HOME || join(homedir(), ".local", "share");
  return join(data, "torkbot-sandbox", "images");
}

export function blobPath(dir: string, sha256: string): string {
  return join(dir, "blobs", "sha256", `${sha256}.qcow2`);
}

/** Scratch directories older than this belong to a process that died mid-import. */
const STALE_SCRATCH_MS = 24 * 3600_000;

/** A fresh scratch directory under the store (same filesystem: the result is renamed into place). */
export async function scratchDir(dir: string, what: string): Promise<string> {
  const base = join(dir, "tmp");
  await mkdir(base, { recursive: true });
  for (const name of await readdir(base)) {
    const old = join(base, name);
    const age = await stat(old).then((s) => Date.now() - s.mtimeMs, () => 0);
    if (age > STALE_SCRATCH_MS) await rm(old, { recursive: true, force: true });
  }
  const path = join(base, `${what}-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`);
  await mkdir(path);
  return path;
}

/** The catalog as it is on disk now (empty if there is none). */
export function readLocalCatalog(dir = imagesDir()): LocalImage[] {
  let text: string;
  try {
    text = readFileSync(join(dir, "catalog.json"), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const parsed = JSON.parse(text) as CatalogFile;
  if (parsed?.version !== 1 || !Array.isArray(parsed.images)) {
    throw new ImageImportError("catalog", `${join(dir, "catalog.json")} is not a torkbot-sandbox image catalog (version 1)`);
  }
  return parsed.images;
}

const LOCK_STALE_MS = 10 * 60_000;
const LOCK_WAIT_MS = 60_000;

/** Runs `change` on the catalog under the store's lock and writes the result atomically. */
export async function updateCatalog<T>(dir: string, change: (images: LocalImage[]) => T | Promise<T>): Promise<T> {
  mkdirSync(dir, { recursive: true });
  const lock = join(dir, "catalog.lock");
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const fh = await open(lock, "wx");
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const age = await stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
      // A writer that died mid-update leaves its lock; catalog writes take milliseconds.
      if (age > LOCK_STALE_MS) await unlink(lock).catch(() => {});
      else if (Date.now() > deadline) {
        throw new ImageImportError("catalog", `the image catalog in ${dir} stayed locked for ${LOCK_WAIT_MS / 1000} s; if no import is running, delete ${lock}`);
      } else await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    const images = readLocalCatalog(dir);
    const result = await change(images);
    const tmp = join(dir, `catalog.json.${process.pid}.tmp`);
    await writeFile(tmp, `${JSON.stringify({ version: 1, images } satisfies CatalogFile, null, 2)}\n`);
    await rename(tmp, join(dir, "catalog.json"));
    return result;
  } finally {
    await rm(lock, { force: true });
  }
}

/** Adds (or merges) an image and moves `name`, if given, onto it. */
export function addImage(images: LocalImage[], image: LocalImage, name: string | undefined): LocalImage {
  if (name) for (const other of images) other.names = other.names.filter((n) => n !== name);
  let entry = images.find((i) => i.sha256 === image.sha256);
  if (entry) {
    // Same bytes: keep one entry; the newest source and config describe it.
    entry.source = image.source;
    entry.config = image.config;
  } else {
    entry = { ...image, names: [] };
    images.push(entry);
  }
  if (name && !entry.names.includes(name)) entry.names.push(name);
  return entry;
}
