/**
 * `boot()`: from a description to a running lane, as a sequence of small
 * steps — check the options, resolve platform and image, attach the block
 * store, start the helper, serve its requests (block store, filesystems,
 * network), build the Launch and Configure messages, run the handshake.
 */
import { SandboxBootError, SandboxConfigError, SandboxSnapshotError } from "../errors.js";
import { HelperConnection } from "../helper-connection.js";
import { Lane } from "../lane.js";
import { BlockStoreFailures, serveBlockStore } from "../rootfs/block-store.js";
import { serveFileSystems } from "../fs/server.js";
import { NetworkService } from "../network/bridge.js";
import { interceptHandler, InterceptServer } from "../network/intercept-server.js";
import { startInterception, type BootInterception } from "../network/http/interception.js";
import type { NetworkPolicy } from "../network/policy.js";
import type { Launch } from "../protocol/contract.js";
import { rootfs as rootfsApi, type RootfsSpec } from "../rootfs.js";
import { resolveImage } from "../images/resolve.js";
import { checkAbsolutePath } from "../validate.js";
import type { BootOptions, SandboxResources } from "../sandbox.js";
import { configureMessage, launchSpec, networkLaunch } from "./launch.js";
import { handshake, resumeHandshake } from "./handshake.js";
import type { SnapshotBootOptions } from "../snapshot.js";
import { fileSha256, requirementMismatch, type SnapshotRequirements } from "../snapshot-store.js";
import { matchSnapshotMounts, readSnapshotMounts } from "../snapshot-mounts.js";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** The library's version (its helper and guest init are built with it), from its package.json (src/ or dist/src/). */
const VERSION: string = (() => {
  for (const up of ["../../package.json", "../../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(fileURLToPath(new URL(up, import.meta.url)), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "@torkbot/sandbox" && typeof pkg.version === "string") return pkg.version;
    } catch {
      // not this one
    }
  }
  return "unknown";
})();
import { checkBootOptions } from "./options.js";
import { krunSnapshotRefusal, snapshotBootFiles } from "./krun-snapshots.js";
import { resolvePlatform } from "./platform.js";
import { attachStore } from "./store.js";

/**
 * How long past a store call's deadline `close()` waits, with no store call
 * completing, for a durable root to be written back before killing the VM.
 */
const COW_SHUTDOWN_GRACE_MS = 5000;

/** Test and benchmark overrides of a boot (not part of the public API). */
export interface BootInternals {
  /** Rewrites the Launch request (e.g. a floor VM whose root disk QEMU opens itself). */
  transformLaunch?: (launch: Launch) => Launch;
  writableRoot?: boolean;
  /** Extra helper arguments (e.g. `--inject-faults 0.1`). */
  helperArgs?: readonly string[];
}

