/** The `sandbox` command line: run a command in a fresh sandbox, list images. */
import { defineSandbox, listBuiltInImages } from "./sandbox.js";
import { rootfs } from "./rootfs.js";
import { SandboxError } from "./errors.js";
import { artifactPaths } from "./artifacts.js";
import { runDoctor } from "./doctor.js";
import { setupMacos } from "./setup-macos.js";

const USAGE = `usage:
  sandbox run [--image NAME] [--cpus N] [--memory MiB] [--hostname NAME] [--timeout MS] -- COMMAND [ARGS...]
      boots a sandbox, runs COMMAND, prints its output and timings, exits with its exit code
  sandbox shell [--image NAME] [--cpus N] [--memory MiB] [--hostname NAME]
      opens an interactive shell in a fresh sandbox; the VM is destroyed when the shell exits
  sandbox images
      lists the built-in rootfs images
  sandbox setup-macos
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
}

function parseRun(argv: string[]): { flags: RunFlags; command: string[] } {
  const flags: RunFlags = { image: "debian:12", cpus: 1, memory: 512, hostname: "sandbox", timeout: undefined };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      i++;
      break;
    }
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      return v;
    };
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
        break;
      case "--timeout":
        flags.timeout = Number(value());
        break;
      default:
        if (a.startsWith("-")) throw new UsageError(`unknown option ${a}`);
        // First non-option starts the command (the `--` is optional).
        return { flags, command: argv.slice(i) };
    }
  }
  return { flags, command: argv.slice(i) };
}

class UsageError extends Error {}

async function run(argv: string[]): Promise<number> {
  const { flags, command } = parseRun(argv);
  if (command.length === 0) throw new UsageError("no command given");
  const sandbox = defineSandbox({
    rootfs: rootfs.builtIn(flags.image),
    resources: { cpus: flags.cpus, memoryMiB: flags.memory },
  });
  const t0 = performance.now();
  await using lane = await sandbox.boot({ hostname: flags.hostname });
  const booted = performance.now();
  const result = await lane.exec(command[0]!, command.slice(1), flags.timeout ? { timeoutMs: flags.timeout } : {});
  const ran = performance.now();
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  process.stderr.write(
    `[sandbox] ${flags.image} on ${lane.info.backend}/${lane.info.accel}: boot ${Math.round(booted - t0)} ms, ` +
      `exec ${Math.round(ran - booted)} ms, exit ${result.exitCode}${result.timedOut ? " (timed out)" : ""}\n`,
  );
  return result.exitCode;
}

/** Interactive shell on a pty: raw mode, resizes forwarded, exit status propagated. */
async function shell(argv: string[]): Promise<number> {
  const { flags, command } = parseRun(argv);
  if (command.length > 0) throw new UsageError("shell takes no command; use `sandbox run` for that");
  const sandbox = defineSandbox({
    rootfs: rootfs.builtIn(flags.image),
    resources: { cpus: flags.cpus, memoryMiB: flags.memory },
  });
  process.stderr.write(`[sandbox] booting ${flags.image}…\n`);
  await using lane = await sandbox.boot({ hostname: flags.hostname, cwd: "/root" });
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

function images(): number {
  for (const img of listBuiltInImages()) {
    const mib = (img.fileSizeBytes / 1048576).toFixed(1);
    process.stdout.write(`${img.name.padEnd(12)} ${mib.padStart(7)} MiB  sha256:${img.sha256.slice(0, 16)}  ${img.description ?? ""}\n`);
  }
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case "run":
        return await run(rest);
      case "images":
        return images();
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
        process.stdout.write(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command ${cmd}`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`sandbox: ${err.message}\n${USAGE}`);
      return 2;
    }
    if (err instanceof SandboxError) {
      process.stderr.write(`sandbox: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
