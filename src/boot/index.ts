/**
 * `boot()`: from a description to a running lane, as a sequence of small
 * steps — check the options, resolve platform and image, attach the block
 * store, start the helper, serve its requests (block store, filesystems,
 * network), build the Launch and Configure messages, run the handshake.
 */
import { SandboxBootError } from "../errors.js";
import { HelperConnection } from "../helper-connection.js";
import { Lane } from "../lane.js";
import { BlockStoreFailures, serveBlockStore } from "../rootfs/block-store.js";
import { serveFileSystems } from "../fs/server.js";
import { NetworkService } from "../network/bridge.js";
import { interceptHandler, InterceptServer } from "../network/intercept-server.js";
import { startInterception, type BootInterception } from "../network/http/interception.js";
import type { NetworkPolicy } from "../network/policy.js";
import type { Launch } from "../protocol/contract.js";
import type { RootfsSpec } from "../rootfs.js";
import { resolveImage } from "../images/resolve.js";
import { checkAbsolutePath } from "../validate.js";
import type { BootOptions, SandboxResources } from "../sandbox.js";
import { configureMessage, launchSpec, networkLaunch } from "./launch.js";
import { handshake } from "./handshake.js";
import { checkBootOptions } from "./options.js";
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
): Promise<Lane> {
  const started = performance.now();
  const plan = checkBootOptions(options);
  plan.signal?.throwIfAborted();
  const platform = resolvePlatform(resources);
  const image = await resolveImage(root.kind === "builtIn" || root.kind === "image" ? root : root.base);
  // The image config's Env < secret placeholders < the boot's own env.
  const env = { ...image.defaults.env, ...policy?.secrets?.env, ...plan.env };
  const cwd = plan.cwd ?? guestDir(image.defaults.workingDir) ?? "/";
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
      plan.mounts.length,
      policy && intercept ? networkLaunch(policy, intercept.socketPath) : undefined,
    );
    const launch = internals.transformLaunch ? internals.transformLaunch(spec) : spec;
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
        resources,
        writableRoot: internals.writableRoot,
      }),
    );
    configure.catch(() => {});
    const { launched, hello, ready } = await handshake(conn, launch, configure, plan.timeoutMs, plan.signal);
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

/** An image's WorkingDir as an absolute guest path (configs occasionally omit the slash). */
function guestDir(dir: string | undefined): string | undefined {
  if (!dir) return undefined;
  return checkAbsolutePath("the image's WorkingDir", dir.startsWith("/") ? dir : `/${dir}`);
}
