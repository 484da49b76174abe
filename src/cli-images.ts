/** `sandbox images …` and `sandbox build`: the image commands of the CLI. */
import { ArgCursor, UsageError } from "./cli-usage.js";
import { importImage, type ImportProgress } from "./images/import.js";
import { listImages, removeImage } from "./images/list.js";
import { loadSandboxfile } from "./images/sandboxfile.js";
import { build } from "./images/build.js";

export const IMAGES_USAGE = `  sandbox images
      lists the images (built-in, imported, built): name, tag, digest, size, source
  sandbox images import REF [--name NAME] [--username USER --password-stdin | --creds USER:PASS]
                            [--plain-http] [--ca-cert FILE] [--compress]
      imports an OCI image: a registry reference (registry/repo:tag, …@sha256:…),
      oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REPO:TAG], or a path
  sandbox images rm NAME|sha256:DIGEST
      removes an imported or built image name (the file goes when no name is left)
  sandbox build -f Sandboxfile.yaml [--name NAME] [--compress]
      builds an image from a base and setup steps (cached: same inputs, no rebuild)`;

const MiB = 1024 * 1024;
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd()).join("\n") + "\n";
}

function list(): number {
  const rows = [["NAME", "TAG", "DIGEST", "SIZE", "SOURCE"]];
  for (const i of listImages()) {
    rows.push([i.repository ?? "<none>", i.tag ?? (i.name ? "-" : "<none>"), i.digest.slice(0, 19), mib(i.fileSizeBytes), i.source]);
  }
  process.stdout.write(table(rows));
  return 0;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8").replace(/\r?\n$/, "");
}

/** A one-line status on a terminal; one line per stage elsewhere. */
function progressView(label: string) {
  const live = process.stderr.isTTY === true;
  const layers = new Map<number, { done: number; total: number | null; unpacked: number; finished: boolean }>();
  let stage = "resolving";
  const started = performance.now();
  const draw = () => {
    const dl = [...layers.values()];
    const got = dl.reduce((a, l) => a + l.done, 0);
    const total = dl.reduce((a, l) => a + (l.total ?? 0), 0);
    const unpacked = dl.reduce((a, l) => a + l.unpacked, 0);
    const finished = dl.filter((l) => l.finished).length;
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    const line = `${label}: ${stage} · layers ${finished}/${dl.length} · ${mib(got)}${total ? ` of ${mib(total)}` : ""} fetched · ${mib(unpacked)} unpacked · ${secs}s`;
    process.stderr.write(`\r\x1b[K${line.slice(0, (process.stderr.columns || 100) - 1)}`);
  };
  return {
    onProgress(e: ImportProgress) {
      switch (e.type) {
        case "resolved":
          e.layers.forEach((l, i) => layers.set(i, { done: 0, total: l.size, unpacked: 0, finished: false }));
          stage = "downloading";
          if (!live) process.stderr.write(`${label}: ${e.layers.length} layers, ${mib(e.layers.reduce((a, l) => a + (l.size ?? 0), 0))}\n`);
          break;
        case "download": {
          const l = layers.get(e.layer);
          if (l) l.done = e.bytes;
          break;
        }
        case "unpack": {
          const l = layers.get(e.layer);
          if (l) {
            l.unpacked = e.bytes;
            l.finished ||= e.done;
          }
          break;
        }
        case "stage":
          stage = e.stage === "filesystem" ? "unpacking into ext4" : e.stage;
          if (!live) process.stderr.write(`${label}: ${stage}\n`);
          break;
        case "warning":
          if (live) process.stderr.write("\r\x1b[K");
          process.stderr.write(`${label}: warning: ${e.message}\n`);
          break;
      }
      if (live) draw();
    },
    end() {
      if (live) process.stderr.write("\r\x1b[K");
    },
  };
}

