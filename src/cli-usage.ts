/** A command-line mistake: printed with the usage text, exit status 2. */
export class UsageError extends Error {}

/** Walks a command line: `next()` the next word, `value(flag)` the word a flag takes. */
export class ArgCursor {
  #argv: readonly string[];
  #at = 0;

  constructor(argv: readonly string[]) {
    this.#argv = argv;
  }

  /** The next word, or undefined at the end. */
  next(): string | undefined {
    return this.#argv[this.#at++];
  }

  /** The value of `flag` (the word after it); a usage error when there is none. */
  value(flag: string): string {
    const v = this.#argv[this.#at++];
    if (v === undefined) throw new UsageError(`${flag} needs a value`);
    return v;
  }

  /** The words not yet taken, from the last one `next()` returned when `includingCurrent`. */
  rest(includingCurrent = false): string[] {
    return this.#argv.slice(includingCurrent ? this.#at - 1 : this.#at);
  }
}
