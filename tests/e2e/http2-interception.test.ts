/**
 * HTTP/2 through interception, on a real VM in the test's own network
 * namespaces (one lane for the whole file): the guest's curl negotiates h2
 * with the interceptor; every stream passes the middleware (which sees
 * `protocol: "h2"`) and goes upstream over h2 when the server offers it, else
 * as HTTP/1.1; a stream whose :authority names another host is refused (421);
 * a gRPC unary call reaches a real grpc-js server, with its trailers back; and
 * no credential ever reaches the guest. Asserted on what the upstreams logged.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSandboxCa, generateRsaKey } from "../../src/network/http/ca.js";
import { ADDR, createNetns, type Netns } from "./netns.js";

const TOKEN = "tok-" + "h2c0ffee5ba11ad77";
const API_KEY = "key-" + "h2d3adb33f00d111";

type Result = { exitCode: number; stdout: string; stderr: string };
let ns: Netns;
let dir: string;
let upstreamLog: string[];
let r: Record<string, Result>;
let events: { type: string; reason?: string; hostname?: string; status?: number; protocol?: string; url?: string; message?: string }[];
let seenByMiddleware: { hostname: string; url: string; method: string; protocol: string; scheme: string }[];

const requests = () =>
  upstreamLog
    .filter((l) => l.startsWith('{"server"'))
    .map((l) => JSON.parse(l) as { server: string; version?: string; method?: string; path: string; authority?: string; authorization: string | null; apiKey?: string | null; bytes?: number; grpc?: boolean; message?: string });
const byPath = (path: string) => requests().filter((q) => q.path === path);

describe("HTTP/2 and gRPC through interception, end to end", () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "h2-e2e-"));
    // The upstreams' own CA: only the interceptor is told to trust it; one key for every server.
    const ca = await createSandboxCa({ commonName: "upstream test CA" });
    const key = await generateRsaKey();
    const identity = (name: string, ip: string) => ({ name, ip, keyPem: key.privateKey.export({ type: "pkcs8", format: "pem" }).toString(), certPem: ca.issueLeaf(name, key) });
    writeFileSync(
      join(dir, "upstream.json"),
      JSON.stringify({
        dnsIp: ADDR.dns,
        zone: { "api.test": ADDR.api, "legacy.test": ADDR.api2, "grpc.test": ADDR.api3, "other.test": ADDR.api },
        api: identity("api.test", ADDR.api),
        legacy: identity("legacy.test", ADDR.api2),
        grpc: identity("grpc.test", ADDR.api3),
      }),
    );
    writeFileSync(join(dir, "lane.json"), JSON.stringify({ dnsIp: ADDR.dns, token: TOKEN, apiKey: API_KEY, caPem: ca.certPem }));
    ns = createNetns();
    const inet = await ns.startNode(ns.inet, "h2-upstream.mjs", [join(dir, "upstream.json")], (l) => l.includes('"ready"'));
    upstreamLog = inet.lines;
    const { child, lines } = await ns.startNode(ns.host, "h2-lane.mjs", [join(dir, "lane.json")], (l) => l.startsWith('{"results"'));
    child.kill();
    ({ results: r, events, seenByMiddleware } = JSON.parse(lines.find((l) => l.startsWith('{"results"'))!));
  }, 600_000);
  afterAll(() => {
    ns?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("curl --http2 negotiates h2 with the interceptor; each multiplexed request passes the middleware and reaches upstream over h2 with the credential", () => {
    expect(r.version!.stdout).toContain("HTTP2");
    expect(r.verbose!.stdout).toMatch(/ALPN.*h2/i);
    expect(r.parallel).toMatchObject({ exitCode: 0 });
    // One JSON body and one "2 200" line per request.
    expect(r.parallel!.stdout.split("\n").filter((l) => l === "2 200")).toHaveLength(3);
    for (const path of ["/p1", "/p2", "/p3", "/verbose"]) {
      expect([path, byPath(path)]).toMatchObject([path, [{ server: "api.test", version: "2.0", authority: "api.test", authorization: `Bearer ${TOKEN}` }]]);
      expect([path, seenByMiddleware.filter((m) => m.url === path)]).toEqual([path, [{ hostname: "api.test", url: path, method: "GET", protocol: "h2", scheme: "https:" }]]);
    }
    expect(events.filter((e) => e.type === "http.request" && e.url === "/p1")).toMatchObject([{ protocol: "h2", status: 200 }]);
  });

  it("refuses a stream whose :authority names another host (421); nothing reaches upstream", () => {
    // What curl put on the wire: :authority other.test.
    expect(r.misdirected!.stdout).toMatch(/:authority: other\.test/i);
    expect(r.misdirected!.stdout).toMatch(/\n421\n?/);
    expect(byPath("/misdirected")).toEqual([]);
    expect(seenByMiddleware.filter((m) => m.url === "/misdirected")).toEqual([]);
    expect(events).toContainEqual(expect.objectContaining({ type: "http.denied", reason: "host-mismatch", status: 421 }));
  });

  it("refuses TRACE over h2 (405) before upstream", () => {
    expect(r.trace!.stdout.endsWith("405")).toBe(true);
    expect(byPath("/trace")).toEqual([]);
    expect(events).toContainEqual(expect.objectContaining({ type: "http.denied", reason: "method-refused", status: 405 }));
  });

  it("an echoing h2 upstream cannot hand the token or the secret to the guest (headers and gzip body scrubbed)", () => {
    const [echo] = byPath("/echo");
    expect(echo).toMatchObject({ version: "2.0", authorization: `Bearer ${TOKEN}`, apiKey: API_KEY });
    expect(r.echo!.stdout).toMatch(/^HTTP\/2 200/);
    expect(r.echo!.stdout).toContain("x-echo-authorization: [redacted]");
    expect(r.echo!.stdout).toContain(`x-echo-key: ${r.secretEnv!.stdout}`);
    expect(r.echo!.stdout).toContain(`auth=[redacted] key=${r.secretEnv!.stdout}`);
    expect(JSON.stringify(r)).not.toContain(TOKEN);
    expect(JSON.stringify(r)).not.toContain(API_KEY);
  });

  it("streams a 3 MB request body upstream over h2", () => {
    expect(JSON.parse(r.upload!.stdout)).toMatchObject({ server: "api.test", bytes: 3_000_000, version: "2.0" });
    expect(byPath("/upload")).toMatchObject([{ method: "POST", bytes: 3_000_000, authorization: `Bearer ${TOKEN}` }]);
  });

  it("an HTTP/1.1-only upstream is reached by translating the guest's h2 streams", () => {
    // The body, then curl's %{http_version}: the guest spoke h2 all along.
    expect(r.legacy!.stdout.split("\n").filter(Boolean)).toEqual([JSON.stringify({ server: "legacy.test", path: "/legacy", version: "1.1", bytes: 0 }), "2"]);
    expect(byPath("/legacy")).toMatchObject([{ server: "legacy.test", version: "1.1", authorization: `Bearer ${TOKEN}` }]);
  });

  it("a gRPC unary call reaches the grpc-js server with the credential; message and grpc-status trailer come back", () => {
    expect(byPath("/test.Echo/Echo")).toEqual([{ server: "grpc.test", grpc: true, path: "/test.Echo/Echo", authorization: `Bearer ${TOKEN}`, message: "ping" }]);
    const [body, head] = r.grpc!.stdout.split("---");
    // Length-prefixed reply: flag 0, length 9, "echo:ping".
    expect(body!.trim()).toBe("\\0 \\0 \\0 \\0 \\t e c h o : p i n g");
    expect(head).toMatch(/^HTTP\/2 200/m);
    expect(head).toMatch(/^content-type: application\/grpc/m);
    expect(head).toMatch(/^grpc-status: 0$/m);
    expect(head).toMatch(/^x-echo-trailer: trailer-ok$/m);
    expect(seenByMiddleware.filter((m) => m.hostname === "grpc.test")).toMatchObject([{ protocol: "h2", method: "POST", url: "/test.Echo/Echo" }]);
  });
});
