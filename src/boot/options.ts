/** `boot(options)` checked and normalised before anything starts. */
import { SandboxConfigError, type BlockStoreError } from "../errors.js";
import type { VirtualMount } from "../fs/types.js";
import { isVirtualMount } from "../fs/virtual.js";
import { checkAbsolutePath, checkEnv, checkHostname, checkInteger } from "../validate.js";
import type { BootOptions, LaneEvent } from "../sandbox.js";

const MAX_MOUNTS = 16;
/** Guest paths the kernel and init own: a mount there would break every process. */
const RESERVED = ["/dev", "/proc", "/sys", "/run/sandbox"];

export interface BootPlan {
  hostname: string;
  /** Absent: the image's WorkingDir, else `/`. */
  cwd: string | undefined;
  env: Record<string, string>;
  mounts: { target: string; mount: VirtualMount }[];
  timeoutMs: number;
  signal: AbortSignal | undefined;
  onError: ((error: BlockStoreError) => void) | undefined;
  onEvent: ((event: LaneEvent) => void) | undefined;
  livenessTimeoutMs: number;
  /** `boot({ idleTimeoutMs })`: auto-hibernate after this long idle (undefined: never). */
  idleTimeoutMs: number | undefined;
  /** The explicit interception CA's certificate, checked (undefined: none given). */
  caCertPem: Promise<string | undefined> | undefined;
}

export function checkBootOptions(options: BootOptions): BootPlan {
  if (typeof options !== "object" || options === null) throw new SandboxConfigError("boot(options) needs an object");
  if (options.onError !== undefined && typeof options.onError !== "function") {
    throw new SandboxConfigError("boot({ onError }) must be a function");
  }
  if (options.onEvent !== undefined && typeof options.onEvent !== "function") {
    throw new SandboxConfigError("boot({ onEvent }) must be a function");
  }
  const ca = options.interceptCa;
  let caCertPem: Promise<string | undefined> | undefined;
  if (ca !== undefined) {
    caCertPem = ca instanceof Promise ? ca.then((c) => checkCaCertificate(c?.certPem)) : Promise.resolve(checkCaCertificate(ca.certPem));
    // Rejections surface through the handshake; this keeps an early failure from being "unhandled".
    caCertPem.catch(() => {});
  }
  return {
    hostname: checkHostname(options.hostname ?? "sandbox"),
    cwd: options.cwd === undefined ? undefined : checkAbsolutePath("cwd", options.cwd),
    env: checkEnv("env", options.env),
    mounts: checkMounts(options.mounts),
    timeoutMs: checkInteger("timeoutMs", options.timeoutMs ?? 120_000, 1, 3_600_000),
    livenessTimeoutMs: checkInteger("livenessTimeoutMs", options.livenessTimeoutMs ?? 30_000, 5_000, 3_600_000),
    idleTimeoutMs: options.idleTimeoutMs === undefined ? undefined : checkInteger("idleTimeoutMs", options.idleTimeoutMs, 1000, 7 * 86_400_000),
    signal: options.signal,
    onError: options.onError,
    onEvent: options.onEvent,
    caCertPem,
  };
}

/** Checks `boot({ mounts })` and orders it parents-first. */
function checkMounts(mounts: unknown): { target: string; mount: VirtualMount }[] {
  if (mounts === undefined) return [];
  if (typeof mounts !== "object" || mounts === null) {
    throw new SandboxConfigError('boot({ mounts }) must map guest paths to fs.virtual(...), e.g. { "/workspace": fs.virtual(fs.memory()) }');
  }
  const out: { target: string; mount: VirtualMount }[] = [];
  for (const [path, mount] of Object.entries(mounts)) {
    checkAbsolutePath(`mount target ${JSON.stringify(path)}`, path);
    const parts = path.split("/").filter((p) => p !== "");
    if (parts.length === 0 || parts.some((p) => p === "." || p === "..")) {
      throw new SandboxConfigError(`mount target ${JSON.stringify(path)} must be a directory below / without "." or ".." components`);
    }
    if (!isVirtualMount(mount)) {
      throw new SandboxConfigError(`mounts[${JSON.stringify(path)}] must come from fs.virtual(...)`);
    }
    const target = `/${parts.join("/")}`;
    if (out.some((m) => m.target === target)) throw new SandboxConfigError(`mount target ${target} is given twice`);
    const reserved = RESERVED.find((r) => target === r || target.startsWith(`${r}/`));
    if (reserved) {
      throw new SandboxConfigError(
        `mount target ${target} is inside ${reserved}, which the guest itself needs (${RESERVED.join(", ")} and / cannot be mount targets); mount under /workspace, /mnt, /tmp or /run instead`,
      );
    }
    out.push({ target, mount });
  }
  if (out.length > MAX_MOUNTS) throw new SandboxConfigError(`at most ${MAX_MOUNTS} mounts per boot, got ${out.length}`);
  const depth = (t: string) => t.split("/").length;
  return out.sort((a, b) => depth(a.target) - depth(b.target));
}

/** The guest gets exactly one public certificate, never key material. */
function checkCaCertificate(pem: unknown): string {
  if (
    typeof pem !== "string" ||
    pem.length > 64 * 1024 ||
    pem.includes("PRIVATE KEY") ||
    (pem.match(/-----BEGIN /g) ?? []).length !== 1 ||
    !pem.trim().startsWith("-----BEGIN CERTIFICATE-----")
  ) {
    throw new SandboxConfigError("interceptCa.certPem must be one PEM certificate (public part only; no private key)");
  }
  return pem;
}
