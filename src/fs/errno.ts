/** JavaScript error codes → Linux errno numbers, for answers to the guest. */

/** Linux x86-64/arm64 errno values (asm-generic). */
export const ERRNO: Readonly<Record<string, number>> = Object.freeze({
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EOVERFLOW: 75,
  EILSEQ: 84,
  ENOTSUP: 95,
  EOPNOTSUPP: 95,
  EDQUOT: 122,
  ESTALE: 116,
  ECANCELED: 125,
  ETIMEDOUT: 110,
});

/**
 * The errno the guest gets for a thrown value: its `code` when that names
 * a known errno (or its numeric `errno`, Node-style negative or positive),
 * else EIO. Unknown failures must never look like success.
 */
export function errnoOf(err: unknown): number {
  const code = property(err, "code");
  if (typeof code === "string" && Object.hasOwn(ERRNO, code)) return ERRNO[code]!;
  const errno = property(err, "errno");
  if (typeof errno === "number" && Number.isInteger(errno) && errno !== 0) {
    const n = Math.abs(errno);
    if (n < 4096) return n;
  }
  return ERRNO.EIO!;
}

/**
 * `value[key]` when `value` is an object, else undefined — and undefined too
 * when reading it throws (a getter that throws, a revoked Proxy): what a
 * filesystem throws is not trusted to be well-behaved.
 */
export function property(value: unknown, key: string): unknown {
  if ((typeof value !== "object" && typeof value !== "function") || value === null) return undefined;
  try {
    return (value as Record<string, unknown>)[key];
  } catch {
    return undefined;
  }
}

/** An Error with an errno `code`, as adapters throw them. */
export function fsError(code: keyof typeof ERRNO, message: string): Error & { code: string; errno: number } {
  const err = new Error(`${code}: ${message}`) as Error & { code: string; errno: number };
  err.code = code;
  err.errno = -ERRNO[code]!;
  return err;
}
