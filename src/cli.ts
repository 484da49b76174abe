/** The `sandbox` command line: run a command in a fresh sandbox, manage images. */
import { defineSandbox } from "./sandbox.js";
import { rootfs } from "./rootfs.js";
import { once } from "node:events";
import { ProcessStartError, SandboxError } from "./errors.js";
import { artifactPaths } from "./artifacts.js";
import { runDoctor } from "./doctor.js";
import { setupMacos } from "./setup-macos.js";
import { findCatalogImage } from "./images/resolve.js";
import { buildCommand, imagesCommand, IMAGES_USAGE } from "./cli-images.js";
import { ArgCursor, UsageError } from "./cli-usage.js";
import { bootFromSnapshot, snapshotCommand, SNAPSHOT_USAGE } from "./cli-snapshot.js";
import type { Lane } from "./lane.js";

const USAGE = () => `usage:
  sandbox run [--image NAME] [--cpus N] [--memory MiB] [--hostname NAME] [--timeout MS] [--from DIR [--id ID]] [-- COMMAND [ARGS...]]
      boots a sandbox and runs COMMAND (default: the image's Entrypoint + Cmd) with this terminal's
      stdin, stdout and stderr (streamed as they come), then prints timings; exits with its exit code
      (127 not found, 126 not executable, 128+N signal N)
  sandbox shell [--image NAME] [--cpus N] [--memory MiB] [--hostname NAME]
      opens an interactive shell in a fresh sandbox; the VM is destroyed when the shell exits
${IMAGES_USAGE}
${SNAPSHOT_USAGE}  sandbox setup-macos
      macOS only: ad-hoc signs the helper with the Hypervisor.framework entitlement
  sandbox doctor
      checks virtualization, QEMU, kernels and images; says which backend is used and how to fix what is missing
`;

interface RunFlags {
  image: string;
  cpus: number;
  memory: number;
  hostname: string;
  timeout: number | undefined;
  /** `--from DIR`: resume a snapshot of that directory store instead of booting. */
  from: string | undefined;
  id: string | undefined;
  /** Whether --hostname was given (a resumed snapshot keeps its own otherwise). */
  hostnameGiven: boolean;
}

function parseRun(argv: string[]): { flags: RunFlags; command: string[] } {
  const flags: RunFlags = { image: "debian:12", cpus: 1, memory: 512, hostname: "sandbox", timeout: undefined, from: undefined, id: undefined, hostnameGiven: false };
  const args = new ArgCursor(argv);
  for (let a = args.next(); a !== undefined; a = args.next()) {
    if (a === "--") break;
    const value = () => args.value(a);
    switch (a) {
      case "--image":
        flags.image = value();
        break;
      case "--cpus":
        flags.cpus = Number(value());
        break;
      case "--memory":
        flags.memory = Number(value());
        break;
      case "--hostname":
        flags.hostname = value();
        flags.hostnameGiven = true;
        break;
      case "--timeout":
        flags.timeout = Number(value());
        break;
      case "--from":
        flags.from = value();
        break;
      case "--id":
        flags.id = value();
        break;
      default:
        if (a.startsWith("-")) throw new UsageError(`unknown option ${a}`);
        // First non-option starts the command (the `--` is optional).
        return { flags, command: args.rest(true) };
    }
  }
  return { flags, command: args.rest() };
}


/** An image's Entrypoint + Cmd, for `sandbox run --image X` without a command. */
function imageCommand(image: string): string[] {
  const config = findCatalogImage(image).config;
  const argv = [...(config?.entrypoint ?? []), ...(config?.cmd ?? [])];
  if (argv.length === 0) throw new UsageError(`no command given (and image ${image} has no Entrypoint or Cmd to run)`);
  return argv;
}

async function run(argv: string[]): Promise<number> {
  const { flags, command: given } = parseRun(argv);
  if (flags.from !== undefined && given.length === 0) throw new UsageError("run --from needs a command");
  const command = given.length > 0 ? given : imageCommand(flags.image);
  const t0 = performance.now();
  await using lane = await bootFor(flags);
  const booted = performance.now();
  const child = lane.spawn(command[0]!, command.slice(1), flags.timeout ? { timeoutMs: flags.timeout } : {});
  const output = Promise.all([pump(child.stdout, process.stdout), pump(child.stderr, process.stderr)]);
  const input = forwardStdin(child.stdin);
  let code: number;
  let timedOut = false;
  try {
    const exit = await child.exit;
    code = exit.exitCode;
    timedOut = exit.timedOut;
  } catch (err) {
    if (!(err instanceof ProcessStartError)) throw err;
    // What a shell says and returns for a command it cannot run.
    code = err.errno === "ENOENT" ? 127 : 126;
    process.stderr.write(`sandbox: ${command[0]}: ${err.errno === "ENOENT" ? "command not found" : err.message}\n`);
  } finally {
    input.stop();
  }
  await output;
  const ran = performance.now();
  process.stderr.write(
    `[sandbox] ${flags.image} on ${lane.info.backend}/${lane.info.accel}: boot ${Math.round(booted - t0)} ms, ` +
      `exec ${Math.round(ran - booted)} ms, exit ${code}${timedOut ? " (timed out)" : ""}\n`,
  );
  return code;
}

