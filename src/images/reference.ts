/**
 * What `importImage(ref)` accepts, with skopeo's transport prefixes:
 *
 *   docker://registry/repo:tag | registry/repo@sha256:…   a registry (the default)
 *   oci:DIR[:TAG]                                         an OCI layout directory
 *   oci-archive:FILE[:TAG]                                a tarball of one
 *   docker-archive:FILE[:REPO:TAG]                        `docker save` output
 *   an existing directory or file                         the same, recognised by content
 *
 * and the catalog name an import gets when none is given.
 */
import { existsSync, statSync } from "node:fs";
import { basename, resolve } from "node:path";
import { SandboxConfigError } from "../errors.js";

export type ImageSource =
  | { kind: "registry"; reference: string }
  | { kind: "oci-layout" | "oci-archive" | "docker-archive" | "archive"; path: string; reference?: string };

/** `PATH[:REF]`: the longest prefix that exists is the path. */
function pathAndRef(rest: string, what: string): { path: string; reference?: string } {
  if (existsSync(rest)) return { path: resolve(rest) };
  for (let i = rest.lastIndexOf(":"); i > 0; i = rest.lastIndexOf(":", i - 1)) {
    if (existsSync(rest.slice(0, i))) return { path: resolve(rest.slice(0, i)), reference: rest.slice(i + 1) };
  }
  throw new SandboxConfigError(`${what}: ${JSON.stringify(rest)} does not exist`);
}

export function parseImageSource(ref: string): ImageSource {
  if (typeof ref !== "string" || ref.trim() === "" || ref.includes("\0")) {
    throw new SandboxConfigError("importImage(ref) needs an image reference such as docker.io/library/alpine:3.23 or oci:./layout:tag");
  }
  for (const kind of ["oci-archive", "docker-archive", "oci"] as const) {
    if (ref.startsWith(`${kind}:`)) {
      const { path, reference } = pathAndRef(ref.slice(kind.length + 1), kind);
      return { kind: kind === "oci" ? "oci-layout" : kind, path, ...(reference ? { reference } : {}) };
    }
  }
  if (ref.startsWith("docker://")) return { kind: "registry", reference: ref.slice("docker://".length) };
  // A path the user can see wins over a registry reference of the same spelling.
  if (ref.startsWith("/") || ref.startsWith(".") || existsSync(ref)) {
    const path = resolve(ref);
    if (!existsSync(path)) throw new SandboxConfigError(`${ref} does not exist`);
    if (statSync(path).isDirectory()) return { kind: "oci-layout", path };
    return { kind: "archive", path };
  }
  return { kind: "registry", reference: ref };
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._\-/:]{0,254}$/;

/** Catalog names: `name[:tag]`, printable, no digests (those are looked up by `sha256:`/`@`). */
export function checkImageName(name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name) || name.startsWith("sha256:") || name.includes("//")) {
    throw new SandboxConfigError(
      `image name ${JSON.stringify(name)} is invalid: use letters, digits and . _ - / :, e.g. "alpine:3.23" or "tools/node:20"`,
    );
  }
  return name;
}

/**
 * The name an import gets by default: `docker.io/library/alpine:3.23` →
 * `alpine:3.23`, other registries keep their host; local sources use their
 * own tag (a docker-archive's repo tag), else the file name.
 */
export function defaultImageName(source: ImageSource, refName: string | null | undefined): string {
  if (source.kind === "registry") {
    const at = source.reference.indexOf("@");
    let r = at >= 0 ? source.reference.slice(0, at) : source.reference;
    const digest = at >= 0 ? source.reference.slice(at + 1) : undefined;
    const slash = r.indexOf("/");
    const first = slash >= 0 ? r.slice(0, slash) : "";
    const hasRegistry = first.includes(".") || first.includes(":") || first === "localhost";
    const dockerHub = !hasRegistry || ["docker.io", "index.docker.io", "registry-1.docker.io"].includes(first);
    if (hasRegistry && dockerHub) r = r.slice(slash + 1);
    if (dockerHub && r.startsWith("library/")) r = r.slice("library/".length);
    if (!r.slice(r.lastIndexOf("/") + 1).includes(":")) {
      r = digest ? `${r}:${digest.replace(/^sha256:/, "").slice(0, 12)}` : `${r}:latest`;
    }
    return r;
  }
  // A docker archive's repo tag is a registry reference ("docker.io/library/x:1" → "x:1").
  if (refName && refName.includes(":")) return defaultImageName({ kind: "registry", reference: refName }, null);
  const stem = basename(source.path).replace(/\.(tar|tar\.gz|tgz|oci)$/, "") || "image";
  return `${stem.replace(/[^A-Za-z0-9._-]/g, "-")}:${refName && NAME.test(refName) ? refName : "latest"}`;
}
