/**
 * OCI import end to end: images built here (oci-fixtures.ts), served by
 * real registries (open, htpasswd, token auth), imported through every
 * source kind, and booted to check what the guest sees.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  defineSandbox,
  fs,
  ImageDigestMismatchError,
  ImageImportError,
  importImage,
  listImages,
  RegistryAuthError,
  removeImage,
  rootfs,
  SandboxConfigError,
  UnknownImageError,
} from "../../src/index.js";
import { buildFixtures, skopeo, startRegistry, startTokenServer, tamperRegistryBlob, testCa, type Registry } from "./oci-fixtures.js";

const cli = fileURLToPath(new URL("../../bin/sandbox.js", import.meta.url));
const USER = { username: "tester", password: "s3cret" };

let work: string;
let layout: string;
let storage: string;
let open: Registry;
let basic: Registry;
let token: Registry;
let tokens: Awaited<ReturnType<typeof startTokenServer>>;
let mainDigest: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "sandbox-images-"));
  ({ layout } = buildFixtures(work));
  storage = join(work, "registry-data");
  open = await startRegistry(work, storage, undefined);
  skopeo(`oci:${layout}:main`, `docker://${open.host}/test/main:1`);
  skopeo(`oci:${layout}:multi`, `docker://${open.host}/test/multi:1`, { all: true });
  skopeo(`oci:${layout}:alpine`, `docker://${open.host}/alpine:3.23`);
  // The same blobs behind two kinds of authentication.
  basic = await startRegistry(work, storage, { htpasswd: { user: USER.username, password: USER.password } });
  tokens = await startTokenServer({ [USER.username]: USER.password });
  token = await startRegistry(work, storage, { token: { realm: tokens.realm, cert: tokens.cert } });
  skopeo(`oci:${layout}:main-gzip`, `docker-archive:${join(work, "main-docker.tar")}:test/main:1`);
  execFileSync("tar", ["-C", layout, "-cf", join(work, "layout.tar"), "."]);
});

afterAll(async () => {
  await Promise.all([open?.stop(), basic?.stop(), token?.stop(), tokens?.stop()]);
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Runs `fn` with its own, empty image store. */
async function withStore<T>(fn: () => Promise<T>): Promise<T> {
  const before = process.env.SANDBOX_IMAGES_DIR;
  const dir = mkdtempSync(join(tmpdir(), "sandbox-store-"));
  process.env.SANDBOX_IMAGES_DIR = dir;
  try {
    return await fn();
  } finally {
    process.env.SANDBOX_IMAGES_DIR = before;
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("OCI import", () => {
  it("imports from a registry with basic auth; a wrong or missing password is a typed auth error", async () => {
    const ref = `${basic.host}/test/main:1`;
    const wrong = await importImage(ref, { name: "test/main:1", auth: { ...USER, password: "wrong" } }).catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(RegistryAuthError);
    expect((wrong as Error).message).toContain("refused the credentials");
    const none = await importImage(ref, { name: "test/main:1" }).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(RegistryAuthError);
    expect((none as Error).message).toContain("requires authentication");

    const events: string[] = [];
    const image = await importImage(ref, { name: "test/main:1", auth: USER, onProgress: (e) => events.push(e.type) });
    mainDigest = image.digest;
    expect(image.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(image.platform).toBe("linux/amd64");
    expect(image.config).toMatchObject({ env: ["FOO=bar", "PATH=/bin"], workingDir: "/data", user: "app" });
    expect(image.config.resolvedUser).toEqual({ uid: 1000, gid: 1000, groups: [2000], home: "/home/app" });
    expect(events).toEqual(expect.arrayContaining(["resolved", "download", "unpack", "stage"]));
    expect(listImages().find((i) => i.name === "test/main:1")).toMatchObject({ digest: image.digest, source: `registry ${ref}` });
  });

  it("imports through token auth (the registry's token server, JWT), same bytes, same digest", async () => {
    const ref = `${token.host}/test/main:1`;
    const wrong = await importImage(ref, { name: "tok:1", auth: { ...USER, password: "nope" } }).catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(RegistryAuthError);
    const image = await importImage(ref, { name: "tok:1", auth: USER });
    expect(image.digest).toBe(mainDigest);
    expect(tokens.requests).toContain(`${USER.username} repository:test/main:pull`);
  });

  it("speaks TLS to a registry whose certificate a private CA signed, given that CA; refuses without it", async () => {
    const ca = testCa();
    const tls = await startRegistry(work, storage, undefined, { certPem: ca.certPem, keyPem: ca.keyPem });
    try {
      writeFileSync(join(work, "ca.pem"), ca.caPem);
      const ref = `${tls.host}/test/main:1`;
      const untrusted = await importImage(ref, { name: "tls:1", plainHttp: false }).catch((e: unknown) => e);
      expect(untrusted).toBeInstanceOf(ImageImportError);
      expect((untrusted as ImageImportError).reason).toBe("network");
      const image = await importImage(ref, { name: "tls:1", plainHttp: false, caCertificates: [join(work, "ca.pem")] });
      expect(image.digest).toBe(mainDigest);
    } finally {
      await tls.stop();
    }
  });

  it("boots the image: files, modes, owners, whiteouts, opaque dir, hardlinks, symlink, xattr, Env/WorkingDir/User", async () => {
    await using lane = await defineSandbox({ rootfs: rootfs.builtIn("test/main:1") }).boot();
    const script = [
      "echo cwd=$(pwd) foo=$FOO home=$HOME user=$(id -u):$(id -g) groups=$(id -G)",
      "cat /data/new /opq/upper",
      "ls /opq | tr '\\n' ' '; echo",
      "for p in /del/me /del/keep2; do test -e $p && echo present:$p || echo gone:$p; done; cat /del/keep",
      "stat -c '%n %a %u %g' /bin/suid /data/owned",
      "stat -c '%i %h' /data/linka /data/linkb | sort -u | wc -l; stat -c %h /data/linka",
      "readlink /data/sym",
      "getxattr /data/xattr user.torkbot; echo",
      "ls -d /dev /proc /sys /run /tmp /mnt /workspace",
    ].join("; ");
    const r = await lane.exec("sh", ["-c", script]);
    expect(r.stderr).toBe("");
    expect(r.stdout.split("\n")).toEqual([
      "cwd=/data foo=bar home=/home/app user=1000:1000 groups=1000 2000",
      "new",
      "upper",
      "upper ",
      "gone:/del/me",
      "gone:/del/keep2",
      "del/keep",
      "/bin/suid 4755 0 0",
      "/data/owned 640 1000 2000",
      "1",
      "2",
      "keep",
      "hello",
      "/dev",
      "/mnt",
      "/proc",
      "/run",
      "/sys",
      "/tmp",
      "/workspace",
      "",
    ]);
    // The boot's own options still win over the image's defaults.
    const own = await lane.exec("sh", ["-c", "pwd; echo $FOO"], { cwd: "/", env: { FOO: "mine" } });
    expect(own.stdout).toBe("/\nmine\n");
  });

  it("gives the same digest from an OCI layout, an OCI archive and a second import; a docker archive boots too", async () => {
    const fromLayout = await importImage(`oci:${layout}:main`, { name: "layout/main:1" });
    expect(fromLayout.digest).toBe(mainDigest);
    const fromArchive = await importImage(`oci-archive:${join(work, "layout.tar")}:main`, { name: "archive/main:1" });
    expect(fromArchive.digest).toBe(mainDigest);
    // A second, independent import (own store, own scratch files) is bit for bit the same.
    const again = await withStore(() => importImage(`${open.host}/test/main:1`));
    expect(again.name).toBe(`${open.host}/test/main:1`);
    expect(again.digest).toBe(mainDigest);

    await withStore(async () => {
      const docker = await importImage(join(work, "main-docker.tar"));
      expect(docker.name).toBe("test/main:1"); // the archive's repo tag
      await using lane = await defineSandbox({ rootfs: rootfs.builtIn(docker.name) }).boot();
      const r = await lane.exec("sh", ["-c", "cat /data/new; test -e /del/me || echo gone; getxattr /data/xattr user.torkbot; echo; id -u; pwd"]);
      expect(r.stdout).toBe("new\ngone\nhello\n1000\n/data\n");
    });
  });

  it("narrows a multi-platform index to this host's platform", async () => {
    const multi = await importImage(`${open.host}/test/multi:1`, { name: "multi:1" });
    // The amd64 entry is main's manifest (the arm64 one, listed first, has a /arch marker).
    expect(multi.digest).toBe(mainDigest);
    expect(multi.manifestDigest).not.toBe(mainDigest);
    expect((await importImage(`oci:${layout}:multi`, { name: "multi:2" })).digest).toBe(mainDigest);
  });

  it("refuses a blob whose bytes do not match its digest (layout and registry), importing nothing", async () => {
    const bad = join(work, "layout-bad");
    cpSync(layout, bad, { recursive: true });
    const index = JSON.parse(readFileSync(join(bad, "index.json"), "utf8"));
    const manifestDigest = index.manifests.find((m: { annotations: Record<string, string> }) => m.annotations["org.opencontainers.image.ref.name"] === "main").digest;
    const manifest = JSON.parse(readFileSync(join(bad, "blobs/sha256", manifestDigest.slice(7)), "utf8"));
    const layer = manifest.layers[1].digest as string;
    const file = join(bad, "blobs/sha256", layer.slice(7));
    const bytes = readFileSync(file);
    bytes[bytes.length - 20] ^= 0x01;
    writeFileSync(file, bytes);
    const before = listImages().length;
    const err = await importImage(`oci:${bad}:main`, { name: "bad:1" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageDigestMismatchError);
    const e = err as ImageDigestMismatchError;
    expect(e.expected).toBe(layer);
    expect(e.actual).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(e.actual).not.toBe(e.expected);
    expect(e.message).toContain(layer);
    expect(e.message).toContain(e.actual);

    // A registry serving altered bytes: a repository of its own, its layer flipped on disk.
    const own = join(work, "tamper");
    execFileSync("umoci", ["init", "--layout", own]);
    execFileSync("umoci", ["new", "--image", `${own}:t`]);
    execFileSync("umoci", ["unpack", "--rootless", "--image", `${own}:t`, join(work, "tamper-bundle")]);
    writeFileSync(join(work, "tamper-bundle/rootfs/unique"), `${Date.now()}\n`.repeat(1000));
    execFileSync("umoci", ["repack", "--image", `${own}:t`, join(work, "tamper-bundle")]);
    skopeo(`oci:${own}:t`, `docker://${open.host}/tamper:1`);
    const ownIndex = JSON.parse(readFileSync(join(own, "index.json"), "utf8"));
    const ownManifest = JSON.parse(readFileSync(join(own, "blobs/sha256", ownIndex.manifests[0].digest.slice(7)), "utf8"));
    tamperRegistryBlob(storage, ownManifest.layers[0].digest);
    const remote = await importImage(`${open.host}/tamper:1`).catch((e: unknown) => e);
    expect(remote).toBeInstanceOf(ImageDigestMismatchError);
    expect((remote as ImageDigestMismatchError).expected).toBe(ownManifest.layers[0].digest);
    expect(listImages().length).toBe(before);
  });

  it("runs the specification's first example verbatim after importing alpine:3.23", async () => {
    const err = await defineSandbox({ rootfs: rootfs.builtIn("alpine:3.23") }).boot().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnknownImageError);
    expect((err as Error).message).toContain("sandbox images import docker.io/library/alpine:3.23 --name alpine:3.23");
    expect((err as UnknownImageError).available).toEqual(expect.arrayContaining(["debian:12", "busybox", "test/main:1"]));

    await importImage(`${open.host}/alpine:3.23`, { name: "alpine:3.23" });

    const workspace = fs.memory({
      files: { "/hello.txt": "hello from the host\n" },
    });
    const sandbox = defineSandbox({
      rootfs: rootfs.builtIn("alpine:3.23"),
    });
    await using lane = await sandbox.boot({
      mounts: { "/workspace": fs.virtual(workspace) },
      cwd: "/workspace",
    });
    const result = await lane.exec("cat", ["hello.txt"]);

    expect(result).toMatchObject({ exitCode: 0, stdout: "hello from the host\n" });
  });

  it("rootfs.image pins a file by digest: checked before boot, usable as an ephemeral base", async () => {
    const main = listImages().find((i) => i.name === "test/main:1")!;
    const wrongDigest = `sha256:${"0".repeat(64)}`;
    const t0 = performance.now();
    const err = await defineSandbox({ rootfs: rootfs.image({ path: main.path, digest: wrongDigest }) }).boot().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageDigestMismatchError);
    expect((err as Error).message).toContain(wrongDigest);
    expect((err as Error).message).toContain(main.digest);
    expect(performance.now() - t0).toBeLessThan(5000); // no VM was started
    expect(() => rootfs.image({ path: main.path, digest: "latest" })).toThrow(SandboxConfigError);

    const pinned = rootfs.image({ path: main.path, digest: main.digest });
    await using lane = await defineSandbox({ rootfs: rootfs.ephemeral({ base: pinned }) }).boot();
    // A plain file has no image config: root, cwd /.
    const r = await lane.exec("sh", ["-c", "echo written > /data/scratch && cat /data/scratch /data/new && id -u && pwd"]);
    expect(r.stdout).toBe("written\nnew\n0\n/\n");
    expect(lane.info.image).toBe(main.path);
  });

  it("CLI: images lists name/tag/digest/size/source, import reads the password from stdin, run without a command runs the image's Cmd, rm removes", () => {
    const env = process.env;
    const imp = spawnSync(process.execPath, [cli, "images", "import", `${basic.host}/alpine:3.23`, "--name", "cli/alpine:1", "--username", USER.username, "--password-stdin"], {
      input: `${USER.password}\n`,
      encoding: "utf8",
      env,
    });
    expect(imp.stderr).not.toContain("FAILED");
    expect(imp.status).toBe(0);
    expect(imp.stdout).toMatch(/^cli\/alpine:1 sha256:[0-9a-f]{64} /);

    const ls = spawnSync(process.execPath, [cli, "images"], { encoding: "utf8", env });
    expect(ls.status).toBe(0);
    expect(ls.stdout).toMatch(/^NAME\s+TAG\s+DIGEST\s+SIZE\s+SOURCE$/m);
    expect(ls.stdout).toMatch(/^busybox\s+-\s+sha256:[0-9a-f]{12}\s+[\d.]+ MiB\s+built-in$/m);
    expect(ls.stdout).toMatch(new RegExp(`^cli/alpine\\s+1\\s+sha256:[0-9a-f]{12}\\s+[\\d.]+ MiB\\s+registry ${basic.host}/alpine:3.23$`, "m"));

    const runCmd = spawnSync(process.execPath, [cli, "run", "--image", "test/main:1"], { encoding: "utf8", env, timeout: 120_000 });
    expect(runCmd.stdout).toBe("from-cmd 1000\n");
    expect(runCmd.status).toBe(0);

    const rm = spawnSync(process.execPath, [cli, "images", "rm", "cli/alpine:1"], { encoding: "utf8", env });
    expect(rm.status).toBe(0);
    expect(rm.stdout).toContain("untagged cli/alpine:1");
    expect(listImages().some((i) => i.name === "cli/alpine:1")).toBe(false);
    // alpine:3.23 is the same image: its file stays.
    expect(listImages().some((i) => i.name === "alpine:3.23")).toBe(true);
  });

  it("removeImage deletes the file once no name is left; built-in images are not removable", async () => {
    const { digest } = listImages().find((i) => i.name === "multi:1")!;
    await removeImage("multi:2");
    const r = await removeImage(digest);
    expect(r.deletedDigest).toBe(digest);
    expect(listImages().some((i) => i.digest === digest)).toBe(false);
    await expect(removeImage("busybox")).rejects.toThrow(/built-in/);
  });
});
