/**
 * The sandbox HTTP interception CA inside real guests: where init puts it,
 * that TLS tooling finds it through the environment, that a read-only image's
 * trust store stays untouched, that a writable root gets it installed with the
 * image's own update-ca-certificates, and that a writable root without an
 * installer fails boot closed — unless the CA only came with a network policy,
 * where it is staged under /run with a warning.
 */
import { describe, expect, it } from "vitest";
import { defineSandbox, network, rootfs, SandboxBootError, type LaneEvent } from "../../src/index.js";
import { createSandboxCa, generateRsaKey } from "../../src/network/http/ca.js";

const ca = await createSandboxCa({ commonName: "e2e sandbox CA" });
const leafKey = await generateRsaKey();
// A server certificate the guest should accept for api.test only through our CA.
const leafPem = ca.issueLeaf("api.test", leafKey);

const b64 = (s: string) => Buffer.from(s).toString("base64");
/** Writes `text` to `path` in the guest through base64 (no stdin plumbing needed). */
const put = (path: string, text: string) => `echo ${b64(text)} | base64 -d > ${path}`;

const PY_CHECK = [
  "import ssl",
  "ctx = ssl.create_default_context()",
  "print('ours-loaded', any(dict(x[0] for x in c['subject']).get('commonName') == 'e2e sandbox CA' for c in ctx.get_ca_certs()))",
].join("\n");

