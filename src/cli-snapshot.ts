/**
 * `sandbox snapshot save|ls|rm` and `sandbox run --from DIR`: snapshots from
 * the shell, kept in a directory store (`DirectorySnapshotStore`).
 */
import { readdir } from "node:fs/promises";
import { DirectorySnapshotStore, listSavedSnapshots } from "./snapshot-store.js";
import { defineSandbox } from "./sandbox.js";
import { rootfs } from "./rootfs.js";
import { SandboxSnapshotError } from "./errors.js";
import type { Lane } from "./lane.js";
import { ArgCursor, UsageError } from "./cli-usage.js";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";

export const SNAPSHOT_USAGE = `  sandbox snapshot save DIR [--id ID] [--image NAME] [--cpus N] [--memory MiB] [--hostname NAME] [-- SETUP COMMAND [ARGS...]]
      boots a sandbox on a throwaway copy of the image, runs SETUP (what it starts in the background keeps
      running), checkpoints it into directory store DIR as ID (default snap-<time>) and powers it off
  sandbox snapshot ls DIR          lists the complete snapshots in DIR
  sandbox snapshot rm DIR ID       deletes snapshot ID from DIR
  sandbox run --from DIR [--id ID] [--hostname NAME] [-- COMMAND [ARGS...]]
      resumes snapshot ID (default: the only one in DIR) as a new sandbox and runs COMMAND in it
      (sandbox shell --from DIR opens a shell in it)
`;

/** How the CLI booted the sandbox it snapshotted: `run --from` boots the same one. */
const CLI_FILE = "cli.json";

export interface SandboxShape {
  image: string;
  cpus: number;
  memory: number;
}

const sandboxOf = (s: SandboxShape) =>
  defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn(s.image) }), resources: { cpus: s.cpus, memoryMiB: s.memory } });

/** A new lane resumed from snapshot `id` (default: the only one) of directory store `dir`. */
export async function bootFromSnapshot(dir: string, id: string | undefined, hostname: string | undefined): Promise<Lane> {
  const store = new DirectorySnapshotStore(dir);
  const ids = await listSavedSnapshots(store);
  if (id === undefined) {
    if (ids.length !== 1) throw new UsageError(`${dir} holds ${ids.length === 0 ? "no snapshots" : `${ids.length} snapshots (${ids.join(", ")})`}; name one with --id`);
    id = ids[0]!;
  } else if (!ids.includes(id)) {
    throw new SandboxSnapshotError(`${dir} has no complete snapshot ${id}${ids.length > 0 ? ` (it has ${ids.join(", ")})` : ""}`);
  }
  const shape = await readShape(store, id);
  const snap = await sandboxOf(shape).loadSnapshot(store, id);
  try {
    return await snap.boot(hostname === undefined ? {} : { hostname });
  } finally {
    // The lane maps the RAM file it was booted from; its directory entry may go.
    await snap.delete();
  }
}

async function readShape(store: DirectorySnapshotStore, id: string): Promise<SandboxShape> {
  const chunks: Buffer[] = [];
  try {
    for await (const c of await store.get(`${id}/${CLI_FILE}`)) chunks.push(Buffer.from(c));
  } catch {
    throw new SandboxSnapshotError(`snapshot ${id} was not taken by \`sandbox snapshot save\` (it has no ${CLI_FILE}); boot it from JavaScript with the sandbox definition it was taken with`);
  }
  let v: Partial<SandboxShape> | null;
  try {
    v = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Partial<SandboxShape> | null;
  } catch {
    v = null;
  }
  if (typeof v?.image !== "string" || typeof v.cpus !== "number" || typeof v.memory !== "number") throw new SandboxSnapshotError(`snapshot ${id}'s ${CLI_FILE} is corrupt`);
  return { image: v.image, cpus: v.cpus, memory: v.memory };
}

async function save(argv: string[]): Promise<number> {
  const args = new ArgCursor(argv);
  const dir = args.next();
  if (dir === undefined || dir.startsWith("-")) throw new UsageError("snapshot save needs the store directory first");
  const shape: SandboxShape = { image: "debian:12", cpus: 1, memory: 512 };
  let id = `snap-${new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "")}`;
  let hostname = "sandbox";
  let setup: string[] = [];
  for (let a = args.next(); a !== undefined; a = args.next()) {
    if (a === "--") {
      setup = args.rest();
      break;
    }
    const value = () => args.value(a);
    if (a === "--id") id = value();
    else if (a === "--image") shape.image = value();
    else if (a === "--cpus") shape.cpus = Number(value());
    else if (a === "--memory") shape.memory = Number(value());
    else if (a === "--hostname") hostname = value();
    else if (a.startsWith("-")) throw new UsageError(`unknown option ${a}`);
    else {
      setup = args.rest(true);
      break;
    }
  }
  const t0 = performance.now();
  const lane = await sandboxOf(shape).boot({ hostname });
  try {
    if (setup.length > 0) {
      const r = await lane.exec(setup[0]!, setup.slice(1));
      process.stdout.write(r.stdout);
      process.stderr.write(r.stderr);
      if (r.exitCode !== 0) {
        process.stderr.write(`sandbox: the setup command exited with ${r.exitCode}; no snapshot taken\n`);
        return r.exitCode || 1;
      }
    }
    const snap = await lane.hibernate();
    try {
      await writeFile(join(snap.dir, CLI_FILE), JSON.stringify(shape));
      await snap.save(new DirectorySnapshotStore(dir), id);
    } finally {
      await snap.delete();
    }
    process.stderr.write(
      `[sandbox] snapshot ${id} saved in ${dir}: paused ${Math.round(snap.stats.pausedMs)} ms, ` +
        `RAM ${(snap.stats.ramBytes / 2 ** 20).toFixed(1)} MiB, disk ${(snap.stats.diskBytes / 2 ** 20).toFixed(1)} MiB, total ${Math.round(performance.now() - t0)} ms\n`,
    );
    process.stdout.write(`${id}\n`);
    return 0;
  } finally {
    await lane.close();
  }
}

export async function snapshotCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case "save":
      return save(rest);
    case "ls": {
      if (rest.length !== 1) throw new UsageError("snapshot ls takes the store directory");
      const ids = await listSavedSnapshots(new DirectorySnapshotStore(rest[0]!)).catch(async (err: unknown) => {
        // A store directory that does not exist yet holds nothing.
        if ((await readdir(rest[0]!).catch(() => undefined)) === undefined) return [];
        throw err;
      });
      for (const id of ids) process.stdout.write(`${id}\n`);
      return 0;
    }
    case "rm": {
      if (rest.length !== 2) throw new UsageError("snapshot rm takes the store directory and the snapshot id");
      const store = new DirectorySnapshotStore(rest[0]!);
      const names = await store.list(`${rest[1]}/`);
      if (names.length === 0) throw new SandboxSnapshotError(`${rest[0]} has no snapshot ${rest[1]}`);
      // The manifest first: a half-deleted snapshot is never listed as complete.
      for (const n of [...names.filter((n) => n.endsWith("/manifest.json")), ...names.filter((n) => !n.endsWith("/manifest.json"))]) await store.delete(n);
      return 0;
    }
    default:
      throw new UsageError(sub === undefined ? "snapshot needs save, ls or rm" : `unknown snapshot command ${sub}`);
  }
}
