/**
 * Real OCI images and registries for the image tests, built here from the
 * host's static busybox with umoci (layers, whiteouts, config), Python's
 * tarfile (a hand-made layer: opaque dir, hardlinks, owner, xattr), zstd and
 * skopeo (archives, pushes), and served by Debian's docker-registry (the
 * CNCF distribution registry) on 127.0.0.1 with htpasswd or token auth.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash, generateKeyPairSync, createSign, randomBytes } from "node:crypto";
import { chmodSync, cpSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { createConnection, createServer as createNetServer } from "node:net";
import { join } from "node:path";
import forge from "node-forge";

const run = (cmd: string, args: string[], opts: { cwd?: string; input?: string } = {}) =>
  execFileSync(cmd, args, { stdio: ["pipe", "pipe", "pipe"], encoding: "utf8", ...opts });

const sha256 = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

async function waitHttp(url: string, timeoutMs = 15_000, tls = false): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (tls) {
        // Any TCP answer will do: the test's own client checks the certificate.
        await new Promise<void>((resolve, reject) => {
          const u = new URL(url);
          const s = createConnection(Number(u.port), u.hostname, () => (s.end(), resolve()));
          s.on("error", reject);
        });
        return;
      }
      const r = await fetch(url);
      await r.arrayBuffer();
      return;
    } catch (err) {
      if (Date.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export interface Registry {
  /** host:port */
  host: string;
  stop(): Promise<void>;
}

/**
 * docker-registry on 127.0.0.1 over `storage` (several registries may share
 * it: one open for seeding, others with auth in front of the same blobs).
 */
export async function startRegistry(
  work: string,
  storage: string,
  auth: { htpasswd: { user: string; password: string } } | { token: { realm: string; cert: string } } | undefined,
  tls?: { certPem: string; keyPem: string },
): Promise<Registry> {
  const port = await freePort();
  const dir = join(work, `registry-${port}`);
  mkdirSync(dir, { recursive: true });
  let authYaml = "";
  if (auth && "htpasswd" in auth) {
    run("htpasswd", ["-Bbc", join(dir, "htpasswd"), auth.htpasswd.user, auth.htpasswd.password]);
    authYaml = `auth:\n  htpasswd:\n    realm: test\n    path: ${join(dir, "htpasswd")}\n`;
  } else if (auth && "token" in auth) {
    writeFileSync(join(dir, "token.pem"), auth.token.cert);
    authYaml =
      `auth:\n  token:\n    realm: ${auth.token.realm}\n    service: test-registry\n    issuer: test-issuer\n` +
      `    rootcertbundle: ${join(dir, "token.pem")}\n`;
  }
  let tlsYaml = "";
  if (tls) {
    writeFileSync(join(dir, "tls.crt"), tls.certPem);
    writeFileSync(join(dir, "tls.key"), tls.keyPem);
    tlsYaml = `  tls:\n    certificate: ${join(dir, "tls.crt")}\n    key: ${join(dir, "tls.key")}\n`;
  }
  writeFileSync(
    join(dir, "config.yml"),
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${storage}\n  delete:\n    enabled: true\n` +
      `http:\n  addr: 127.0.0.1:${port}\n${tlsYaml}${authYaml}`,
  );
  const child: ChildProcess = spawn("docker-registry", ["serve", join(dir, "config.yml")], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  await waitHttp(`http://127.0.0.1:${port}/v2/`, 15_000, tls !== undefined).catch((err) => {
    child.kill("SIGKILL");
    throw new Error(`docker-registry did not start: ${stderr || (err as Error).message}`);
  });
  return {
    host: `127.0.0.1:${port}`,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

/**
 * A token server as Docker Hub and most registries run one: checks basic
 * credentials and answers a JWT (RS256, x5c) the registry trusts.
 */
export async function startTokenServer(users: Record<string, string>): Promise<{ realm: string; cert: string; requests: string[]; stop(): Promise<void> }> {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: "spki", format: "pem" }) as string);
  cert.serialNumber = "01";
  cert.validity.notBefore = new Date(Date.now() - 86_400_000);
  cert.validity.notAfter = new Date(Date.now() + 86_400_000);
  const subject = [{ name: "commonName", value: "test-issuer" }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.sign(forge.pki.privateKeyFromPem(privateKey.export({ type: "pkcs1", format: "pem" }) as string), forge.md.sha256.create());
  const certPem = forge.pki.certificateToPem(cert);
  const certDer = Buffer.from(forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes(), "binary").toString("base64");
  const b64url = (b: Buffer | string) => Buffer.from(b).toString("base64url");
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    const [user, pass] = Buffer.from((req.headers.authorization ?? "").replace(/^Basic /, ""), "base64").toString().split(":");
    requests.push(`${user ?? "-"} ${url.searchParams.get("scope") ?? ""}`);
    if (!user || users[user] !== pass) {
      res.writeHead(401, { "content-type": "application/json" }).end(JSON.stringify({ details: "bad credentials" }));
      return;
    }
    const scope = url.searchParams.get("scope") ?? "";
    const [, name, actions] = scope.split(":");
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: "RS256", typ: "JWT", x5c: [certDer] };
    const claims = {
      iss: "test-issuer",
      sub: user,
      aud: url.searchParams.get("service"),
      exp: now + 600,
      nbf: now - 60,
      iat: now,
      jti: randomBytes(8).toString("hex"),
      access: name ? [{ type: "repository", name, actions: (actions ?? "pull").split(",") }] : [],
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = createSign("RSA-SHA256").update(input).sign(privateKey);
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token: `${input}.${b64url(sig)}`, expires_in: 600 }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const { port } = server.address() as { port: number };
  return { realm: `http://127.0.0.1:${port}/token`, cert: certPem, requests, stop: () => new Promise((r) => server.close(() => r())) };
}

