/** `listImages()` and `removeImage()`: the catalog as a user sees it. */
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import { artifactPaths, readCatalog } from "../artifacts.js";
import { SandboxConfigError, SandboxError, UnknownImageError } from "../errors.js";
import { blobPath, imagesDir, readLocalCatalog, updateCatalog, type LocalImage } from "./store.js";

/** One row of `sandbox images`. */
export interface ImageInfo {
  /** Catalog name (`name:tag`), or `null` for an unnamed image (a build result, a replaced tag). */
  name: string | null;
  repository: string | null;
  tag: string | null;
  /** `sha256:…` of the image file. */
  digest: string;
  fileSizeBytes: number;
  virtualSizeBytes: number;
  /** `built-in`, `registry <ref>`, `oci-layout <path>`, `build from <base>`… */
  source: string;
  builtIn: boolean;
  path: string;
  createdAt?: string;
}

/** `alpine:3.23` → [alpine, 3.23]; `127.0.0.1:5000/x` → [127.0.0.1:5000/x, null]. */
export function splitName(name: string): [string, string | null] {
  const i = name.lastIndexOf(":");
  return i > name.lastIndexOf("/") && i > 0 ? [name.slice(0, i), name.slice(i + 1)] : [name, null];
}

function describeSource(s: LocalImage["source"]): string {
  switch (s.kind) {
    case "registry":
      return `registry ${s.reference}`;
    case "build":
      return `build from ${s.base} (${s.steps} steps)`;
    default:
      return `${s.kind} ${s.path}${s.reference ? `:${s.reference}` : ""}`;
  }
}

/** Every image `rootfs.builtIn` can boot: the platform package's, then this user's (`SANDBOX_IMAGES_DIR`). */
export function listImages(): ImageInfo[] {
  const out: ImageInfo[] = [];
  try {
    const a = artifactPaths();
    for (const e of readCatalog(a)) {
      const [repository, tag] = splitName(e.name);
      out.push({
        name: e.name,
        repository,
        tag,
        digest: `sha256:${e.sha256}`,
        fileSizeBytes: e.fileSizeBytes,
        virtualSizeBytes: e.virtualSizeBytes,
        source: "built-in",
        builtIn: true,
        path: `${a.imagesDir}/${e.file}`,
      });
    }
  } catch (err) {
    if (!(err instanceof SandboxError)) throw err;
  }
  const dir = imagesDir();
  for (const e of readLocalCatalog(dir)) {
    const base = {
      digest: `sha256:${e.sha256}`,
      fileSizeBytes: e.fileSizeBytes,
      virtualSizeBytes: e.virtualSizeBytes,
      source: describeSource(e.source),
      builtIn: false,
      path: blobPath(dir, e.sha256),
      createdAt: e.createdAt,
    };
    if (e.names.length === 0) out.push({ name: null, repository: null, tag: null, ...base });
    for (const n of e.names) {
      const [repository, tag] = splitName(n);
      out.push({ name: n, repository, tag, ...base });
    }
  }
  return out;
}

/**
 * Removes a name from the local catalog (`name:tag`), or a whole image
 * (`sha256:…`). An image file no name points at any more is deleted.
 * Built-in images cannot be removed.
 */
export async function removeImage(ref: string): Promise<{ removed: string[]; deletedDigest: string | null }> {
  if (typeof ref !== "string" || ref === "") throw new SandboxConfigError("removeImage(ref) needs an image name or sha256: digest");
  const dir = imagesDir();
  const result = await updateCatalog(dir, (images) => {
    const byDigest = /^sha256:[0-9a-f]{64}$/.test(ref);
    const entry = images.find((e) => (byDigest ? `sha256:${e.sha256}` === ref : e.names.includes(ref)));
    if (!entry) {
      let builtIn: string[] = [];
      try {
        builtIn = readCatalog(artifactPaths()).map((e) => e.name);
      } catch {
        // no platform package: nothing built in to mention
      }
      if (builtIn.includes(ref)) throw new SandboxConfigError(`${ref} is a built-in image (part of the platform package) and cannot be removed`);
      throw new UnknownImageError(ref, images.flatMap((e) => e.names));
    }
    const removed = byDigest ? entry.names.splice(0) : entry.names.splice(entry.names.indexOf(ref), 1);
    let deletedDigest: string | null = null;
    // An unnamed build result stays (it is the build cache) unless removed by digest.
    if (entry.names.length === 0 && (byDigest || entry.source.kind !== "build")) {
      images.splice(images.indexOf(entry), 1);
      deletedDigest = `sha256:${entry.sha256}`;
    }
    return { removed, deletedDigest };
  });
  if (result.deletedDigest) {
    const file = blobPath(dir, result.deletedDigest.slice(7));
    if (existsSync(file)) await rm(file, { force: true });
  }
  return result;
}