describe("interception CA in the guest", () => {
  it("read-only debian:12: kept under /run, found via env vars, trust store untouched", async () => {
    const sandbox = defineSandbox({ rootfs: rootfs.builtIn("debian:12") });
    await using lane = await sandbox.boot({ interceptCa: ca });
    const cert = await lane.exec("cat", ["/run/sandbox/ca.crt"]);
    expect(cert.stdout.trim()).toBe(ca.certPem.trim());

    const env = await lane.exec("sh", ["-c", "env | grep -E '^(SSL_CERT_FILE|CURL_CA_BUNDLE|REQUESTS_CA_BUNDLE|GIT_SSL_CAINFO|NODE_EXTRA_CA_CERTS)=' | sort"]);
    expect(env.stdout).toBe(
      [
        "CURL_CA_BUNDLE=/run/sandbox/ca-bundle.crt",
        "GIT_SSL_CAINFO=/run/sandbox/ca-bundle.crt",
        "NODE_EXTRA_CA_CERTS=/run/sandbox/ca.crt",
        "REQUESTS_CA_BUNDLE=/run/sandbox/ca-bundle.crt",
        "SSL_CERT_FILE=/run/sandbox/ca-bundle.crt",
        "",
      ].join("\n"),
    );

    // The bundle is the image's roots plus ours; openssl verifies our leaf with it.
    const verify = await lane.exec("sh", [
      "-c",
      `${put("/tmp/leaf.pem", leafPem)} && openssl verify -CAfile "$SSL_CERT_FILE" -x509_strict /tmp/leaf.pem && ` +
        `grep -c 'BEGIN CERTIFICATE' /run/sandbox/ca-bundle.crt /etc/ssl/certs/ca-certificates.crt`,
    ]);
    expect(verify.stderr).toBe("");
    expect(verify.stdout).toContain("/tmp/leaf.pem: OK");
    const counts = Object.fromEntries(
      verify.stdout.trim().split("\n").slice(1).map((l) => l.split(":") as [string, string]),
    );
    expect(Number(counts["/run/sandbox/ca-bundle.crt"])).toBe(Number(counts["/etc/ssl/certs/ca-certificates.crt"]) + 1);
    expect(Number(counts["/etc/ssl/certs/ca-certificates.crt"])).toBeGreaterThan(50);

    // Python's default context loads it through SSL_CERT_FILE, and not without it.
    const py = await lane.exec("python3", ["-c", PY_CHECK]);
    expect(py.stdout.trim()).toBe("ours-loaded True");
    const pyNoEnv = await lane.exec("env", ["-u", "SSL_CERT_FILE", "python3", "-c", PY_CHECK]);
    expect(pyNoEnv.stdout.trim()).toBe("ours-loaded False");

    // The image's trust store does not know our CA; the root is still read-only.
    const store = await lane.exec("sh", [
      "-c",
      `grep -c "${ca.certPem.split("\n")[1]}" /etc/ssl/certs/ca-certificates.crt; ls -A /usr/local/share/ca-certificates | wc -l; grep ' / ' /proc/mounts`,
    ]);
    expect(store.stdout).toMatch(/^0\n0\n\/dev\/vda \/ ext4 ro/);
    // Nothing in the guest holds a private key.
    const keys = await lane.exec("sh", ["-c", "grep -rl 'PRIVATE KEY' /run /tmp 2>/dev/null | wc -l"]);
    expect(keys.stdout.trim()).toBe("0");
  });

  it("ephemeral debian:12: installed in the trust store, as update-ca-certificates would", async () => {
    const sandbox = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }) });
    // A promise: the boot awaits it only when the guest asks for its configuration.
    await using lane = await sandbox.boot({ interceptCa: Promise.resolve(ca) });
    const r = await lane.exec("sh", [
      "-c",
      `${put("/tmp/leaf.pem", leafPem)} && cmp /usr/local/share/ca-certificates/torkbot-sandbox.crt /run/sandbox/ca.crt && ` +
        // No -CAfile and no env: the system store itself trusts it now.
        `env -u SSL_CERT_FILE openssl verify /tmp/leaf.pem && echo "SSL_CERT_FILE=$SSL_CERT_FILE"`,
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toContain("/tmp/leaf.pem: OK");
    expect(r.stdout).toContain("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt");
    const py = await lane.exec("env", ["-u", "SSL_CERT_FILE", "python3", "-c", PY_CHECK]);
    expect(py.stdout.trim()).toBe("ours-loaded True");

    // CApath lookups find it too (the subject-hash link), and the image's own
    // update-ca-certificates, run afterwards, agrees with what init wrote.
    const snapshot =
      "openssl verify -no-CAfile -CApath /etc/ssl/certs /tmp/leaf.pem && " +
      "find /etc/ssl/certs -lname '*torkbot*' -printf '%f -> %l\\n' | sort && " +
      "grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt";
    const ours = await lane.exec("sh", ["-c", snapshot]);
    expect(ours.stderr).toBe("");
    expect(ours.stdout).toMatch(/^\/tmp\/leaf.pem: OK\n[0-9a-f]{8}\.0 -> torkbot-sandbox.pem\ntorkbot-sandbox.pem -> \/usr\/local\/share\/ca-certificates\/torkbot-sandbox.crt\n\d+\n$/);
    const script = await lane.exec("update-ca-certificates", [], { timeoutMs: 300_000 });
    expect(script.exitCode).toBe(0);
    const theirs = await lane.exec("sh", ["-c", snapshot]);
    expect(theirs.stdout).toBe(ours.stdout);
  }, 400_000);

  it("a writable root without update-ca-certificates (busybox, ephemeral) fails boot closed", async () => {
    const sandbox = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("busybox") }) });
    const err = await sandbox.boot({ interceptCa: ca }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SandboxBootError);
    expect((err as SandboxBootError).stage).toBe("ca");
    expect((err as SandboxBootError).message).toMatch(/no supported trust-store installer.*update-ca-certificates/);
  });

  it("a network policy on busybox, ephemeral (no installer): boots, CA staged under /run, a warning says so", async () => {
    const events: LaneEvent[] = [];
    const sandbox = defineSandbox({
      rootfs: rootfs.ephemeral({ base: rootfs.builtIn("busybox") }),
      network: network.policy(async (conn) => conn.matchDns()?.accept({ resolvers: ["192.0.2.53"] }) ?? false),
    });
    await using lane = await sandbox.boot({ onEvent: (e) => events.push(e) });
    const r = await lane.exec("sh", ["-c", 'test -s /run/sandbox/ca-bundle.crt && echo "$SSL_CERT_FILE"; test -e /etc/ssl/certs/ca-certificates.crt || echo no-system-bundle']);
    expect(r.stdout).toBe("/run/sandbox/ca-bundle.crt\nno-system-bundle\n");
    const warning = events.find((e) => e.type === "diagnostic" && e.level === "warn" && /update-ca-certificates/.test(e.message));
    expect(warning, JSON.stringify(events)).toBeDefined();
  });

  it("read-only busybox (no CA bundle at all): the bundle is our CA alone", async () => {
    const sandbox = defineSandbox({ rootfs: rootfs.builtIn("busybox") });
    await using lane = await sandbox.boot({ interceptCa: ca });
    const r = await lane.exec("sh", ["-c", "cmp /run/sandbox/ca.crt /run/sandbox/ca-bundle.crt && echo same"]);
    expect(r.stdout.trim()).toBe("same");
  });
});
