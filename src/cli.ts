/** The `sandbox` command line: run a command in a fresh sandbox, list images. */
import { defineSandbox, listBuiltInImages } from "./sandbox.js";
import { rootfs } from "./rootfs.js";
import { SandboxError } from "./errors.js";

const USAGE = `usage:
  sandbox run [--image NAME] [--cpus N] [--memory MiB] [--hostname NAME] [--timeout MS] -- COMMAND [ARGS...]
      boots a sandbox, runs COMMAND, prints its output and timings, exits with its exit code
  sandbox images
      lists the built-in rootfs images
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
