/**
 * `Sandboxfile.yaml`, the declarative form of `rootfs.build` read by
 * `sandbox build -f FILE`:
 *
 *   base: busybox                     # a catalog name, or { path, digest }
 *   name: tools:1                     # optional catalog name of the result
 *   env: { GREETING: hello }
 *   workdir: /app
 *   network:                          # optional; absent: the steps have no network
 *     allow: [deb.debian.org, "*.example.com"]   # HTTP(S) hosts
 *     resolvers: [1.1.1.1]            # DNS; default: the host's resolvers
 *   steps:
 *     - run: echo hi > /etc/motd
 *     - copy: ./src                   # relative to the Sandboxfile
 *       to: /app
 */
import { readFile } from "node:fs/promises";
import { getServers } from "node:dns";
import { dirname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { SandboxConfigError } from "../errors.js";
import { network, type NetworkPolicy } from "../network/policy.js";
import type { RootfsBuildOptions } from "./build.js";

/** The file's content, checked. */
export interface Sandboxfile {
  base: string | { path: string; digest: string };
  name?: string;
  env?: Record<string, string>;
  workdir?: string;
  network?: { allow: string[]; resolvers?: string[] };
  steps: ({ run: string | string[] } | { copy: string; to: string })[];
}

const KEYS = ["base", "name", "env", "workdir", "network", "steps"];

function fail(file: string, message: string): never {
  throw new SandboxConfigError(`${file}: ${message}`);
}

/** A policy that answers DNS through `resolvers` and lets HTTP(S) reach the allowed hosts only. */
export function allowListPolicy(allow: readonly string[], resolvers: readonly string[]): NetworkPolicy {
  const matches = (host: string) =>
    allow.some((a) => (a.startsWith("*.") ? host.endsWith(a.slice(1)) && host.length > a.length - 1 : host === a));
  // Resolvers on loopback (systemd-resolved, a local cache) are protected addresses: grant them explicitly.
  const hostOf = (r: string) => (r.startsWith("[") ? r.slice(1, r.indexOf("]")) : r.split(":").length === 2 ? r.split(":")[0]! : r);
  const loopback = resolvers
    .map(hostOf)
    .filter((ip) => ip.startsWith("127.") || ip === "::1")
    .map((ip) => (ip === "::1" ? "::1/128" : `${ip}/32`));
  return network.policy(
    (conn) => {
      if (conn.matchDns()?.accept({ resolvers })) return;
      conn.matchHttp((c) => matches(c.hostname))?.accept();
    },
    loopback.length > 0 ? { allowProtected: loopback } : {},
  );
}

/** Reads a Sandboxfile into `rootfs.build` options (paths resolved against the file's directory). */
export async function loadSandboxfile(path: string): Promise<RootfsBuildOptions & { name?: string }> {
  const file = resolve(path);
  const text = await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => fail(file, `cannot read it (${err.code ?? err.message})`));
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    fail(file, `not valid YAML: ${(err as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) fail(file, "must be a mapping with base and steps");
  const d = doc as Record<string, unknown>;
  const unknown = Object.keys(d).filter((k) => !KEYS.includes(k));
  if (unknown.length) fail(file, `unknown key(s) ${unknown.join(", ")}; allowed: ${KEYS.join(", ")}`);
  const { rootfs } = await import("../rootfs.js");
  const here = dirname(file);

  let base;
  if (typeof d.base === "string") base = rootfs.builtIn(d.base);
  else if (d.base && typeof d.base === "object" && "path" in d.base && "digest" in d.base) {
    const b = d.base as { path: string; digest: string };
    base = rootfs.image({ path: resolve(here, String(b.path)), digest: String(b.digest) });
  } else fail(file, "base must be an image name (e.g. busybox) or { path, digest }");

  if (!Array.isArray(d.steps) || d.steps.length === 0) fail(file, "steps must be a non-empty list of { run } or { copy, to }");
  const steps = d.steps.map((s: unknown, i: number) => {
    if (s && typeof s === "object" && "copy" in s) {
      const c = s as { copy: unknown; to: unknown };
      return { copy: resolve(here, String(c.copy)), to: String(c.to) };
    }
    if (s && typeof s === "object" && "run" in s) return { run: (s as { run: string | string[] }).run };
    return fail(file, `step ${i + 1} must be { run: … } or { copy: …, to: … }`);
  });

  if (d.env !== undefined && (typeof d.env !== "object" || d.env === null || Array.isArray(d.env))) fail(file, "env must be a mapping");
  const env = d.env === undefined ? undefined : Object.fromEntries(Object.entries(d.env as object).map(([k, v]) => [k, String(v)]));

  let policy: NetworkPolicy | undefined;
  if (d.network !== undefined && d.network !== null) {
    const n = d.network as { allow?: unknown; resolvers?: unknown };
    if (!Array.isArray(n.allow) || n.allow.some((a) => typeof a !== "string")) fail(file, "network.allow must be a list of hostnames");
    const resolvers = n.resolvers === undefined ? getServers() : n.resolvers;
    if (!Array.isArray(resolvers) || resolvers.length === 0) fail(file, "network.resolvers must be a non-empty list (the host has none configured)");
    policy = allowListPolicy(n.allow as string[], (resolvers as unknown[]).map(String));
  }
  return {
    base: base!,
    steps,
    ...(env ? { env } : {}),
    ...(d.workdir !== undefined ? { workdir: String(d.workdir) } : {}),
    ...(d.name !== undefined ? { name: String(d.name) } : {}),
    ...(policy ? { network: policy } : {}),
  };
}
