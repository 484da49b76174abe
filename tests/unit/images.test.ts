/** Image references, names, the local catalog, lookups and Sandboxfiles — no VM, no registry. */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ImageDigestMismatchError, listImages, loadSandboxfile, rootfs, SandboxConfigError, UnknownImageError } from "../../src/index.js";
import { checkImageName, defaultImageName, parseImageSource } from "../../src/images/reference.js";
import { defaultsOf, findCatalogImage, resolveImageFile } from "../../src/images/resolve.js";
import { addImage, readLocalCatalog, updateCatalog, type LocalImage } from "../../src/images/store.js";
import { createHash } from "node:crypto";

let dir: string;
let before: string | undefined;
beforeEach(() => {
  before = process.env.SANDBOX_IMAGES_DIR;
  dir = mkdtempSync(join(tmpdir(), "images-unit-"));
  process.env.SANDBOX_IMAGES_DIR = dir;
});
afterEach(() => {
  process.env.SANDBOX_IMAGES_DIR = before;
  rmSync(dir, { recursive: true, force: true });
});

const entry = (sha256: string, over: Partial<LocalImage> = {}): LocalImage => ({
  sha256,
  file: `blobs/sha256/${sha256}.qcow2`,
  names: [],
  format: "qcow2",
  filesystem: "ext4",
  virtualSizeBytes: 1 << 30,
  fileSizeBytes: 1 << 20,
  compressed: false,
  source: { kind: "registry", reference: "r/x:1", manifestDigest: null, platform: "linux/amd64" },
  config: { env: ["A=1", "PATH=/bin"], workingDir: "/w", resolvedUser: { uid: 5, gid: 6, groups: [7], home: "/home/u" } },
  createdAt: "2026-01-01T00:00:00Z",
  ...over,
});

describe("image references", () => {
  it("parses transports, paths and registry references", () => {
    mkdirSync(join(dir, "lay"));
    writeFileSync(join(dir, "a.tar"), "");
    expect(parseImageSource(`oci:${dir}/lay:v1`)).toEqual({ kind: "oci-layout", path: `${dir}/lay`, reference: "v1" });
    expect(parseImageSource(`oci:${dir}/lay`)).toEqual({ kind: "oci-layout", path: `${dir}/lay` });
    expect(parseImageSource(`docker-archive:${dir}/a.tar:repo/x:2`)).toEqual({ kind: "docker-archive", path: `${dir}/a.tar`, reference: "repo/x:2" });
    expect(parseImageSource(`${dir}/a.tar`)).toEqual({ kind: "archive", path: `${dir}/a.tar` });
    expect(parseImageSource(`${dir}/lay`)).toEqual({ kind: "oci-layout", path: `${dir}/lay` });
    expect(parseImageSource("docker://alpine:3.23")).toEqual({ kind: "registry", reference: "alpine:3.23" });
    expect(parseImageSource("ghcr.io/o/i@sha256:" + "a".repeat(64))).toMatchObject({ kind: "registry" });
    expect(() => parseImageSource(`oci:${dir}/missing:tag`)).toThrow(/does not exist/);
  });

  it("derives default names the way people write them", () => {
    const reg = (reference: string) => defaultImageName({ kind: "registry", reference }, null);
    expect(reg("docker.io/library/alpine:3.23")).toBe("alpine:3.23");
    expect(reg("alpine")).toBe("alpine:latest");
    expect(reg("docker.io/bitnami/redis:7")).toBe("bitnami/redis:7");
    expect(reg("127.0.0.1:5000/test/main:1")).toBe("127.0.0.1:5000/test/main:1");
    expect(reg(`ghcr.io/o/i@sha256:${"ab".repeat(32)}`)).toBe("ghcr.io/o/i:abababababab");
    expect(defaultImageName({ kind: "archive", path: "/x/img.tar" }, "docker.io/test/main:1")).toBe("test/main:1");
    expect(defaultImageName({ kind: "oci-layout", path: "/x/layout" }, "v2")).toBe("layout:v2");
    expect(defaultImageName({ kind: "oci-layout", path: "/x/layout" }, null)).toBe("layout:latest");
  });

  it("checks catalog names", () => {
    expect(checkImageName("tools/node:20")).toBe("tools/node:20");
    for (const bad of ["", " x", "sha256:abc", "-x", "a b", "a//b"]) expect(() => checkImageName(bad)).toThrow(SandboxConfigError);
  });
});