export async function bootLane(
  root: RootfsSpec,
  resources: Required<SandboxResources>,
  options: BootOptions,
  policy: NetworkPolicy | undefined,
  internals: BootInternals = {},
  restore?: { dir: string; requires?: SnapshotRequirements },
): Promise<Lane> {
  const started = performance.now();
  const plan = checkBootOptions(options);
  // A restored guest's init mounts device i at the snapshot's target i.
  if (restore) plan.mounts = matchSnapshotMounts(await readSnapshotMounts(restore.dir), plan.mounts);
  plan.signal?.throwIfAborted();
  const platform = resolvePlatform(resources);
  const image = await resolveImage(root.kind === "builtIn" || root.kind === "image" ? root : root.base);
  // The image config's Env < secret placeholders < the boot's own env.
  const env = { ...image.defaults.env, ...policy?.secrets?.env, ...plan.env };
  const cwd = plan.cwd ?? guestDir(image.defaults.workingDir) ?? "/";
  const requirements = async (): Promise<SnapshotRequirements> => ({
    version: VERSION,
    backend: platform.choice.backend,
    imageSha256: image.sha256,
    kernelSha256: await fileSha256(snapshotBootFiles(platform.choice.backend, platform.artifacts).kernel),
    initrdSha256: await fileSha256(snapshotBootFiles(platform.choice.backend, platform.artifacts).initrd),
    memoryMiB: resources.memoryMiB,
    cpus: resources.cpus,
    rootDisk: root.kind === "ephemeral" || root.kind === "cow" ? "writable" : "read-only",
  });
  if (restore?.requires) {
    const why = requirementMismatch(restore.requires, await requirements());
    if (why) throw new SandboxSnapshotError(`this runtime cannot boot the snapshot: ${why}. Boot it with the library version, image and resources it was taken with`);
  }
  const failures = new BlockStoreFailures(plan.onError);
  const store = await attachStore(root, image.sha256);

  let conn: HelperConnection;
  try {
    plan.signal?.throwIfAborted();
    conn = HelperConnection.spawn(platform.native, platform.artifacts.helper, internals.helperArgs);
  } catch (err) {
    store?.release();
    throw err;
  }
  if (store) {
    conn.once("exit", store.release);
    const onEvent = plan.onEvent;
    serveBlockStore(conn, store.store, { base: image.sha256 }, {
      timeoutMs: store.timeoutMs,
      retry: store.retry,
      onRetry: onEvent
        ? (e) => {
            try {
              onEvent(e);
            } catch {
              // An event hook that throws must not take the lane down.
            }
          }
        : undefined,
      failures,
      listed: store.listed,
    });
  }
  if (plan.mounts.length > 0) serveFileSystems(conn, plan.mounts.map((m) => m.mount.fs));
  if (plan.onEvent) {
    const onEvent = plan.onEvent;
    conn.on("diagnostic", (d) => {
      try {
        onEvent({ type: "diagnostic", ...d });
      } catch {
        // An event hook that throws must not take the lane down.
      }
    });
  }

  let intercept: InterceptServer | undefined;
  let interception: BootInterception | undefined;
  try {
    let network: NetworkService | undefined;
    // With a policy, HTTP interception is ready for matchHttp(...).accept(middleware):
    // the CA is generated now (overlapping the VM's boot) and its certificate goes to init.
    interception = policy ? startInterception({ upstreamCa: policy.upstreamCa, redactions: policy.secrets?.redactions, onEvent: (e) => network?.emit(e) }) : undefined;
    const caCertPem = plan.caCertPem ?? interception?.ca.then((c) => c.certPem) ?? Promise.resolve(undefined);
    caCertPem.catch(() => {});
    if (policy) {
      const server = await InterceptServer.start(interceptHandler() ?? interception?.handle, (e) => network?.emit(e));
      intercept = server;
      const live = interception;
      conn.once("exit", () => {
        void server.close();
        void live?.close();
      });
      network = new NetworkService(conn, policy, server);
    }
    const spec = launchSpec(
      platform.artifacts,
      image,
      resources,
      platform.choice,
      root,
      plan.mounts.map((m) => m.mount),
      policy && intercept ? networkLaunch(policy, intercept.socketPath) : undefined,
    );
    const launched0 = internals.transformLaunch ? internals.transformLaunch(spec) : spec;
    // A restored guest gets its new CA (with interception) in the Resume the helper sends.
    const launch = restore
      ? { ...launched0, restore: { dir: restore.dir, hostname: plan.hostname, ...(policy ? { caCertPem: await caCertPem } : {}) } }
      : launched0;
    const configure = caCertPem.then((pem) =>
      configureMessage({
        hostname: plan.hostname,
        cwd,
        env,
        image,
        root,
        mounts: plan.mounts,
        network: policy !== undefined,
        caCertPem: pem,
        caOptional: plan.caCertPem === undefined,
        resources,
        writableRoot: internals.writableRoot,
      }),
    );
    configure.catch(() => {});
    const { launched, hello, ready } = restore
      ? await resumeHandshake(conn, launch, plan.timeoutMs, plan.signal)
      : await handshake(conn, launch, configure, plan.timeoutMs, plan.signal);
    for (const warning of ready.warnings ?? []) {
      conn.emit("diagnostic", { level: "warn", source: "guest", message: warning });
    }
    return new Lane(
      conn,
      {
        backend: platform.choice.backend,
        accel: platform.choice.accel,
        backendReason: platform.choice.reason,
        image: image.name,
        hostname: plan.hostname,
        cwd,
        kernel: ready.kernel,
        helperPid: conn.pid,
        vmmPid: launched.vmmPid,
        bootMs: performance.now() - started,
        guestBootMs: ready.uptimeMs,
        guestTimings: {
          initStartedMs: hello.initStartedMs,
          modulesLoadedMs: hello.modulesLoadedMs,
          helloMs: hello.uptimeMs,
          readyMs: ready.uptimeMs,
        },
      },
      {
        // A durable root writes back at power-off: the grace counts from the last store call that completed.
        shutdownGraceMs: store ? store.timeoutMs + COW_SHUTDOWN_GRACE_MS : undefined,
        storeFailures: failures,
        storeProgress: store ? () => failures.lastProgressAt : undefined,
        livenessTimeoutMs: plan.livenessTimeoutMs,
        idleTimeoutMs: plan.idleTimeoutMs,
        onEvent: plan.onEvent,
        snapshots: snapshotRefusal(platform.choice.backend, root, plan.mounts.length, policy !== undefined) ?? {
          boot: snapshotBooter(root, resources, policy, internals, plan.hostname, undefined, options.mounts),
          requires: requirements,
          mounts: plan.mounts.map((m) => ({ target: m.target, readOnly: m.mount.readOnly })),
        },
      },
    );
  } catch (err) {
    conn.kill();
    void intercept?.close();
    void interception?.close();
    // A store failure during boot is the root cause of whatever the guest then reported.
    throw err instanceof SandboxBootError && failures.first ? failures.first : err;
  }
}

