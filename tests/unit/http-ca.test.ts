/**
 * The per-sandbox CA and its leaf certificates, checked by an independent
 * verifier (the host's `openssl verify -x509_strict`) and by Node's TLS.
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { createSandboxCa, generateRsaKey } from "../../src/network/http/ca.js";
import { LeafCertificates } from "../../src/network/http/leaf-certs.js";

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), "http-ca-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("sandbox CA", () => {
  it("issues leaves that openssl verifies strictly for their hostname only", async () => {
    const ca = await createSandboxCa();
    const key = await generateRsaKey();
    const leaf = ca.issueLeaf("api.example.com", key);
    writeFileSync(join(dir, "ca.pem"), ca.certPem);
    writeFileSync(join(dir, "leaf.pem"), leaf);
    const ok = await run("openssl", ["verify", "-x509_strict", "-purpose", "sslserver", "-verify_hostname", "api.example.com", "-CAfile", join(dir, "ca.pem"), join(dir, "leaf.pem")]);
    expect(ok.stdout.trim()).toBe(`${join(dir, "leaf.pem")}: OK`);
    const wrong = await run("openssl", ["verify", "-verify_hostname", "evil.example.com", "-CAfile", join(dir, "ca.pem"), join(dir, "leaf.pem")]).catch((e) => e);
    expect(wrong.code).not.toBe(0);

    const c = new X509Certificate(ca.certPem);
    expect(c.ca).toBe(true);
    expect(c.subject).toContain("CN=torkbot sandbox interception CA");
    const l = new X509Certificate(leaf);
    expect(l.ca).toBe(false);
    expect(l.subjectAltName).toBe("DNS:api.example.com");
    expect(l.checkIssued(c)).toBe(true);
    expect(l.verify(c.publicKey)).toBe(true);
    expect(new Date(l.validFrom).getTime()).toBeLessThan(Date.now());
  });

  it("never serializes its private key", async () => {
    const ca = await createSandboxCa();
    const json = JSON.stringify({ ca });
    expect(json).toContain("BEGIN CERTIFICATE");
    expect(json).not.toContain("PRIVATE KEY");
    expect(ca.certPem).not.toContain("\r");
    expect(Object.keys(ca)).not.toContain("key");
  });

  it("caches one TLS context per hostname and shares one leaf key", async () => {
    const ca = await createSandboxCa();
    const leaves = new LeafCertificates(ca, { maxEntries: 2 });
    const a1 = leaves.contextFor("a.test");
    const a2 = leaves.contextFor("a.test");
    expect(a1).toBe(a2);
    await a1;
    const pa = new X509Certificate(await leaves.certificateFor("a.test")).publicKey;
    const pb = new X509Certificate(await leaves.certificateFor("b.test")).publicKey;
    expect(pa.export({ type: "spki", format: "pem" })).toBe(pb.export({ type: "spki", format: "pem" }));
    await leaves.contextFor("b.test");
    await leaves.contextFor("c.test");
    // LRU bound: a.test was evicted and is made again.
    expect(leaves.contextFor("a.test")).not.toBe(a1);
  });
});