/** A private CA and a server certificate for 127.0.0.1 it signed (PEM). */
export function testCa(): { caPem: string; certPem: string; keyPem: string } {
  const make = (subject: string, issuer: forge.pki.Certificate | undefined, signer: forge.pki.rsa.PrivateKey | undefined) => {
    const keys = forge.pki.rsa.generateKeyPair(2048);
    const c = forge.pki.createCertificate();
    c.publicKey = keys.publicKey;
    c.serialNumber = Math.floor(Math.random() * 1e9).toString(16);
    c.validity.notBefore = new Date(Date.now() - 86_400_000);
    c.validity.notAfter = new Date(Date.now() + 86_400_000);
    c.setSubject([{ name: "commonName", value: subject }]);
    c.setIssuer(issuer ? issuer.subject.attributes : [{ name: "commonName", value: subject }]);
    c.setExtensions(
      issuer
        ? [{ name: "basicConstraints", cA: false }, { name: "subjectAltName", altNames: [{ type: 7, ip: "127.0.0.1" }] }, { name: "extKeyUsage", serverAuth: true }]
        : [{ name: "basicConstraints", cA: true }, { name: "keyUsage", keyCertSign: true, cRLSign: true }],
    );
    c.sign(signer ?? keys.privateKey, forge.md.sha256.create());
    return { cert: c, keys };
  };
  const ca = make("sandbox test CA", undefined, undefined);
  const leaf = make("127.0.0.1", ca.cert, ca.keys.privateKey);
  return { caPem: forge.pki.certificateToPem(ca.cert), certPem: forge.pki.certificateToPem(leaf.cert), keyPem: forge.pki.privateKeyToPem(leaf.keys.privateKey) };
}

const XATTR_TOOL = `#include <stdio.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
  char buf[4096];
  if (argc != 3) { fprintf(stderr, "usage: getxattr PATH NAME\\n"); return 2; }
  ssize_t n = getxattr(argv[1], argv[2], buf, sizeof buf);
  if (n < 0) { perror("getxattr"); return 1; }
  fwrite(buf, 1, (size_t)n, stdout);
  return 0;
}
`;

/** A rootfs with busybox (static, from Debian's busybox-static) and a static getxattr. */
function busyboxRoot(root: string, work: string): void {
  mkdirSync(join(root, "bin"), { recursive: true });
  cpSync("/bin/busybox", join(root, "bin", "busybox"));
  // Relative links (`busybox --install -s` would point at this host's path).
  for (const applet of run("/bin/busybox", ["--list"]).split("\n")) {
    if (applet && !["busybox", "init", "linuxrc"].includes(applet)) symlinkSync("busybox", join(root, "bin", applet));
  }
  writeFileSync(join(work, "getxattr.c"), XATTR_TOOL);
  run("gcc", ["-static", "-O2", "-o", join(root, "bin", "getxattr"), join(work, "getxattr.c")]);
}