/** How snapshots of a lane boot: as that lane would, resumed from `dir`, after checking `requires`. */
export function snapshotBooter(
  root: RootfsSpec,
  resources: Required<SandboxResources>,
  policy: NetworkPolicy | undefined,
  internals: BootInternals,
  hostname: string,
  requires?: SnapshotRequirements,
  mounts?: BootOptions["mounts"],
) {
  return async (dir: string, o: SnapshotBootOptions): Promise<Lane> =>
    bootLane(
      forkRoot(root, o.maxDirtyBytes),
      resources,
      { hostname: o.hostname ?? hostname, timeoutMs: o.timeoutMs, signal: o.signal, livenessTimeoutMs: o.livenessTimeoutMs, mounts: o.mounts ?? mounts, onEvent: o.onEvent },
      policy,
      internals,
      { dir, requires },
    );
}

/**
 * The root a fork boots with: a writable root becomes an ephemeral one over
 * the same base, under which the helper reads the snapshot's saved blocks.
 * A `rootfs.cow` root's store stays the checkpointed lane's alone: a fork's
 * writes never reach it (docs/decisions.md).
 */
function forkRoot(root: RootfsSpec, maxDirtyBytes: number | undefined): RootfsSpec {
  if (root.kind !== "ephemeral" && root.kind !== "cow") {
    if (maxDirtyBytes !== undefined) throw new SandboxConfigError("snapshot.boot({ maxDirtyBytes }) needs a snapshot of a lane with a writable root (rootfs.ephemeral or rootfs.cow)");
    return root;
  }
  return rootfsApi.ephemeral({ base: root.base, maxDirtyBytes: maxDirtyBytes ?? root.maxDirtyBytes });
}

/** Why a lane booted like this cannot be checkpointed, if it cannot. */
function snapshotRefusal(backend: string, root: RootfsSpec, mounts: number, network: boolean): { refuse: string } | undefined {
  // A restored krun lane reads its RAM through libkrun, so it can be checkpointed again.
  if (backend === "krun") return krunSnapshotRefusal(root, mounts, network);
  if (backend !== "qemu") return { refuse: `the ${backend} backend has no snapshots` };
  return undefined;
}

/** An image's WorkingDir as an absolute guest path (configs occasionally omit the slash). */
function guestDir(dir: string | undefined): string | undefined {
  if (!dir) return undefined;
  return checkAbsolutePath("the image's WorkingDir", dir.startsWith("/") ? dir : `/${dir}`);
}