describe("the local catalog", () => {
  it("adds, renames and looks up images by name, tag-less name and digest; pins are enforced", async () => {
    const a = "a".repeat(64);
    const b = "b".repeat(64);
    await updateCatalog(dir, (images) => addImage(images, entry(a), "tools:1"));
    await updateCatalog(dir, (images) => addImage(images, entry(a), "tools:latest"));
    await updateCatalog(dir, (images) => addImage(images, entry(b), "tools:1")); // the name moves to b
    const cat = readLocalCatalog(dir);
    expect(cat.map((e) => [e.sha256, e.names])).toEqual([
      [a, ["tools:latest"]],
      [b, ["tools:1"]],
    ]);
    expect(findCatalogImage("tools").sha256).toBe(a);
    expect(findCatalogImage("tools:1").sha256).toBe(b);
    expect(findCatalogImage(`sha256:${a}`).name).toBe("tools:latest");
    expect(findCatalogImage(`tools:1@sha256:${b}`).path).toBe(join(dir, "blobs/sha256", `${b}.qcow2`));
    expect(() => findCatalogImage(`tools:1@sha256:${a}`)).toThrow(ImageDigestMismatchError);
    const unknown = (() => {
      try {
        findCatalogImage("nope:2");
      } catch (e) {
        return e as UnknownImageError;
      }
    })();
    expect(unknown).toBeInstanceOf(UnknownImageError);
    expect(unknown!.available).toEqual(expect.arrayContaining(["tools:latest", "tools:1"]));
    expect(unknown!.message).toContain("sandbox images import docker.io/library/nope:2 --name nope:2");
    expect(listImages().filter((i) => !i.builtIn).map((i) => [i.repository, i.tag])).toEqual([
      ["tools", "latest"],
      ["tools", "1"],
    ]);
  });

  it("survives concurrent writers (the lock serialises them)", async () => {
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => updateCatalog(dir, (images) => addImage(images, entry(i.toString(16).padStart(64, "0")), `n:${i}`))),
    );
    expect(readLocalCatalog(dir)).toHaveLength(20);
  });

  it("turns an image config into lane defaults (HOME from the user) and refuses an unresolvable User", () => {
    expect(defaultsOf("x", entry("c".repeat(64)).config)).toEqual({
      env: { A: "1", PATH: "/bin", HOME: "/home/u" },
      workingDir: "/w",
      user: { uid: 5, gid: 6, groups: [7], home: "/home/u" },
    });
    expect(() => defaultsOf("x", { env: [], user: "ghost", userError: 'User "ghost": no such user' })).toThrow(/cannot boot.*ghost/);
  });
});

describe("rootfs.image", () => {
  it("needs a real sha256 digest and checks it against the file", async () => {
    const file = join(dir, "disk.raw");
    writeFileSync(file, Buffer.alloc(4096, 1));
    const digest = `sha256:${createHash("sha256").update(readFileSync(file)).digest("hex")}`;
    for (const bad of ["latest", "sha256:xyz", "md5:00", ""]) expect(() => rootfs.image({ path: file, digest: bad })).toThrow(/sha256 digest/);
    const ok = await resolveImageFile(rootfs.image({ path: file, digest }));
    expect(ok).toMatchObject({ format: "raw", sha256: digest.slice(7), filesystem: "ext4", source: "file" });
    await expect(resolveImageFile(rootfs.image({ path: file, digest, format: "qcow2" }))).rejects.toThrow(/is a raw image/);
    writeFileSync(file, Buffer.alloc(4096, 2)); // changed after pinning
    const err = await resolveImageFile(rootfs.image({ path: file, digest })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageDigestMismatchError);
    expect((err as ImageDigestMismatchError).expected).toBe(digest);
    expect(rootfs.ephemeral({ base: rootfs.image({ path: file, digest }) }).base.kind).toBe("image");
  });
});

describe("Sandboxfile", () => {
  it("reads base, env, workdir, network and steps, with paths relative to the file", async () => {
    const file = join(dir, "Sandboxfile.yaml");
    writeFileSync(
      file,
      "base: busybox\nname: t:1\nenv: { A: 1 }\nworkdir: /app\nnetwork:\n  allow: [example.com]\n  resolvers: [1.1.1.1]\nsteps:\n  - run: echo hi\n  - copy: ./src\n    to: /app\n",
    );
    const o = await loadSandboxfile(file);
    expect(o).toMatchObject({ base: { kind: "builtIn", name: "busybox" }, name: "t:1", env: { A: "1" }, workdir: "/app" });
    expect(o.steps).toEqual([{ run: "echo hi" }, { copy: join(dir, "src"), to: "/app" }]);
    expect(o.network).toBeDefined();
    writeFileSync(file, "base: busybox\nstep: []\n");
    await expect(loadSandboxfile(file)).rejects.toThrow(/unknown key\(s\) step/);
  });
});
