/**
 * HTTP(S) interception through a real VM, in the test's own network namespaces:
 * a DNS server and HTTPS upstreams (certificates from a test CA only the host's
 * interceptor trusts) in "internet"; the lane in "host". The guest runs curl,
 * python urllib, node fetch and git against an allowed host whose middleware
 * injects a bearer token, plus every way around it the issue lists.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSandboxCa, generateRsaKey } from "../../src/network/http/ca.js";
import { ADDR, createNetns, type Netns } from "./netns.js";

const TOKEN = "tok-" + "9f2c71d0a4b84e6c";
const API_KEY = "key-" + "51aa93e07c2d4f10";

let ns: Netns;
let dir: string;
let upstreamLog: string[];

const requests = () => upstreamLog.filter((l) => l.startsWith("{") && !l.includes('"ready"')).map((l) => JSON.parse(l));

describe("HTTP(S) interception and credential injection, end to end", () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "http-e2e-"));
    // The upstreams' own CA: the guest never trusts it; the interceptor is told to.
    const ca = await createSandboxCa({ commonName: "upstream test CA" });
    const key = await generateRsaKey();
    const keyPem = key.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const server = (name: string, ip: string) => ({ name, ip, keyPem, certPem: ca.issueLeaf(name, key) });
    const upstream = {
      dnsIp: ADDR.dns,
      token: TOKEN,
      zone: { "api.test": ADDR.api, "other.test": ADDR.api2, "denied.test": ADDR.api3 },
      servers: [server("api.test", ADDR.api), server("other.test", ADDR.api2), server("denied.test", ADDR.api3)],
    };
    writeFileSync(join(dir, "upstream.json"), JSON.stringify(upstream));
    writeFileSync(join(dir, "lane.json"), JSON.stringify({ dnsIp: ADDR.dns, apiIp: ADDR.api, token: TOKEN, apiKey: API_KEY, caPem: ca.certPem }));
    ns = createNetns();
    const inet = await ns.startNode(ns.inet, "http-upstream.mjs", [join(dir, "upstream.json")], (l) => l.includes('"ready"'));
    upstreamLog = inet.lines;
  });
  afterAll(() => {
    ns?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("injects the credential for the allowed host only, and nothing gets around it", async () => {
    const { child, lines } = await ns.startNode(ns.host, "http-lane.mjs", [join(dir, "lane.json")], (l) => l.startsWith('{"results"'));
    child.kill();
    const { results: r, events } = JSON.parse(lines.find((l) => l.startsWith('{"results"'))!);
    const byPath = (path: string) => requests().filter((q) => q.path === path);

    // Real clients in the guest reach the allowed host, through the interceptor, with the credential added on the host.
    for (const [name, path] of [["curl", "/curl"], ["python", "/python"], ["node", "/node"]] as const) {
      expect([name, r[name].exitCode, r[name].stderr]).toEqual([name, 0, ""]);
      expect(JSON.parse(r[name].stdout)).toEqual({ server: "api.test", path, authorized: true });
      expect(byPath(path)).toMatchObject([{ server: "api.test", host: "api.test", authorization: `Bearer ${TOKEN}` }]);
    }
    expect(r.git).toMatchObject({ exitCode: 0, stdout: "cloned through the interceptor" });
    // Plain HTTP: the middleware's credential would travel in clear text, so the request is refused.
    expect(r.plainHttp.stdout).toContain("only go out over verified TLS");
    expect(byPath("/plain")).toEqual([]);
    expect(requests().filter((q) => q.path.startsWith("/repo.git/")).every((q) => q.authorization === `Bearer ${TOKEN}`)).toBe(true);

    // Another allowed host, accepted without middleware: reached, no credential.
    expect(JSON.parse(r.other.stdout)).toEqual({ server: "other.test", path: "/other", authorized: false });
    expect(byPath("/other")).toMatchObject([{ authorization: null }]);
    // Not granted at all: refused, and nothing reached that server.
    expect(r.denied.exitCode).not.toBe(0);
    expect(requests().filter((q) => q.server === "denied.test")).toEqual([]);
    // The allowed host's IP literal, a forged Host header, SNI naming another host: no request with the credential goes out.
    for (const name of ["ipLiteral", "forgedHost", "sniMismatch"]) {
      expect([name, r[name].stdout.includes('"authorized":true')]).toEqual([name, false]);
    }
    expect(byPath("/ip-literal")).toEqual([]);
    expect(byPath("/forged-host")).toEqual([]);
    expect(byPath("/sni-mismatch")).toEqual([]);
    expect(r.sniMismatch.exitCode).not.toBe(0);
    // Keep-alive: the first request is served, the second (another Host) is rejected and never leaves.
    const keepAlive = JSON.parse(r.keepAlive.stdout);
    expect(keepAlive.first[0]).toBe(200);
    expect(keepAlive.second === "error:RemoteDisconnected" || keepAlive.second?.[0] === 403 || String(keepAlive.second).startsWith("error:")).toBe(true);
    expect(byPath("/second")).toEqual([]);

    // Secrets: a placeholder in the guest, the real value only towards the secret's host.
    expect(r.secretEnv.stdout).toMatch(/^sandbox-secret-[0-9a-f]{32}$/);
    expect(byPath("/secret").find((q) => q.server === "api.test")?.apiKey).toBe(API_KEY);
    expect(byPath("/secret").find((q) => q.server === "other.test")?.apiKey).toBe(r.secretEnv.stdout);

    // The guest never saw the credentials: not in its environment, files or any response.
    expect(r.leak.stdout).toBe("0\n0");
    expect(JSON.stringify(r)).not.toContain(TOKEN);
    expect(JSON.stringify(r)).not.toContain(API_KEY);
    // Read-only built-in root: the image's trust store is untouched (no anchor added).
    expect(r.trustStore.stdout.split("\n")[1]).toBe("0");

    // The host heard about the denials.
    const denied = events.filter((e: any) => e.type === "http.denied").map((e: any) => e.reason);
    expect(denied).toEqual(expect.arrayContaining(["host-mismatch", "sni-mismatch", "insecure-transport"]));
    expect(events.some((e: any) => e.type === "decision" && e.verdict === "deny" && e.dst?.startsWith(ADDR.api3))).toBe(true);
  }, 600_000);

  it("runs the GitHub-style token injection example (examples/github-token-injection)", async () => {
    const { child, lines } = await ns.startNode(ns.host, "example-token-injection.mjs", [join(dir, "lane.json")], (l) => l.startsWith('{"outcome"'));
    child.kill();
    const { outcome, tokens } = JSON.parse(lines.find((l) => l.startsWith('{"outcome"'))!);
    expect(JSON.parse(outcome.body)).toEqual({ server: "api.test", path: "/user", authorized: false });
    expect(outcome.tokenVisibleInGuest).toBe(false);
    // The upstream got the per-request token minted on the host.
    expect(tokens).toHaveLength(1);
    expect(requests().filter((q) => q.path === "/user")).toMatchObject([{ host: "api.test", authorization: `Bearer ${tokens[0]}` }]);
  }, 600_000);
});