/** The hand-made third layer: what umoci cannot express from a directory diff. */
const LAYER3 = String.raw`
import io, sys, tarfile
t = tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT)
def add(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, link="", pax=None):
    i = tarfile.TarInfo(name); i.type = kind; i.mode = mode; i.uid = uid; i.gid = gid
    i.mtime = 1700000000; i.linkname = link
    if pax: i.pax_headers = pax
    if kind == tarfile.REGTYPE:
        i.size = len(data); t.addfile(i, io.BytesIO(data))
    else:
        t.addfile(i)
add("opq", tarfile.DIRTYPE, mode=0o755)
add("opq/.wh..wh..opq")
add("opq/upper", data=b"upper\n")
add("data", tarfile.DIRTYPE, mode=0o755)
add("data/owned", data=b"mine\n", mode=0o640, uid=1000, gid=2000)
add("data/xattr", data=b"x\n", pax={"SCHILY.xattr.user.torkbot": "hello"})
add("data/linka", data=b"linked\n")
add("data/linkb", tarfile.LNKTYPE, link="data/linka")
add("data/sym", tarfile.SYMTYPE, link="keep", mode=0o777)
add("del/.wh.keep2")
t.close()
`;

export interface Fixtures {
  /** OCI layout with tags main (3 layers, last zstd), main-gzip (same, all gzip), multi (index: arm64 first, amd64), alpine (one layer). */
  layout: string;
  /** Manifest digest of `main`. */
  mainManifest: string;
}

/** Replaces a layout manifest's layer `index` by a zstd copy of the same tar (diff_id unchanged). */
function zstdLayer(layout: string, tag: string, index: number, tarPath: string): void {
  const blobs = join(layout, "blobs", "sha256");
  const idx = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
  const desc = idx.manifests.find((m: { annotations?: Record<string, string> }) => m.annotations?.["org.opencontainers.image.ref.name"] === tag);
  const manifest = JSON.parse(readFileSync(join(blobs, desc.digest.slice(7)), "utf8"));
  const zst = execFileSync("zstd", ["-q", "-c", "-3", tarPath]);
  writeFileSync(join(blobs, sha256(zst)), zst);
  manifest.layers[index] = { mediaType: "application/vnd.oci.image.layer.v1.tar+zstd", digest: `sha256:${sha256(zst)}`, size: zst.length };
  const bytes = Buffer.from(JSON.stringify(manifest));
  writeFileSync(join(blobs, sha256(bytes)), bytes);
  desc.digest = `sha256:${sha256(bytes)}`;
  desc.size = bytes.length;
  writeFileSync(join(layout, "index.json"), JSON.stringify(idx));
}

function manifestDescriptor(layout: string, tag: string): { mediaType: string; digest: string; size: number } {
  const idx = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
  const d = idx.manifests.find((m: { annotations?: Record<string, string> }) => m.annotations?.["org.opencontainers.image.ref.name"] === tag);
  return { mediaType: d.mediaType, digest: d.digest, size: d.size };
}

