/**
 * Credentials stay secret, through a real VM in the test's own network namespaces:
 * a secret and a middleware-added token only ever cross the network over verified
 * TLS (asserted on what the fake upstreams logged, TLS or not), and no byte the
 * guest receives carries them back, whatever the upstream echoes and however
 * (headers, body, gzip, tiny chunks, a redirect, TRACE).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSandboxCa, generateRsaKey } from "../../src/network/http/ca.js";
import { ADDR, createNetns, type Netns } from "./netns.js";

const TOKEN = "tok-" + "77c1e0f9b2a64d58";
const API_KEY = "key-" + "c03d9a11e85f4b27";
const CDN_A = "cdn-a-" + "5e0f3b9c1d";
const CDN_B = "cdn-b-" + "a81c44e7f2";

let ns: Netns;
let dir: string;
let upstreamLog: string[];
let r: Record<string, { exitCode: number; stdout: string; stderr: string }>;
let events: { type: string; reason?: string; name?: string; url?: string; verdict?: string; dst?: string }[];
let guestBytes: string;

/** The body of a chunked response as curl --raw printed it. */
function dechunk(raw: string): string {
  let out = "";
  for (let i = 0; ; ) {
    const nl = raw.indexOf("\r\n", i);
    const size = parseInt(raw.slice(i, nl), 16);
    if (!(size > 0)) return out;
    out += raw.slice(nl + 2, nl + 2 + size);
    i = nl + 2 + size + 2;
  }
}

const requests = () =>
  upstreamLog.filter((l) => l.startsWith('{"server"')).map((l) => JSON.parse(l) as { server: string; tls: boolean; method: string; path: string; headers: Record<string, string> });

