/** `defineSandbox` and boot: from a description to a running lane. */
import { join } from "node:path";
import { readCatalog, requireBackendArtifacts, resolveArtifacts, type Artifacts, type ImageEntry } from "./artifacts.js";
import { chooseBackend, findQemu, type BackendChoice, type BackendName } from "./backend.js";
import { BlockStoreError, SandboxBootError, SandboxConfigError, UnknownImageError } from "./errors.js";
import { HelperConnection } from "./helper-connection.js";
import { Lane } from "./lane.js";
import { loadNative } from "./native.js";
import { Kind, type Frame } from "./protocol/frames.js";
import { COW_BLOCK_SIZE, isRootfsSpec, rootfs as rootfsApi, type RootfsSpec } from "./rootfs.js";
import { BlockStoreFailures, checkListed, serveBlockStore, withStoreDeadline, type SandboxBlockStore } from "./rootfs/block-store.js";
import { serveFileSystems } from "./fs/server.js";
import type { VirtualMount } from "./fs/types.js";
import { isVirtualMount } from "./fs/virtual.js";
import { checkAbsolutePath, checkEnv, checkHostname, checkInteger } from "./validate.js";
import { helperDeadlineMs, NetworkService, SANDBOX_RESOLVER } from "./network/bridge.js";
import { interceptHandler, InterceptServer } from "./network/intercept-server.js";
import { isNetworkPolicy, type NetworkPolicy } from "./network/policy.js";
import { startInterception } from "./network/http/interception.js";
import { helperSigningProblem } from "./setup-macos.js";

export interface SandboxResources {
  /** Virtual CPUs (1-64). Default 1. */
  cpus?: number;
  /** Guest memory in MiB (128-1048576). Default 512. */
  memoryMiB?: number;
  /** VMM backend. Default `auto`: krun where hardware virtualization works, else qemu. */
  backend?: BackendName;
}

export interface SandboxDefinition {
  /** Root filesystem. Default `rootfs.builtIn("debian:12")`. */
  rootfs?: RootfsSpec;
  resources?: SandboxResources;
  /**
   * Egress policy (`network.policy(...)`). Absent: the guest has no network device
   * at all — no egress, no DNS.
   */
  network?: NetworkPolicy;
}

export interface BootOptions {
  /** Kernel hostname. Default `sandbox`. */
  hostname?: string;
  /** Default working directory for processes; must exist in the guest. Default `/`. */
  cwd?: string;
  /** Environment every process of this lane starts with. */
  env?: Record<string, string>;
  /** How long to wait for the guest to be ready. Default 120000 (software emulation is slow). */
  timeoutMs?: number;
  /** Aborts the boot; the VM is torn down and the promise rejects with an AbortError. */
  signal?: AbortSignal;
  /**
   * Called for failures the lane survives, as they happen: today a
   * `rootfs.cow` block store call that failed or missed its deadline (the
   * guest saw an I/O error). Such a failure also makes `lane.close()` reject.
   * Exceptions thrown by the callback are ignored.
   */
  onError?: (error: BlockStoreError) => void;
  /**
   * @internal The HTTP interception CA of this boot (`createSandboxCa()`); only its
   * public certificate goes to the guest. The network policy wiring sets it. A
   * promise is awaited only when the guest asks for its configuration, so key
   * generation overlaps the VM's boot.
   */
  interceptCa?: { readonly certPem: string } | Promise<{ readonly certPem: string }>;
  /**
   * Guest path → `fs.virtual(...)` filesystem, mounted before `cwd` is checked
   * (parents before children). Missing targets are created on init-owned tmpfs
   * (/run, /tmp…), inside an earlier mount, or on an ephemeral root; on a
   * built-in or durable root the target must exist (built-in images have /workspace and /mnt).
   */
  mounts?: Record<string, VirtualMount>;
}

export interface Sandbox {
  readonly definition: Readonly<Required<Pick<SandboxDefinition, "rootfs">>> & { resources: Required<SandboxResources>; network?: NetworkPolicy };
  boot(options?: BootOptions): Promise<Lane>;
}

