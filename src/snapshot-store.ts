/**
 * Snapshots that outlive the process: `snapshot.save(store)` writes every
 * file of a snapshot to a `SandboxSnapshotStore` as a named byte stream, with
 * a manifest (sizes, sha256 of each file, what the snapshot needs to boot)
 * written last; `sandbox.loadSnapshot(store, id)` fetches and verifies it.
 * A snapshot without a manifest (a save that died half-way) is never listed.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readdir, rename, rm, stat, open } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { SandboxSnapshotError } from "./errors.js";

/**
 * Where snapshots are kept: named byte streams. Names are `<id>/<file>`
 * (`[A-Za-z0-9._-]` segments). `put` must make the stream visible under its
 * name only once it is complete; the manifest is put last.
 */
export interface SandboxSnapshotStore {
  /** Stores `data` under `name`, replacing what was there. */
  put(name: string, data: AsyncIterable<Uint8Array>): Promise<void>;
  /** The stream stored under `name`; rejects when there is none. */
  get(name: string): Promise<AsyncIterable<Uint8Array>>;
  /** Every name starting with `prefix`. */
  list(prefix: string): Promise<string[]>;
  /** Removes `name` (no error when it is absent). */
  delete(name: string): Promise<void>;
}

/** What a snapshot needs from the runtime that boots it. */
export interface SnapshotRequirements {
  /** The library version that took it (its helper and guest init come with it). */
  version: string;
  backend: string;
  imageSha256: string;
  kernelSha256: string;
  initrdSha256: string;
  memoryMiB: number;
  cpus: number;
  /** Whether the root disk was writable (its changes are in the snapshot) or read-only. */
  rootDisk: "writable" | "read-only";
}

/** `manifest.json` of a saved snapshot. */
export interface SnapshotManifest {
  format: 1;
  id: string;
  hostname: string;
  requires: SnapshotRequirements;
  files: Record<string, { size: number; sha256: string }>;
}

const NAME = /^[A-Za-z0-9._-]+$/;
export const MANIFEST = "manifest.json";

/** Checks one name segment (snapshot id or file). */
export function checkSegment(what: string, s: string): string {
  if (!NAME.test(s) || s === "." || s === "..") throw new SandboxSnapshotError(`${what} ${JSON.stringify(s)} must be [A-Za-z0-9._-]+`);
  return s;
}

/**
 * A `SandboxSnapshotStore` in a host directory: one file per name, written
 * to a temporary file and renamed into place.
 */
export class DirectorySnapshotStore implements SandboxSnapshotStore {
  /** The directory holding the snapshots. */
  readonly root: string;
  /** Uses (and creates on first write) `root`. */
  constructor(root: string) {
    this.root = resolve(root);
  }

  #path(name: string): string {
    const parts = name.split("/");
    parts.forEach((p) => checkSegment("snapshot store name", p));
    const p = join(this.root, ...parts);
    if (!p.startsWith(this.root + sep)) throw new SandboxSnapshotError(`snapshot store name ${JSON.stringify(name)} leaves the store`);
    return p;
  }

  /** Writes `data` to a temporary file, fsyncs it and renames it to `name`. */
  async put(name: string, data: AsyncIterable<Uint8Array>): Promise<void> {
    const path = this.#path(name);
    await mkdir(dirname(path), { recursive: true });
    const tmp = `${path}.partial-${process.pid}`;
    try {
      await pipeline(Readable.from(data), createWriteStream(tmp));
      const fh = await open(tmp, "r");
      await fh.sync().finally(() => fh.close());
      await rename(tmp, path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  /** The file's bytes, streamed. */
  async get(name: string): Promise<AsyncIterable<Uint8Array>> {
    const path = this.#path(name);
    await stat(path);
    return createReadStream(path);
  }

  /** Complete files under `prefix` (temporary ones are not listed). */
  async list(prefix: string): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: string, rel: string) => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const name = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(join(dir, e.name), name);
        else if (!e.name.includes(".partial-") && name.startsWith(prefix)) out.push(name);
      }
    };
    await walk(this.root, "");
    return out.sort();
  }

  /** Removes the file. */
  async delete(name: string): Promise<void> {
    await rm(this.#path(name), { force: true });
  }
}

/** Streams a local file while hashing it. */
async function* hashed(path: string, hash: ReturnType<typeof createHash>, count: { bytes: number }): AsyncIterable<Uint8Array> {
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    const b = chunk as Buffer;
    hash.update(b);
    count.bytes += b.length;
    yield b;
  }
}