describe("secrets and middleware credentials stay secret, end to end", () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "secrets-e2e-"));
    const ca = await createSandboxCa({ commonName: "upstream test CA" });
    const key = await generateRsaKey();
    const keyPem = key.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const server = (name: string, ip: string) => ({ name, ip, keyPem, certPem: ca.issueLeaf(name, key) });
    writeFileSync(
      join(dir, "upstream.json"),
      JSON.stringify({
        dnsIp: ADDR.dns,
        zone: { "api.test": ADDR.api, "legacy.test": ADDR.api2, "cdn-a.test": ADDR.other, "cdn-b.test": ADDR.other, "plain.test": ADDR.other },
        raw: [[ADDR.other, 2222]],
        inject: { "inject.attacker.test": { cname: "api.test", ip: ADDR.api3 } },
        // The attacker's server even holds a certificate for api.test: only attribution stands in its way.
        servers: [server("api.test", ADDR.api), server("legacy.test", ADDR.api2), { ...server("api.test", ADDR.api3), label: "attacker" },
          {
            ...server("cdn-a.test", ADDR.other),
            label: "cdn",
            tlsPorts: [443, 8443],
            alternatives: ["cdn-b.test", "plain.test"].map((name) => ({ name, certPem: ca.issueLeaf(name, key) })),
          },
        ],
      }),
    );
    writeFileSync(join(dir, "lane.json"), JSON.stringify({ dnsIp: ADDR.dns, token: TOKEN, apiKey: API_KEY, caPem: ca.certPem, evilIp: ADDR.api3, cdnA: CDN_A, cdnB: CDN_B }));
    ns = createNetns();
    upstreamLog = (await ns.startNode(ns.inet, "secrets-upstream.mjs", [join(dir, "upstream.json")], (l) => l.includes('"ready"'))).lines;
    const { child, lines } = await ns.startNode(ns.host, "secrets-lane.mjs", [join(dir, "lane.json")], (l) => l.startsWith('{"results"'));
    child.kill();
    ({ results: r, events } = JSON.parse(lines.find((l) => l.startsWith('{"results"'))!));
    guestBytes = JSON.stringify(r);
  }, 600_000);
  afterAll(() => {
    ns?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("sends secrets and middleware headers only over verified TLS (403 + event on clear text unless allowInsecure)", () => {
    const placeholder = r.secretEnv!.stdout;
    expect(placeholder).toMatch(/^sandbox-secret-[0-9a-f]{32}$/);
    // Plain HTTP to port 80, and plain HTTP to port 443: refused by the interceptor, nothing went upstream.
    for (const name of ["plain80", "plain443", "plainNoSecret"]) {
      expect([name, r[name]!.stdout.split("\r\n")[0]]).toEqual([name, "HTTP/1.1 403 Forbidden"]);
    }
    expect(r.plain80!.stdout).toContain("only sent over TLS verified for api.test");
    expect(r.plainNoSecret!.stdout).toContain("only go out over verified TLS");
    expect(requests().filter((q) => q.server === "api.test" && q.path.startsWith("/plain"))).toEqual([]);
    // No server ever saw a real credential over clear text, except the one declared allowInsecure.
    const clear = requests().filter((q) => !q.tls);
    expect(clear.map((q) => q.path)).toEqual(["/legacy"]);
    expect(clear[0]!.headers["x-api-key"]).toBe(API_KEY);
    expect(clear[0]!.headers.authorization).toBeUndefined();
    // Over TLS the upstream got the real values.
    const echo = requests().find((q) => q.path === "/echo")!;
    expect(echo).toMatchObject({ tls: true, headers: { "x-api-key": API_KEY, authorization: `Bearer ${TOKEN}` } });
    expect(events.filter((e) => e.type === "secret.refused").map((e) => e.name)).toEqual(["API_KEY", "API_KEY"]);
    expect(events.filter((e) => e.type === "http.denied" && e.reason === "insecure-transport").map((e) => e.url)).toEqual(["/plain80", "/plain443", "/plain-middleware"]);
  });

  it("scrubs every secret and middleware value from what the guest receives (echo, x-echo-*, gzip, chunks, redirect); TRACE refused", () => {
    const placeholder = r.secretEnv!.stdout;
    // The upstream did echo them (the test would see a leak)...
    for (const path of ["/echo", "/echo-h2", "/echo-gzip", "/echo-chunks", "/redirect"]) {
      expect([path, requests().filter((q) => q.path === path).length]).toEqual([path, path === "/echo-gzip" ? 2 : 1]);
    }
    // ...and not one byte the guest got carries a real value.
    expect(guestBytes).not.toContain(API_KEY);
    expect(guestBytes).not.toContain(TOKEN);
    for (const name of ["echo", "echoGzip", "echoGzipCompressed", "echoChunks", "legacyPlain"]) {
      const out = r[name]!;
      expect([name, out.exitCode, out.stdout.split("\r\n")[0]]).toEqual([name, 0, "HTTP/1.1 200 OK"]);
      expect([name, out.stdout.includes(placeholder)]).toEqual([name, true]);
    }
    expect(r.echo!.stdout.toLowerCase()).toContain(`x-echo-x-api-key: ${placeholder}`);
    expect(r.echo!.stdout.toLowerCase()).toContain("x-echo-authorization: [redacted]");
    // Over HTTP/2 the same scrubbing holds (headers and body).
    expect([r.echoH2!.exitCode, r.echoH2!.stdout.split("\r\n")[0]!.trim()]).toEqual([0, "HTTP/2 200"]);
    expect(r.echoH2!.stdout.toLowerCase()).toContain(`x-echo-x-api-key: ${placeholder}`);
    expect(r.echoH2!.stdout.toLowerCase()).toContain("x-echo-authorization: [redacted]");
    expect(r.echoH2!.stdout).toContain('"authorization":"[redacted]"');
    // The gzip body reached the guest decoded (scanned), without its Content-Encoding.
    expect(r.echoGzip!.stdout.toLowerCase()).not.toContain("content-encoding");
    expect(r.echoGzip!.stdout).toContain('"authorization":"[redacted]"');
    const chunked = r.echoChunks!.stdout;
    expect(chunked).toMatch(/transfer-encoding: chunked/i);
    expect(dechunk(chunked.slice(chunked.indexOf("\r\n\r\n") + 4))).toContain('"authorization":"[redacted]"');
    expect(r.redirect!.stdout).toMatch(/^location: https:\/\/api\.test\/next\?auth=/im);
    // TRACE never left the host.
    expect(r.trace!.stdout.split("\r\n")[0]).toBe("HTTP/1.1 405 Method Not Allowed");
    expect(r.traceH2!.stdout.split("\r\n")[0]!.trim()).toBe("HTTP/2 405");
    expect(requests().filter((q) => q.method === "TRACE")).toEqual([]);
    expect(events.some((e) => e.type === "http.denied" && e.reason === "method-refused")).toBe(true);
  });

  it("attributes an address to the question's answer chain only: a CNAME-injected A record does not make the attacker's IP api.test", () => {
    expect(r.inject!.exitCode).not.toBe(0);
    expect(r.injectResolve!.exitCode).not.toBe(0);
    // The attacker's server never saw a request at all, so no credential either.
    expect(requests().filter((q) => q.server === "attacker")).toEqual([]);
    const toAttacker = events.filter((e) => e.type === "decision" && e.dst?.startsWith(`${ADDR.api3}:`));
    expect(toAttacker.length).toBeGreaterThanOrEqual(2);
    expect(toAttacker.every((e) => e.verdict === "deny")).toBe(true);
  });

  it("serves several accepted names behind one upstream IP, each with its own middleware (SNI picks)", () => {
    for (const [name, path] of [["cdnA", "/cdn-a"], ["cdnB", "/cdn-b"]] as const) {
      expect([name, r[name]!.exitCode, r[name]!.stderr]).toEqual([name, 0, ""]);
      expect(JSON.parse(r[name]!.stdout)).toMatchObject({ host: `${path.slice(1)}.test`, "x-cdn": "[redacted]" });
    }
    const cdn = requests().filter((q) => q.server === "cdn");
    expect(cdn.find((q) => q.path === "/cdn-a")?.headers).toMatchObject({ host: "cdn-a.test", "x-cdn": CDN_A });
    expect(cdn.find((q) => q.path === "/cdn-b")?.headers).toMatchObject({ host: "cdn-b.test", "x-cdn": CDN_B });
    expect(guestBytes).not.toContain(CDN_A);
    expect(guestBytes).not.toContain(CDN_B);
  });

  it("matchHttp works on any port (8443 intercepted) and accept() without middleware fails closed on an SSH banner", () => {
    expect(r.cdnB8443!.exitCode).toBe(0);
    expect(requests().find((q) => q.path === "/p8443")?.headers).toMatchObject({ host: "cdn-b.test:8443", "x-cdn": CDN_B });
    // No middleware: HTTPS still works (through the interceptor), unchanged.
    expect(r.plainTls!.stdout).toBe("200");
    expect(requests().find((q) => q.path === "/plain-tls")?.headers["x-cdn"]).toBeUndefined();
    // The SSH banner: closed without a byte from upstream, and the upstream never saw it.
    expect(r.ssh!.stdout.trim()).toBe("b''");
    expect(upstreamLog.filter((l) => l.includes('"raw"'))).toEqual([]);
    expect(events.some((e) => e.type === "http.protocol-error" && e.reason === "not-http")).toBe(true);
  });
});