export function defineSandbox(definition: SandboxDefinition = {}): Sandbox {
  if (typeof definition !== "object" || definition === null) {
    throw new SandboxConfigError("defineSandbox(definition) needs an object");
  }
  const root = definition.rootfs ?? rootfsApi.builtIn("debian:12");
  if (!isRootfsSpec(root)) {
    throw new SandboxConfigError("definition.rootfs must come from rootfs.builtIn(...), rootfs.ephemeral(...) or rootfs.cow(...)");
  }
  const r = definition.resources ?? {};
  const resources: Required<SandboxResources> = {
    cpus: checkInteger("resources.cpus", r.cpus ?? 1, 1, 64),
    memoryMiB: checkInteger("resources.memoryMiB", r.memoryMiB ?? 512, 128, 1 << 20),
    backend: r.backend ?? "auto",
  };
  if (!["auto", "qemu", "krun"].includes(resources.backend)) {
    throw new SandboxConfigError(`resources.backend must be "auto", "qemu" or "krun", got ${JSON.stringify(resources.backend)}`);
  }
  if (definition.network !== undefined && !isNetworkPolicy(definition.network)) {
    throw new SandboxConfigError("definition.network must come from network.policy(...)");
  }
  const frozen = Object.freeze({ rootfs: root, resources: Object.freeze(resources), network: definition.network });
  return {
    definition: frozen,
    boot: (options) => bootLane(frozen.rootfs, frozen.resources, options ?? {}, frozen.network),
  };
}

/** Lists the installed built-in images. */
export function listBuiltInImages(): ImageEntry[] {
  return readCatalog();
}

export function findImage(name: string): ImageEntry {
  const catalog = readCatalog();
  const hit = catalog.find((i) => i.name === name);
  if (!hit) throw new UnknownImageError(name, catalog.map((i) => i.name));
  return hit;
}

/** The helper's Launch request for one boot (exported for benchmarks). */
export function launchSpec(
  artifacts: Artifacts,
  image: ImageEntry,
  resources: Required<SandboxResources>,
  choice: BackendChoice,
  root: RootfsSpec = rootfsApi.builtIn(image.name),
  mountCount = 0,
) {
  const disk =
    root.kind === "builtIn"
      ? { path: join(artifacts.imagesDir, image.file), format: image.format, readOnly: true }
      : {
          path: join(artifacts.imagesDir, image.file),
          format: image.format,
          readOnly: false,
          cow: {
            mode: root.kind === "cow" ? "persistent" : "ephemeral",
            maxDirtyBytes: root.maxDirtyBytes,
            blockSize: COW_BLOCK_SIZE,
            // The helper's own deadline trails Node's, so Node's error (with the store's words) is what ends the call.
            storeTimeoutMs: root.kind === "cow" ? root.storeTimeoutMs + 1000 : undefined,
          },
        };
  return {
    backend: choice.backend,
    cpus: resources.cpus,
    memoryMib: resources.memoryMiB,
    kernel: artifacts.qemuKernel,
    initrd: artifacts.qemuInitrd,
    krunfw: artifacts.krunfw,
    initRoot: artifacts.krunInitRoot,
    cmdline: [] as string[],
    disks: [disk],
    qemu: choice.backend === "qemu" ? findQemu() : undefined,
    accel: choice.accel,
    mounts: Array.from({ length: mountCount }, (_, i) => ({ tag: mountTag(i) })),
  };
}

/** virtio-fs tag of mount number `i`. */
function mountTag(i: number): string {
  return `sandbox-fs-${i}`;
}

const MAX_MOUNTS = 16;

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
    out.push({ target, mount });
  }
  if (out.length > MAX_MOUNTS) throw new SandboxConfigError(`at most ${MAX_MOUNTS} mounts per boot, got ${out.length}`);
  const depth = (t: string) => t.split("/").length;
  return out.sort((a, b) => depth(a.target) - depth(b.target));
}

/** Block stores attached to a running lane of this process (a store serves one lane at a time). */
const storesInUse = new WeakSet<SandboxBlockStore>();

/** How long `close()` waits for a persistent root to be written back before killing the VM. */
const COW_SHUTDOWN_GRACE_MS = 120_000;

/** Benchmark-only overrides of a boot (not part of the public API): e.g. a floor VM whose root disk QEMU opens itself. */
export interface BootInternals {
  transformLaunch?: (launch: ReturnType<typeof launchSpec>) => ReturnType<typeof launchSpec>;
  writableRoot?: boolean;
}

/** Helper path → why macOS would refuse it Hypervisor.framework (checked once per helper). */
const signingChecked = new Map<string, string | undefined>();

/** The guest's side of the network (sandbox-net's defaults). */
const GUEST_NET = { address: "10.0.2.15", prefixLen: 24, gateway: "10.0.2.2", nameserver: SANDBOX_RESOLVER, mtu: 1500 };

