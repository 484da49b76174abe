/**
 * The mounts a snapshot was taken with. Mounts are host objects and do not
 * travel in a snapshot: `snapshot.boot({ mounts })` gives them again, at the
 * same guest paths, and the restored guest's init mounts them where they were.
 * The checkpoint records those paths in `mounts.json` (saved with the rest).
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { SandboxSnapshotError } from "./errors.js";

const FILE = "mounts.json";

/** A mount as a snapshot records it: its guest path, in the order init mounted it. */
export interface SnapshotMount {
  target: string;
  readOnly: boolean;
}

export async function writeSnapshotMounts(dir: string, mounts: readonly SnapshotMount[]): Promise<void> {
  await writeFile(join(dir, FILE), JSON.stringify({ mounts }, null, 2));
}

/** The recorded mounts; none when the snapshot has no `mounts.json` (taken without mounts). */
export async function readSnapshotMounts(dir: string): Promise<SnapshotMount[]> {
  let text: string;
  try {
    text = await readFile(join(dir, FILE), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new SandboxSnapshotError(`cannot read the snapshot's ${FILE}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new SandboxSnapshotError(`the snapshot's ${FILE} is not JSON (corrupt snapshot)`);
  }
  const list = (parsed as { mounts?: unknown }).mounts;
  if (!Array.isArray(list) || list.length > 64 || !list.every((m) => typeof m?.target === "string" && typeof m?.readOnly === "boolean")) {
    throw new SandboxSnapshotError(`the snapshot's ${FILE} does not list mounts as { target, readOnly } (corrupt snapshot)`);
  }
  return list.map((m: SnapshotMount) => ({ target: m.target, readOnly: m.readOnly }));
}

/**
 * Puts a restore's mounts in the snapshot's order (init mounts device i at
 * recorded target i), or explains why they cannot be used.
 */
export function matchSnapshotMounts<M extends { target: string; mount: { readOnly: boolean } }>(recorded: readonly SnapshotMount[], given: readonly M[]): M[] {
  const want = recorded.map((m) => m.target);
  const have = given.map((m) => m.target);
  const missing = want.filter((t) => !have.includes(t));
  const extra = have.filter((t) => !want.includes(t));
  if (missing.length > 0 || extra.length > 0) {
    const listed = want.length > 0 ? want.join(", ") : "none";
    throw new SandboxSnapshotError(
      `the snapshot was taken with mounts at ${listed}; this boot ${missing.length > 0 ? `lacks ${missing.join(", ")}` : ""}${missing.length > 0 && extra.length > 0 ? " and " : ""}${extra.length > 0 ? `adds ${extra.join(", ")}` : ""}. ` +
        "Mounts are host objects that a snapshot does not hold: pass snapshot.boot({ mounts }) with exactly the guest paths it was taken with",
    );
  }
  return recorded.map((r) => {
    const m = given.find((g) => g.target === r.target)!;
    if (m.mount.readOnly !== r.readOnly) {
      throw new SandboxSnapshotError(`mount ${r.target} was ${r.readOnly ? "read-only" : "writable"} at the checkpoint; give it the same way (fs.virtual(..., { readOnly: ${r.readOnly} }))`);
    }
    return m;
  });
}
