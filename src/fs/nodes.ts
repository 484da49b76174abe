/**
 * Node ids the guest kernel holds, mapped to paths in the JavaScript
 * filesystem. The table is path-based: a lookup of a path returns the same
 * id while the kernel remembers it; renames move every id under the old path;
 * unlink/rmdir and a rename over an existing name detach the id that pointed
 * there (its open handles keep working, path operations on it fail ENOENT).
 * Ids are forgotten when the kernel says so (FUSE FORGET), so the table stays
 * as large as the guest's inode cache, not the filesystem.
 */
import { fsError } from "./errno.js";

interface NodeRecord {
  path: string | null;
  refs: number;
}

export const ROOT_ID = 1;

export class NodeTable {
  readonly #byId = new Map<number, NodeRecord>([[ROOT_ID, { path: "/", refs: Infinity }]]);
  readonly #byPath = new Map<string, number>([["/", ROOT_ID]]);
  #next = ROOT_ID + 1;

  get size(): number {
    return this.#byId.size;
  }

  /** The current path of `id`; ENOENT when it was removed or is unknown. */
  path(id: number): string {
    const rec = this.#byId.get(id);
    if (!rec) throw fsError("ESTALE", `node ${id} is not known`);
    if (rec.path === null) throw fsError("ENOENT", `node ${id} was removed`);
    return rec.path;
  }

  /** Whether `id` is known but no longer has a path. */
  isDetached(id: number): boolean {
    return this.#byId.get(id)?.path === null;
  }

  /** The id for `path`, taking one kernel reference. */
  lookup(path: string): number {
    const known = this.#byPath.get(path);
    if (known !== undefined) {
      const rec = this.#byId.get(known)!;
      rec.refs += 1;
      return known;
    }
    const id = this.#next++;
    this.#byId.set(id, { path, refs: 1 });
    this.#byPath.set(path, id);
    return id;
  }

  forget(id: number, count: number): void {
    if (id === ROOT_ID) return;
    const rec = this.#byId.get(id);
    if (!rec) return;
    rec.refs -= count;
    if (rec.refs <= 0) {
      this.#byId.delete(id);
      if (rec.path !== null && this.#byPath.get(rec.path) === id) this.#byPath.delete(rec.path);
    }
  }

  /** `path` no longer names what its id named (unlink, rmdir, replaced by a rename). */
  detach(path: string): void {
    for (const p of this.#under(path)) {
      const id = this.#byPath.get(p)!;
      this.#byPath.delete(p);
      const rec = this.#byId.get(id);
      if (rec) rec.path = null;
    }
  }

  /** Moves `from` and everything below it to `to`, detaching what `to` named. */
  rename(from: string, to: string): void {
    if (from === to) return;
    this.detach(to);
    const moved = this.#under(from);
    for (const p of moved) {
      const id = this.#byPath.get(p)!;
      this.#byPath.delete(p);
      const next = to + p.slice(from.length);
      this.#byPath.set(next, id);
      const rec = this.#byId.get(id);
      if (rec) rec.path = next;
    }
  }

  #under(path: string): string[] {
    const prefix = path === "/" ? "/" : `${path}/`;
    const out: string[] = [];
    for (const p of this.#byPath.keys()) if (p === path || p.startsWith(prefix)) out.push(p);
    return out;
  }
}

/** `parent/name` for a single validated component. */
export function childPath(parent: string, name: string): string {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw fsError("EINVAL", `invalid entry name ${JSON.stringify(name)}`);
  }
  return parent === "/" ? `/${name}` : `${parent}/${name}`;
}