export async function bootLane(
  root: RootfsSpec,
  resources: Required<SandboxResources>,
  options: BootOptions,
  policy: NetworkPolicy | undefined,
  internals: BootInternals = {},
): Promise<Lane> {
  const started = performance.now();
  const hostname = checkHostname(options.hostname ?? "sandbox");
  const cwd = checkAbsolutePath("cwd", options.cwd ?? "/");
  // Secret placeholders first, so an explicit env entry can still override one.
  const env = { ...policy?.secrets?.env, ...checkEnv("env", options.env) };
  const mounts = checkMounts(options.mounts);
  const timeoutMs = checkInteger("timeoutMs", options.timeoutMs ?? 120_000, 1, 3_600_000);
  const ca = options.interceptCa;
  const explicitCa: Promise<string | undefined> =
    ca === undefined
      ? Promise.resolve(undefined)
      : ca instanceof Promise
        ? ca.then((c) => checkCaCertificate(c?.certPem))
        : Promise.resolve(checkCaCertificate(ca.certPem)); // a bad certificate fails before anything boots
  // Rejections surface through the handshake; this keeps an early failure from being "unhandled".
  explicitCa.catch(() => {});
  options.signal?.throwIfAborted();

  const artifacts = resolveArtifacts();
  const image = findImage(root.kind === "builtIn" ? root.name : root.base.name);
  const choice = chooseBackend(resources.backend, artifacts.helper);
  requireBackendArtifacts(artifacts, choice.backend);
  if (choice.backend === "krun") {
    // macOS: an unsigned helper would die inside Hypervisor.framework with a bare error.
    if (!signingChecked.has(artifacts.helper)) {
      signingChecked.set(artifacts.helper, helperSigningProblem({ platform: process.platform, helper: artifacts.helper }));
    }
    const problem = signingChecked.get(artifacts.helper);
    if (problem) {
      signingChecked.delete(artifacts.helper); // checked again after the user ran setup-macos
      throw new SandboxConfigError(problem);
    }
  }
  const native = loadNative(artifacts);
  const store = root.kind === "cow" ? root.writable : undefined;
  if (options.onError !== undefined && typeof options.onError !== "function") {
    throw new SandboxConfigError("boot({ onError }) must be a function");
  }
  const failures = new BlockStoreFailures(options.onError);
  let listed: number[] | undefined;
  if (store && root.kind === "cow") {
    if (storesInUse.has(store)) {
      throw new SandboxConfigError(
        "this writable block store is already attached to a running sandbox lane; a rootfs.cow store serves one lane at a time (close the other lane or use another store)",
      );
    }
    storesInUse.add(store);
    // The store's first call, made before any VM starts: a store that rejects this
    // base (BlockStoreBaseMismatchError) or cannot answer fails boot cheaply and clearly.
    try {
      listed = await withStoreDeadline("list", "list()", root.storeTimeoutMs, async () => checkListed(await store.list({ base: image.sha256 })));
    } catch (err) {
      storesInUse.delete(store);
      throw err;
    }
  }
  let conn: HelperConnection;
  try {
    options.signal?.throwIfAborted();
    conn = new HelperConnection(native, artifacts.helper);
  } catch (err) {
    if (store) storesInUse.delete(store);
    throw err;
  }
  if (store && root.kind === "cow") {
    conn.once("exit", () => storesInUse.delete(store));
    serveBlockStore(conn, store, { base: image.sha256 }, { timeoutMs: root.storeTimeoutMs, failures, listed });
  }

  if (mounts.length > 0) serveFileSystems(conn, mounts.map((m) => m.mount.fs));

  let intercept: InterceptServer | undefined;
  let net: NetworkService | undefined;
  // With a policy, HTTP interception is ready for matchHttp(...).accept(middleware):
  // the CA is generated now (overlapping the VM's boot) and its certificate goes to init.
  const interception = policy
    ? startInterception({ upstreamCa: policy.upstreamCa, onEvent: (e) => net?.emit(e) })
    : undefined;
  const caCertPem: Promise<string | undefined> =
    options.interceptCa === undefined && interception ? interception.ca.then((c) => c.certPem) : explicitCa;
  caCertPem.catch(() => {});
  const spec = launchSpec(artifacts, image, resources, choice, root, mounts.length);
  const launch = internals.transformLaunch ? internals.transformLaunch(spec) : spec;
  const configure = caCertPem.then((pem) => ({
    hostname,
    cwd,
    env,
    root: { device: "/dev/vda", fstype: image.filesystem, readOnly: root.kind === "builtIn" && !internals.writableRoot },
    mounts: mounts.map((m, i) => ({
      tag: mountTag(i),
      target: m.target,
      readOnly: m.mount.readOnly,
      // Only a root whose changes are discarded may get new directories.
      createOnRoot: root.kind === "ephemeral",
    })),
    ...(pem === undefined ? {} : { caCertPem: pem }),
    ...(policy ? { network: GUEST_NET } : {}),
  }));
  configure.catch(() => {});

  try {
    if (policy) {
      const emit = (e: Parameters<NetworkService["emit"]>[0]) => net?.emit(e);
      intercept = await InterceptServer.start(interceptHandler() ?? interception?.handle, emit);
      const server = intercept;
      conn.once("exit", () => {
        void server.close();
        void interception?.close();
      });
      net = new NetworkService(conn, policy, intercept);
      Object.assign(launch, {
        network: {
          policyDeadlineMs: helperDeadlineMs(policy),
          maxFlows: policy.maxFlows,
          allowProtected: policy.allowProtectedCidrs.map((c) => c.text),
          interceptSocket: intercept.socketPath,
        },
      });
    }
    const { launched, hello, ready } = await handshake(conn, launch, configure, timeoutMs, options.signal);
    return new Lane(conn, {
      backend: choice.backend,
      accel: choice.accel,
      backendReason: choice.reason,
      image: image.name,
      hostname,
      cwd,
      kernel: ready.kernel,
      helperPid: conn.pid,
      vmmPid: launched.vmmPid,
      bootMs: performance.now() - started,
      guestBootMs: ready.uptimeMs,
      guestTimings: {
        initStartedMs: hello?.initStartedMs ?? 0,
        modulesLoadedMs: hello?.modulesLoadedMs ?? 0,
        helloMs: hello?.uptimeMs ?? 0,
        readyMs: ready.uptimeMs,
      },
    }, { shutdownGraceMs: store ? COW_SHUTDOWN_GRACE_MS : undefined, storeFailures: failures });
  } catch (err) {
    conn.kill();
    void intercept?.close();
    void interception?.close();
    // A store failure during boot is the root cause of whatever the guest then reported.
    throw err instanceof SandboxBootError && failures.first ? failures.first : err;
  }
}