/** A fresh sandbox of the flags' image, or a resumed snapshot with `--from`. */
function bootFor(flags: RunFlags, cwd?: string): Promise<Lane> {
  if (flags.from !== undefined) return bootFromSnapshot(flags.from, flags.id, flags.hostnameGiven ? flags.hostname : undefined);
  const sandbox = defineSandbox({
    rootfs: rootfs.builtIn(flags.image),
    resources: { cpus: flags.cpus, memoryMiB: flags.memory },
  });
  return sandbox.boot({ hostname: flags.hostname, ...(cwd ? { cwd } : {}) });
}

/** Copies a guest stream to a host one as chunks arrive, waiting for the host side to drain. */
async function pump(from: ReadableStream<Uint8Array>, to: NodeJS.WriteStream): Promise<void> {
  const reader = from.getReader();
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    if (!to.write(r.value)) await once(to, "drain");
  }
}

/** This process' stdin into the guest process, EOF included, until `stop()`. */
function forwardStdin(to: WritableStream<Uint8Array>): { stop(): void } {
  const stdin = process.stdin;
  const writer = to.getWriter();
  const onData = (d: Buffer) => {
    // Backpressure: read no more until the guest took this chunk.
    stdin.pause();
    writer.write(new Uint8Array(d)).then(
      () => stdin.resume(),
      () => {},
    );
  };
  const onEnd = () => void writer.close().catch(() => {});
  stdin.on("data", onData);
  stdin.once("end", onEnd);
  stdin.resume();
  return {
    stop() {
      stdin.off("data", onData);
      stdin.off("end", onEnd);
      stdin.pause();
      writer.releaseLock();
    },
  };
}

/** Interactive shell on a pty: raw mode, resizes forwarded, exit status propagated. */
async function shell(argv: string[]): Promise<number> {
  const { flags, command } = parseRun(argv);
  if (command.length > 0) throw new UsageError("shell takes no command; use `sandbox run` for that");
  process.stderr.write(flags.from !== undefined ? `[sandbox] resuming a snapshot of ${flags.from}…\n` : `[sandbox] booting ${flags.image}…\n`);
  await using lane = await bootFor(flags, "/root");
  const size = () => ({ rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 });
  const term = lane.pty("/bin/sh", ["-c", "if command -v bash >/dev/null; then exec bash -i; else exec sh -i; fi"], {
    size: size(),
    env: { TERM: process.env.TERM ?? "xterm-256color" },
  });
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  if (raw) stdin.setRawMode(true);
  const onResize = () => term.resize(size());
  process.stdout.on("resize", onResize);
  const writer = term.input.getWriter();
  const onData = (d: Buffer) => void writer.write(new Uint8Array(d)).catch(() => {});
  stdin.on("data", onData);
  stdin.resume();
  const pumping = (async () => {
    const reader = term.output.getReader();
    for (let r = await reader.read(); !r.done; r = await reader.read()) process.stdout.write(r.value);
  })();
  try {
    const exit = await term.exit;
    await pumping.catch(() => {});
    return exit.exitCode;
  } finally {
    stdin.off("data", onData);
    process.stdout.off("resize", onResize);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
  }
}

function doctor(): number {
  const { checks, ok } = runDoctor(artifactPaths());
  for (const c of checks) {
    process.stdout.write(`${c.ok ? "ok  " : "FAIL"} ${c.name}: ${c.detail}\n`);
    if (!c.ok && c.fix) process.stdout.write(`     fix: ${c.fix}\n`);
  }
  process.stdout.write(ok ? "everything needed is present\n" : "some checks failed; see the fixes above\n");
  return ok ? 0 : 1;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case "run":
        return await run(rest);
      case "images":
        return await imagesCommand(rest);
      case "build":
        return await buildCommand(rest);
      case "snapshot":
        return await snapshotCommand(rest);
      case "shell":
        return await shell(rest);
      case "doctor":
        return doctor();
      case "setup-macos":
        return setupMacos({ platform: process.platform, helper: artifactPaths().helper });
      case undefined:
      case "help":
      case "--help":
      case "-h":
        process.stdout.write(USAGE());
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command ${cmd}`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`sandbox: ${err.message}\n${USAGE()}`);
      return 2;
    }
    if (err instanceof SandboxError) {
      process.stderr.write(`sandbox: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
