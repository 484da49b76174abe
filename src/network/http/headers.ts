/**
 * Mutable, order-preserving request headers for middleware. Like the fetch
 * `Headers` API (get/set/append/delete/has, iterable), but it keeps repeated
 * fields as separate lines instead of merging them, so what goes upstream is
 * what the guest sent plus the middleware's edits.
 */

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible ASCII, obs-text, space and tab; never CR, LF or NUL (no header injection).
const VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * Mutable, order-preserving request headers for middleware: like fetch's `Headers`
 * (get/set/append/delete/has, iterable), but repeated fields stay separate lines.
 */
export class HttpHeaders implements Iterable<[string, string]> {
  #lines: [string, string][] = [];

  constructor(init?: Iterable<readonly [string, string]>) {
    if (init) for (const [name, value] of init) this.append(name, value);
  }

  /** The values of `name` joined by `, ` (`; ` for cookie), or null. */
  get(name: string): string | null {
    const key = name.toLowerCase();
    const values = this.#lines.filter(([n]) => n.toLowerCase() === key).map(([, v]) => v);
    if (values.length === 0) return null;
    return values.join(key === "cookie" ? "; " : ", ");
  }

  /** Every value of `name`, one per header line. */
  getAll(name: string): string[] {
    const key = name.toLowerCase();
    return this.#lines.filter(([n]) => n.toLowerCase() === key).map(([, v]) => v);
  }

  /** Whether a field of this name (any case) is present. */
  has(name: string): boolean {
    const key = name.toLowerCase();
    return this.#lines.some(([n]) => n.toLowerCase() === key);
  }

  /** Replaces every line of `name` with one line (kept at the first line's position). */
  set(name: string, value: string): void {
    checkField(name, value);
    const key = name.toLowerCase();
    const at = this.#lines.findIndex(([n]) => n.toLowerCase() === key);
    this.delete(name);
    if (at < 0) this.#lines.push([name, value]);
    else this.#lines.splice(at, 0, [name, value]);
  }

  /** Adds a field line, keeping existing ones of the same name. */
  append(name: string, value: string): void {
    checkField(name, value);
    this.#lines.push([name, value]);
  }

  /** Removes every field line of this name. */
  delete(name: string): void {
    const key = name.toLowerCase();
    this.#lines = this.#lines.filter(([n]) => n.toLowerCase() !== key);
  }

  /** Header lines in order, names as sent. */
  *entries(): IterableIterator<[string, string]> {
    for (const [n, v] of this.#lines) yield [n, v];
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }

  /** Flat `[name, value, name, value…]`, the raw-headers shape undici and Node take. */
  toFlat(): string[] {
    return this.#lines.flat();
  }
}

function checkField(name: string, value: string): void {
  if (typeof name !== "string" || !TOKEN.test(name)) {
    throw new TypeError(`invalid HTTP header name ${JSON.stringify(name)}`);
  }
  if (typeof value !== "string" || !VALUE.test(value)) {
    throw new TypeError(`invalid value for HTTP header ${name}: it must not contain CR, LF, NUL or non-Latin-1 characters`);
  }
}