interface Launched {
  vmmPid: number;
  accel: string;
}
interface Hello {
  uptimeMs: number;
  initStartedMs?: number;
  modulesLoadedMs?: number;
}
interface Ready {
  uptimeMs: number;
  kernel: string;
}

/** Launch → Launched → Hello → Configure → Ready, failing on any exit, error or deadline. */
function handshake(
  conn: HelperConnection,
  launch: unknown,
  configure: Promise<unknown>,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<{ launched: Launched; hello: Hello | undefined; ready: Ready }> {
  return new Promise((resolve, reject) => {
    let launched: Launched | undefined;
    let hello: Hello | undefined;
    const cleanup = () => {
      clearTimeout(timer);
      conn.off("control", onControl);
      conn.off("exit", onExit);
      signal?.removeEventListener("abort", onAbort);
    };
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new SandboxBootError(`the guest was not ready within ${timeoutMs} ms; raise boot({ timeoutMs }) on slow hosts`)),
      timeoutMs,
    );
    const onAbort = () => {
      const err = new DOMException("boot was aborted", "AbortError");
      fail(err);
    };
    const onExit = () => {
      const tail = conn.vmExit?.consoleTail?.trim();
      const why = conn.helperError ?? (conn.vmExit ? "the VM exited during boot" : "the sandbox helper exited during boot");
      fail(
        new SandboxBootError(`${why}${tail ? `; console output:\n${lastLines(tail, 20)}` : ""}`, {
          consoleTail: conn.vmExit?.consoleTail,
        }),
      );
    };
    const onControl = (frame: Frame) => {
      const body = frame.payload.length ? JSON.parse(frame.payload.toString("utf8")) : {};
      switch (frame.kind) {
        case Kind.Launched:
          launched = body as Launched;
          break;
        case Kind.Hello:
          hello = body as Hello;
          configure.then(
            (body) => conn.sendJson(Kind.Configure, 0, body),
            (err: unknown) => fail(err instanceof Error ? err : new Error(String(err))),
          );
          break;
        case Kind.InitError: {
          const e = body as { stage: string; message: string };
          conn.send(Kind.Shutdown, 0);
          fail(new SandboxBootError(`guest init failed at ${e.stage}: ${e.message}`, { stage: e.stage, guestMessage: e.message }));
          break;
        }
        case Kind.Ready:
          cleanup();
          resolve({ launched: launched ?? { vmmPid: -1, accel: "unknown" }, hello, ready: body as Ready });
          break;
      }
    };
    conn.on("control", onControl);
    conn.on("exit", onExit);
    signal?.addEventListener("abort", onAbort, { once: true });
    conn.sendJson(Kind.Launch, 0, launch);
  });
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

function lastLines(text: string, n: number): string {
  return text.split("\n").slice(-n).join("\n");
}
