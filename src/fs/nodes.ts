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
  /**
   * Paths → the paths directly below them that hold an id or have such paths
   * below (a tree over the table), so unlink, rmdir and rename touch only the
   * subtree they change, not every id the kernel holds (thousands after a
   * `git clone`). Holds no path nothing is under.
   */
  readonly #children = new Map<string, Set<string>>();
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
    this.#place(path, id);
    return id;
  }

  forget(id: number, count: number): void {
    if (id === ROOT_ID) return;
    const rec = this.#byId.get(id);
    if (!rec) return;
    rec.refs -= count;
    if (rec.refs <= 0) {
      this.#byId.delete(id);
      if (rec.path !== null && this.#byPath.get(rec.path) === id) this.#unplace(rec.path);
    }
  }

  /** `path` no longer names what its id named (unlink, rmdir, replaced by a rename). */
  detach(path: string): void {
    for (const p of this.#under(path)) {
      const id = this.#byPath.get(p)!;
      this.#unplace(p);
      const rec = this.#byId.get(id);
      if (rec) rec.path = null;
    }
  }

  /** Moves `from` and everything below it to `to`, detaching what `to` named. */
  rename(from: string, to: string): void {
    if (from === to) return;
    this.detach(to);
    const moved = this.#under(from).map((p) => [p, this.#byPath.get(p)!] as const);
    for (const [p] of moved) this.#unplace(p);
    for (const [p, id] of moved) {
      const next = to + p.slice(from.length);
      this.#place(next, id);
      const rec = this.#byId.get(id);
      if (rec) rec.path = next;
    }
  }

  /** `path` and every path below it that holds an id. */
  #under(path: string): string[] {
    const out: string[] = [];
    const walk = (p: string) => {
      if (this.#byPath.has(p)) out.push(p);
      for (const c of this.#children.get(p) ?? []) walk(c);
    };
    walk(path);
    return out;
  }

  #place(path: string, id: number): void {
    this.#byPath.set(path, id);
    for (let p = path; p !== "/"; ) {
      const parent = parentOf(p);
      let set = this.#children.get(parent);
      if (!set) this.#children.set(parent, (set = new Set()));
      if (set.has(p)) return; // the rest of the way up is linked already
      set.add(p);
      p = parent;
    }
  }

  #unplace(path: string): void {
    this.#byPath.delete(path);
    // Unlink each path that now has neither an id nor anything below it, upwards.
    for (let p = path; p !== "/" && !this.#byPath.has(p) && !this.#children.has(p); ) {
      const parent = parentOf(p);
      const set = this.#children.get(parent);
      set?.delete(p);
      if (set && set.size > 0) return;
      this.#children.delete(parent);
      p = parent;
    }
  }
}

function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

/** `parent/name` for a single validated component. */
export function childPath(parent: string, name: string): string {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw fsError("EINVAL", `invalid entry name ${JSON.stringify(name)}`);
  }
  return parent === "/" ? `/${name}` : `${parent}/${name}`;
}