export function buildFixtures(work: string): Fixtures {
  const layout = join(work, "layout");
  const bundle = join(work, "bundle");
  const umoci = (...args: string[]) => run("umoci", args);
  umoci("init", "--layout", layout);

  // main, layer 1: busybox, users, and paths later layers delete or hide.
  umoci("new", "--image", `${layout}:main`);
  umoci("unpack", "--rootless", "--image", `${layout}:main`, bundle);
  const root = join(bundle, "rootfs");
  busyboxRoot(root, work);
  for (const d of ["etc", "del", "opq", "data", "home/app"]) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n");
  writeFileSync(join(root, "etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n");
  for (const f of ["del/me", "del/keep", "del/keep2", "opq/lower1", "data/keep"]) writeFileSync(join(root, f), `${f}\n`);
  // --refresh-bundle: the next repack diffs against this state (one new layer, with whiteouts).
  umoci("repack", "--refresh-bundle", "--image", `${layout}:main`, bundle);

  // Layer 2 (umoci's own diff): a deletion (whiteout), a new file, a setuid program.
  rmSync(join(root, "del/me"));
  writeFileSync(join(root, "data/new"), "new\n");
  writeFileSync(join(root, "bin/suid"), "#!/bin/sh\nid -u\n");
  chmodSync(join(root, "bin/suid"), 0o4755);
  umoci("repack", "--image", `${layout}:main`, bundle);

  // Layer 3 (hand-made, zstd): opaque dir, owner, xattr, hardlink, symlink, a second whiteout.
  const l3 = join(work, "layer3.tar");
  writeFileSync(join(work, "layer3.py"), LAYER3);
  run("python3", [join(work, "layer3.py"), l3]);
  umoci("raw", "add-layer", "--image", `${layout}:main`, l3);
  umoci(
    "config",
    "--image",
    `${layout}:main`,
    "--config.env",
    "FOO=bar",
    "--config.env",
    "PATH=/bin",
    "--config.workingdir",
    "/data",
    "--config.user",
    "app",
    "--config.cmd",
    "/bin/sh",
    "--config.cmd",
    "-c",
    "--config.cmd",
    "echo from-cmd $(id -u)",
  );
  // Docker archives cannot hold zstd layers: main-gzip is main before the zstd step.
  umoci("tag", "--image", `${layout}:main`, "main-gzip");
  zstdLayer(layout, "main", 2, l3);
  rmSync(bundle, { recursive: true, force: true });

  // alpine: one plain busybox layer (the specification's example runs on it).
  umoci("new", "--image", `${layout}:alpine`);
  umoci("unpack", "--rootless", "--image", `${layout}:alpine`, bundle);
  busyboxRoot(join(bundle, "rootfs"), work);
  umoci("repack", "--image", `${layout}:alpine`, bundle);
  rmSync(bundle, { recursive: true, force: true });

  // other: what the arm64 entry of the index points at (a marker file says which one booted).
  umoci("new", "--image", `${layout}:other`);
  umoci("unpack", "--rootless", "--image", `${layout}:other`, bundle);
  busyboxRoot(join(bundle, "rootfs"), work);
  writeFileSync(join(bundle, "rootfs", "arch"), "arm64\n");
  umoci("repack", "--image", `${layout}:other`, bundle);
  rmSync(bundle, { recursive: true, force: true });

  // multi: an image index, arm64 listed first so "take the first" would be wrong.
  const main = manifestDescriptor(layout, "main");
  const other = manifestDescriptor(layout, "other");
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [
        { ...other, platform: { os: "linux", architecture: "arm64", variant: "v8" } },
        { ...main, platform: { os: "linux", architecture: "amd64" } },
      ],
    }),
  );
  writeFileSync(join(layout, "blobs", "sha256", sha256(index)), index);
  const idx = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
  idx.manifests.push({
    mediaType: "application/vnd.oci.image.index.v1+json",
    digest: `sha256:${sha256(index)}`,
    size: index.length,
    annotations: { "org.opencontainers.image.ref.name": "multi" },
  });
  writeFileSync(join(layout, "index.json"), JSON.stringify(idx));
  return { layout, mainManifest: main.digest };
}

/** skopeo copy, no TLS, optional destination credentials. */
export function skopeo(src: string, dest: string, opts: { creds?: string; all?: boolean } = {}): void {
  run("skopeo", [
    "copy",
    "--quiet",
    ...(opts.all ? ["--all"] : []),
    "--dest-tls-verify=false",
    ...(opts.creds ? ["--dest-creds", opts.creds] : []),
    src,
    dest,
  ]);
}

/** Flips one byte in the middle of a blob the registry stores (it serves what it has, unverified). */
export function tamperRegistryBlob(storage: string, digest: string): void {
  const hex = digest.slice(7);
  const file = join(storage, "docker", "registry", "v2", "blobs", "sha256", hex.slice(0, 2), hex, "data");
  const b = readFileSync(file);
  b[Math.floor(b.length / 2)] ^= 0xff;
  writeFileSync(file, b);
}

