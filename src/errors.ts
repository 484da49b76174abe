/**
 * Every error the library throws on purpose is a SandboxError with a stable
 * `code`, and a message that says what was wrong and how to fix it.
 */
export class SandboxError extends Error {
  /** Stable machine-readable code (`ERR_SANDBOX_…`), one per error class. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A definition, boot option or call argument is invalid. */
export class SandboxConfigError extends SandboxError {
  constructor(message: string) {
    super("ERR_SANDBOX_CONFIG", message);
  }
}

/** `rootfs.builtIn(name)` names no image in the built-in or local catalog. */
export class UnknownImageError extends SandboxError {
  /** The name asked for. */
  readonly image: string;
  /** Every name `rootfs.builtIn` accepts right now (built-in first, then imported/built). */
  readonly available: readonly string[];
  constructor(image: string, available: readonly string[], options: { importHint?: string } = {}) {
    const hint = options.importHint ?? image;
    super(
      "ERR_SANDBOX_UNKNOWN_IMAGE",
      `no rootfs image named ${JSON.stringify(image)}; installed: ${available.join(", ") || "(none)"}. ` +
        `Import it with \`sandbox images import ${hint} --name ${image}\` ` +
        `(API: importImage(${JSON.stringify(hint)}, { name: ${JSON.stringify(image)} })), or list images with \`sandbox images\``,
    );
    this.image = image;
    this.available = available;
  }
}

/**
 * Image bytes do not hash to the digest that pins them: a `rootfs.image`
 * file that changed, a `name@sha256:…` reference to an image that is now
 * something else, or an OCI blob that was corrupted or tampered with.
 */
export class ImageDigestMismatchError extends SandboxError {
  /** What was checked (a file path, a blob, an image name). */
  readonly subject: string;
  /** `sha256:…` that was expected. */
  readonly expected: string;
  /** `sha256:…` the bytes actually have. */
  readonly actual: string;
  constructor(subject: string, expected: string, actual: string, fix?: string) {
    super(
      "ERR_SANDBOX_IMAGE_DIGEST",
      `${subject} has digest ${actual}, but ${expected} was expected; ` +
        (fix ?? "the bytes changed since the digest was recorded: use the right file, or pin the new digest if the change is intended"),
    );
    this.subject = subject;
    this.expected = expected;
    this.actual = actual;
  }
}

/** A registry refused the credentials, or needs some and none were given. */
export class RegistryAuthError extends SandboxError {
  constructor(message: string) {
    super("ERR_SANDBOX_REGISTRY_AUTH", message);
  }
}

/** Why an image import failed (mirrors sandbox-image's error kinds). */
export type ImageImportFailure =
  | "not-found"
  | "platform"
  | "unsupported"
  | "invalid-source"
  | "network"
  | "tool"
  | "io"
  | "request"
  | "catalog";

/** `importImage` failed for a reason other than authentication or a digest mismatch. */
export class ImageImportError extends SandboxError {
  /** The failure class, for programmatic handling (`network` is worth retrying, `not-found` is not). */
  readonly reason: ImageImportFailure;
  constructor(reason: ImageImportFailure, message: string, options?: { cause?: unknown }) {
    super("ERR_SANDBOX_IMAGE_IMPORT", message, options);
    this.reason = reason;
  }
}

/** A `rootfs.build` step failed; `step` is its index, `output` the tail of what it printed. */
export class ImageBuildError extends SandboxError {
  /** Index of the failing step in `steps`. */
  readonly step: number;
  /** The step's exit code, when it ran to completion (absent for copy steps and timeouts). */
  readonly exitCode: number | undefined;
  /** The tail of the step's stdout and stderr. */
  readonly output: string;
  constructor(step: number, message: string, details: { exitCode?: number; output?: string; cause?: unknown } = {}) {
    super("ERR_SANDBOX_IMAGE_BUILD", message, { cause: details.cause });
    this.step = step;
    this.exitCode = details.exitCode;
    this.output = details.output ?? "";
  }
}

/** Native artifacts (helper, kernel, images) are missing or unusable. */
export class SandboxArtifactError extends SandboxError {
  constructor(message: string) {
    super("ERR_SANDBOX_ARTIFACTS", message);
  }
}

/** The VM did not come up. `guestMessage` holds the guest init's own words. */
export class SandboxBootError extends SandboxError {
  /** The guest boot step that failed (`root`, `mounts`, `cwd`…), when init reported it. */
  readonly stage: string | undefined;
  /** Init's own words about the failure. */
  readonly guestMessage: string | undefined;
  /** The last lines of the guest console (kernel messages), when the VM exited during boot. */
  readonly consoleTail: string | undefined;
  constructor(message: string, details: { stage?: string; guestMessage?: string; consoleTail?: string } = {}) {
    super("ERR_SANDBOX_BOOT", message);
    this.stage = details.stage;
    this.guestMessage = details.guestMessage;
    this.consoleTail = details.consoleTail;
  }
}

/** The lane was closed (or its VM ended) before or during the call. */
export class LaneClosedError extends SandboxError {
  constructor(message = "the sandbox lane is closed; boot a new lane to run more commands") {
    super("ERR_SANDBOX_CLOSED", message);
  }
}

/** The VM or its helper ended unexpectedly. */
export class SandboxCrashedError extends SandboxError {
  /** The last lines the VMM and the guest console printed (a kernel panic lands here). */
  readonly consoleTail: string | undefined;
  /** The helper's last diagnostics before the end (newest last), for the why. */
  readonly diagnostics: readonly string[];
  constructor(message: string, consoleTail?: string, options: { code?: string; diagnostics?: readonly string[] } = {}) {
    super(options.code ?? "ERR_SANDBOX_CRASHED", message);
    this.consoleTail = consoleTail;
    this.diagnostics = options.diagnostics ?? [];
  }
}

/**
 * The guest stopped answering: no frame from it (not even to a liveness ping)
 * within `boot({ livenessTimeoutMs })`, or a command's timeout passed with no
 * word from the guest. The lane was ended (VM and helper killed); its pending
 * calls reject with this error.
 */
export class SandboxUnresponsiveError extends SandboxCrashedError {
  constructor(message: string, diagnostics?: readonly string[]) {
    super(message, undefined, { code: "ERR_SANDBOX_UNRESPONSIVE", diagnostics });
  }
}

/** Who broke the wire contract: the guest (a hostile or broken guest) or the helper process. */
export type ProtocolOffender = "guest" | "helper";

/**
 * A frame broke the wire contract, so the lane was ended: its VM and helper
 * are gone, and every pending call of the lane rejects with this error. Other
 * lanes are not affected. A guest with root can write frames to the control
 * port, so this is what a hostile guest gets; `offender` says who sent the
 * frame, `frameKind` and `channel` which frame it was.
 */
export class SandboxProtocolError extends SandboxCrashedError {
  /** Who sent the offending frame. */
  readonly offender: ProtocolOffender;
  /** Kind name of the offending frame ("Exit"), or `0x…` for a byte no kind has; undefined for broken framing. */
  readonly frameKind: string | undefined;
  /** The offending frame's channel (a process channel for process frames). */
  readonly channel: number | undefined;
  constructor(
    message: string,
    details: { offender: ProtocolOffender; frameKind?: string; channel?: number; consoleTail?: string; diagnostics?: readonly string[] },
  ) {
    super(message, details.consoleTail, { code: "ERR_SANDBOX_PROTOCOL", diagnostics: details.diagnostics });
    this.offender = details.offender;
    this.frameKind = details.frameKind;
    this.channel = details.channel;
  }
}

/** The guest could not start the process (ENOENT, EACCES, bad cwd…). */
export class ProcessStartError extends SandboxError {
  /** The guest's errno name: `ENOENT` (no such command or cwd), `EACCES`, `ENOEXEC`… */
  readonly errno: string;
  constructor(errno: string, message: string) {
    super("ERR_SANDBOX_PROCESS_START", message);
    this.errno = errno;
  }
}

/**
 * A `lane.fs` call failed in the guest. Unlike other SandboxErrors, `code` is
 * the guest kernel's errno name (`ENOENT`, `EROFS`, `ENOTDIR`, `EEXIST`,
 * `EISDIR`, `ENOTEMPTY`, `EACCES`…), as Node's own fs errors have it, so
 * `err.code === "ENOENT"` works the same on host and guest files.
 */
export class SandboxFileSystemError extends SandboxError {
  /** The errno number in the guest (Linux numbering). */
  readonly errno: number;
  /** The `lane.fs` operation: `readFile`, `writeFile`, `stat`, `readdir`, `mkdir`, `rm`… */
  readonly syscall: string;
  /** The guest path the operation was given. */
  readonly path: string;
  /** The second path of `rename` (destination) and `symlink` (the link's target). */
  readonly dest: string | undefined;
  constructor(code: string, errno: number, syscall: string, path: string, dest?: string) {
    super(code, fileErrorMessage(code, syscall, path, dest));
    this.errno = errno;
    this.syscall = syscall;
    this.path = path;
    this.dest = dest;
  }
}

const FILE_ERROR_HINTS: Record<string, string> = {
  ENOENT: "no such file or directory",
  EROFS: "the guest filesystem is read-only here: write under /tmp, /run, /var/tmp, a writable mount, or boot with rootfs.ephemeral() or rootfs.cow()",
  ENOTDIR: "a component of the path is not a directory",
  EEXIST: "the path already exists",
  EISDIR: "the path is a directory (rm needs { recursive: true })",
  ENOTEMPTY: "the directory is not empty",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  ELOOP: "too many levels of symbolic links",
  ENOSPC: "no space left on the guest filesystem",
  EXDEV: "rename across filesystems is not possible",
  EINVAL: "invalid argument",
};

function fileErrorMessage(code: string, syscall: string, path: string, dest: string | undefined): string {
  const hint = FILE_ERROR_HINTS[code] ?? "the guest kernel refused the operation";
  const hint2 = code === "ENOENT" && syscall === "writeFile" ? "; pass { createParents: true } to make missing directories" : "";
  return `${syscall} ${JSON.stringify(path)}${dest === undefined ? "" : ` → ${JSON.stringify(dest)}`} failed in the guest: ${code} (${hint}${hint2})`;
}

/** Buffered output passed `maxOutputBytes`; the process group was killed. */
export class OutputLimitError extends SandboxError {
  /** The `maxOutputBytes` that was passed. */
  readonly limit: number;
  constructor(limit: number) {
    super(
      "ERR_SANDBOX_OUTPUT_LIMIT",
      `process output exceeded maxOutputBytes (${limit}); the process group was killed. Raise maxOutputBytes or use spawn() to stream output`,
    );
    this.limit = limit;
  }
}

/** The store call that failed; `request`: the helper's request itself could not be read. */
export type BlockStoreOp = "list" | "read" | "write" | "flush" | "request";

/**
 * A `rootfs.cow` block store call failed (threw, rejected, answered badly or
 * missed its deadline). The guest saw that call as an I/O error; on the host
 * it is passed to `boot({ onError })` as it happens, fails `boot()` when it
 * happened before the guest was ready, and makes `lane.close()` reject, since
 * the store may not hold everything the guest wrote.
 */
export class BlockStoreError extends SandboxError {
  /** The store call that failed. */
  readonly op: BlockStoreOp;
  /** The call ran past the store deadline (`rootfs.cow({ storeTimeoutMs })`). */
  readonly timedOut: boolean;
  /** Failed store calls during the run so far, this one included (set when reported). */
  failures = 1;
  constructor(op: BlockStoreOp, message: string, options: { cause?: unknown; timedOut?: boolean; code?: string } = {}) {
    super(options.code ?? "ERR_SANDBOX_BLOCK_STORE", message, { cause: options.cause });
    this.op = op;
    this.timedOut = options.timedOut ?? false;
  }
}

/**
 * The block store holds blocks of a different base image than the one being
 * booted. Throw it from a store (typically from `list()`, the first call of a
 * boot) when `context.base` differs from the base the store's blocks belong
 * to: `boot()` then fails with it before any VM starts.
 */
export class BlockStoreBaseMismatchError extends BlockStoreError {
  /** The base image (sha256) the store's blocks were written against. */
  readonly storedBase: string;
  /** The base image (sha256) of this boot, `context.base`. */
  readonly requestedBase: string;
  constructor(storedBase: string, requestedBase: string, op: BlockStoreOp = "list") {
    super(
      op,
      `the block store holds blocks of base image sha256:${storedBase}, but this boot uses base image sha256:${requestedBase}; ` +
        "boot with the base the store was written for, or use an empty store (or another namespace) for this base",
      { code: "ERR_SANDBOX_BLOCK_STORE_BASE" },
    );
    this.storedBase = storedBase;
    this.requestedBase = requestedBase;
  }
}

/** The standard abort rejection, as fetch and Node streams use it. */
export function abortError(signal: AbortSignal): Error {
  const err = new DOMException("the operation was aborted", "AbortError");
  if (signal.reason !== undefined) (err as { cause?: unknown }).cause = signal.reason;
  return err;
}

/** `lane.forwardPort` failed: the host port is taken, the lane has no network, or the forward limit is reached. */
export class PortForwardError extends SandboxError {
  constructor(message: string) {
    super("ERR_SANDBOX_PORT_FORWARD", message);
  }
}

/** A checkpoint could not be taken, or a snapshot cannot be restored here (see the message). */
export class SandboxSnapshotError extends SandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("ERR_SANDBOX_SNAPSHOT", message, options);
  }
}

/**
 * Words for anything that was thrown — an Error, `null`, a string, a
 * null-prototype object, an object whose getters throw — that never throws
 * itself, so no failure handler can fail in turn.
 */
export function describeThrown(value: unknown): string {
  try {
    if (value instanceof Error) {
      const message = value.message;
      return typeof message === "string" && message !== "" ? message : value.name || "an Error without a message";
    }
    if (typeof value === "string") return value;
    if (value === null || value === undefined) return String(value);
    if (typeof value === "object") {
      const message = (value as { message?: unknown }).message;
      if (typeof message === "string") return message;
      return Object.prototype.toString.call(value);
    }
    return String(value);
  } catch {
    return "a thrown value that cannot be described";
  }
}

/** A value for a message, without calling anything on it that could throw. */
export function describeValue(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "bigint") return `${v}n`;
  if (v === null || (typeof v !== "object" && typeof v !== "function")) return String(v);
  return Object.prototype.toString.call(v);
}