async function importCmd(argv: string[]): Promise<number> {
  let ref: string | undefined;
  let name: string | undefined;
  let username: string | undefined;
  let password: string | undefined;
  let passwordStdin = false;
  let plainHttp: boolean | undefined;
  let compress = false;
  const ca: string[] = [];
  const args = new ArgCursor(argv);
  for (let a = args.next(); a !== undefined; a = args.next()) {
    const value = () => args.value(a);
    switch (a) {
      case "--name":
        name = value();
        break;
      case "--username":
        username = value();
        break;
      case "--password-stdin":
        passwordStdin = true;
        break;
      case "--creds": {
        const c = value();
        const at = c.indexOf(":");
        if (at < 1) throw new UsageError("--creds takes USER:PASSWORD");
        [username, password] = [c.slice(0, at), c.slice(at + 1)];
        break;
      }
      case "--plain-http":
        plainHttp = true;
        break;
      case "--ca-cert":
        ca.push(value());
        break;
      case "--compress":
        compress = true;
        break;
      default:
        if (a.startsWith("-")) throw new UsageError(`unknown option ${a}`);
        if (ref !== undefined) throw new UsageError(`one image per import (got ${ref} and ${a})`);
        ref = a;
    }
  }
  if (!ref) throw new UsageError("images import needs a reference, e.g. docker.io/library/alpine:3.23");
  if (passwordStdin) {
    if (!username) throw new UsageError("--password-stdin needs --username");
    password = await readStdin();
  }
  if (username !== undefined && password === undefined) throw new UsageError("--username needs --password-stdin (or use --creds USER:PASS)");
  const view = progressView(`import ${ref}`);
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.once("SIGINT", onSigint);
  const t0 = performance.now();
  try {
    const image = await importImage(ref, {
      ...(name ? { name } : {}),
      ...(username !== undefined ? { auth: { username, password: password ?? "" } } : {}),
      ...(plainHttp !== undefined ? { plainHttp } : {}),
      ...(ca.length ? { caCertificates: ca } : {}),
      compress,
      onProgress: view.onProgress,
      signal: ac.signal,
    });
    view.end();
    process.stdout.write(
      `${image.name} ${image.digest} (${mib(image.fileSizeBytes)}, ${image.platform}) in ${((performance.now() - t0) / 1000).toFixed(1)} s\n` +
        `boot it with rootfs.builtIn(${JSON.stringify(image.name)}) or \`sandbox run --image ${image.name}\`\n`,
    );
    return 0;
  } finally {
    view.end();
    process.off("SIGINT", onSigint);
  }
}

async function rm(argv: string[]): Promise<number> {
  if (argv.length === 0) throw new UsageError("images rm needs an image name or sha256: digest");
  for (const ref of argv) {
    const { removed, deletedDigest } = await removeImage(ref);
    process.stdout.write(`untagged ${removed.join(", ") || "(no names)"}${deletedDigest ? `; deleted ${deletedDigest}` : ""}\n`);
  }
  return 0;
}

export async function imagesCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case undefined:
    case "ls":
    case "list":
      return list();
    case "import":
      return importCmd(rest);
    case "rm":
      return rm(rest);
    default:
      throw new UsageError(`unknown images command ${sub}`);
  }
}

export async function buildCommand(argv: string[]): Promise<number> {
  let file = "Sandboxfile.yaml";
  let name: string | undefined;
  let compress = false;
  const args = new ArgCursor(argv);
  for (let a = args.next(); a !== undefined; a = args.next()) {
    const value = () => args.value(a);
    if (a === "-f" || a === "--file") file = value();
    else if (a === "--name") name = value();
    else if (a === "--compress") compress = true;
    else throw new UsageError(`unknown build option ${a}`);
  }
  const options = await loadSandboxfile(file);
  const t0 = performance.now();
  const result = await build({
    ...options,
    ...(name ? { name } : {}),
    compress,
    onStep: (e) => {
      if ("cached" in e) process.stderr.write(`[build] cached: ${e.digest}\n`);
      else process.stderr.write(`[build] step ${e.step + 1}/${e.total}: ${e.description}\n`);
    },
    // Step output goes to stderr; stdout carries only the result name (scriptable).
    onOutput: (chunk) => process.stderr.write(chunk),
  });
  process.stdout.write(`${result.name} (${result.cached ? "cached" : "built"} in ${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
  return 0;
}