/** Puts every file of the snapshot in `dir`, then its manifest. */
export async function saveSnapshotFiles(store: SandboxSnapshotStore, dir: string, id: string, hostname: string, requires: SnapshotRequirements): Promise<void> {
  checkSegment("snapshot id", id);
  const files: SnapshotManifest["files"] = {};
  for (const file of (await readdir(dir)).sort()) {
    if (file === MANIFEST) continue;
    const hash = createHash("sha256");
    const count = { bytes: 0 };
    await store.put(`${id}/${file}`, hashed(join(dir, file), hash, count));
    files[file] = { size: count.bytes, sha256: hash.digest("hex") };
  }
  const manifest: SnapshotManifest = { format: 1, id, hostname, requires, files };
  await store.put(`${id}/${MANIFEST}`, Readable.from([Buffer.from(JSON.stringify(manifest, null, 2))]));
}

/** Ids of the snapshots whose manifest was written (complete saves). */
export async function listSavedSnapshots(store: SandboxSnapshotStore): Promise<string[]> {
  return (await store.list("")).filter((n) => n.endsWith(`/${MANIFEST}`)).map((n) => n.slice(0, -MANIFEST.length - 1));
}

async function readAll(stream: AsyncIterable<Uint8Array>, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    n += c.length;
    if (n > limit) throw new SandboxSnapshotError(`the snapshot manifest is larger than ${limit} bytes`);
    parts.push(Buffer.from(c));
  }
  return Buffer.concat(parts);
}

/** Fetches snapshot `id` into `dir`, checking every file's size and sha256 against the manifest. */
export async function fetchSnapshotFiles(store: SandboxSnapshotStore, id: string, dir: string): Promise<SnapshotManifest> {
  checkSegment("snapshot id", id);
  let manifest: SnapshotManifest;
  try {
    manifest = JSON.parse((await readAll(await store.get(`${id}/${MANIFEST}`), 1 << 20)).toString("utf8")) as SnapshotManifest;
  } catch (err) {
    throw new SandboxSnapshotError(`snapshot ${id} has no readable manifest (never saved, or its save did not finish): ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (manifest?.format !== 1 || typeof manifest.files !== "object" || manifest.files === null || typeof manifest.requires !== "object") {
    throw new SandboxSnapshotError(`snapshot ${id}'s manifest is not a format-1 snapshot manifest`);
  }
  for (const [file, want] of Object.entries(manifest.files)) {
    checkSegment("snapshot file", file);
    const hash = createHash("sha256");
    let size = 0;
    const out = createWriteStream(join(dir, file));
    try {
      await pipeline(
        Readable.from(await store.get(`${id}/${file}`)),
        async function* (source: AsyncIterable<Buffer>) {
          for await (const c of source) {
            size += c.length;
            if (size > want.size) throw new SandboxSnapshotError(`snapshot ${id}: ${file} is longer than the ${want.size} bytes its manifest says`);
            hash.update(c);
            yield c;
          }
        },
        out,
      );
    } catch (err) {
      if (err instanceof SandboxSnapshotError) throw err;
      throw new SandboxSnapshotError(`snapshot ${id}: cannot read ${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    if (size !== want.size) throw new SandboxSnapshotError(`snapshot ${id}: ${file} has ${size} bytes, its manifest says ${want.size} (truncated?)`);
    const got = hash.digest("hex");
    if (got !== want.sha256) throw new SandboxSnapshotError(`snapshot ${id}: ${file} is corrupt (sha256 ${got}, its manifest says ${want.sha256})`);
  }
  return manifest;
}

const digests = new Map<string, Promise<string>>();
/** sha256 of a file, cached by path, size and mtime (kernels and initramfs are re-hashed only when they change). */
export async function fileSha256(path: string): Promise<string> {
  const st = await stat(path);
  const key = `${path}:${st.size}:${st.mtimeMs}`;
  let d = digests.get(key);
  if (!d) {
    d = (async () => {
      const h = createHash("sha256");
      for await (const c of createReadStream(path)) h.update(c as Buffer);
      return h.digest("hex");
    })();
    digests.set(key, d);
  }
  return d;
}

/** Why a runtime with `have` cannot boot a snapshot that requires `want`, or undefined. */
export function requirementMismatch(want: SnapshotRequirements, have: SnapshotRequirements): string | undefined {
  for (const k of Object.keys(have) as (keyof SnapshotRequirements)[]) {
    if (want[k] !== have[k]) return `it was taken with ${k} ${JSON.stringify(want[k])}, this runtime has ${JSON.stringify(have[k])}`;
  }
  return undefined;
}
