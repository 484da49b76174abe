/**
 * Ordinary clients a guest would run — curl, git, Python's urllib, Node's
 * fetch and a WebSocket client — reach an allowed host through the
 * interceptor, trusting only the sandbox CA, with the host-side credential
 * injected on the way and never shown to them.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Agent, fetch } from "undici";
import WebSocket, { WebSocketServer } from "ws";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSecrets } from "../../src/network/http/secrets.js";
import type { HttpMiddleware } from "../../src/network/http/types.js";
import { serveGit } from "../git-http-backend.mjs";
import { certificates, GUEST_IP, HOST, readBody, startGuestSide, startUpstream, type Guest, type Upstream } from "./http-harness.js";

const run = promisify(execFile);
const TOKEN = "Bearer host-side-token-c0ffee";
const inject: HttpMiddleware = (r) => r.headers.set("authorization", TOKEN);

let up: Upstream;
let guest: Guest;
const seen: { url: string; authorization?: string }[] = [];

beforeAll(async () => {
  up = await startUpstream(async (req, res) => {
    seen.push({ url: req.url!, authorization: req.headers.authorization });
    const body = await readBody(req);
    if (req.headers.authorization !== TOKEN) {
      res.writeHead(401).end("no credential\n");
      return;
    }
    res.setHeader("content-type", "text/plain");
    res.end(`hello ${req.method} ${req.url} ${body.length}\n`);
  });
  const wss = new WebSocketServer({ server: up.server });
  wss.on("connection", (ws, req) => {
    ws.send(`auth=${req.headers.authorization === TOKEN}`);
    ws.on("message", (m) => ws.send(`echo:${m.toString()}`));
  });
  guest = await startGuestSide(up.port, inject);
});
afterAll(async () => {
  await guest.close();
  await up.close();
});

const url = (path: string) => `https://${HOST}:${guest.port}${path}`;

describe("clients through the interceptor", () => {
  it("curl --http2 gets h2 (translated to the HTTP/1.1-only upstream) and the answer; the token stays on the host", async () => {
    const { stdout, stderr } = await run("curl", [
      "-sS", "-v", "--http2", "--cacert", guest.caFile, "--resolve", `${HOST}:${guest.port}:${GUEST_IP}`,
      "-D", "-", "--data-binary", "abc", url("/curl"),
    ]);
    expect(stdout).toMatch(/^HTTP\/2 200/);
    expect(stdout).toContain("hello POST /curl 3");
    expect(stderr).toMatch(/ALPN.*accepted.*h2/i);
    expect(stdout + stderr).not.toContain("host-side-token");
    expect(seen.at(-1)).toEqual({ url: "/curl", authorization: TOKEN });
  });

  it("curl refuses the interceptor without the sandbox CA (no blind trust)", async () => {
    const err = await run("curl", ["-sS", "--resolve", `${HOST}:${guest.port}:${GUEST_IP}`, url("/x")]).catch((e) => e);
    expect(err.code).toBe(60); // SSL certificate problem
  });

  it("a refused upload still gets its 403 over HTTP/1.1 (the interceptor drains before closing; no reset), 421 over h2", async () => {
    const big = join(tmpdir(), `http-refused-${process.pid}.bin`);
    writeFileSync(big, Buffer.alloc(3 * 1024 * 1024, 7));
    try {
      const h2 = await run("curl", [
        "-sS", "--http2", "--cacert", guest.caFile, "--resolve", `${HOST}:${guest.port}:${GUEST_IP}`,
        "-H", `Host: evil.test:${guest.port}`, "--data-binary", `@${big}`,
        "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url("/upload"),
      ]);
      expect(h2.stdout).toBe("2 421");
      const { stdout } = await run("curl", [
        "-sS", "--http1.1", "--cacert", guest.caFile, "--resolve", `${HOST}:${guest.port}:${GUEST_IP}`,
        "-H", `Host: evil.test:${guest.port}`, "-H", "Expect:", "--data-binary", `@${big}`,
        "-o", "/dev/null", "-w", "%{http_code}", url("/upload"),
      ]);
      expect(stdout).toBe("403");
    } finally {
      rmSync(big, { force: true });
    }
  });

  it("python urllib", async () => {
    const script = [
      "import socket, ssl, sys, urllib.request",
      "real = socket.getaddrinfo",
      `socket.getaddrinfo = lambda h, *a, **k: real('${GUEST_IP}' if h == '${HOST}' else h, *a, **k)`,
      "ctx = ssl.create_default_context(cafile=sys.argv[2])",
      "with urllib.request.urlopen(sys.argv[1], context=ctx) as r:",
      "    print(r.status, r.read().decode().strip(), sorted(r.headers.keys()))",
    ].join("\n");
    const { stdout } = await run("python3", ["-c", script, url("/py"), guest.caFile]);
    expect(stdout).toContain("200 hello GET /py 0");
    expect(stdout.toLowerCase()).not.toContain("authorization");
    expect(seen.at(-1)).toEqual({ url: "/py", authorization: TOKEN });
  });

  it("node fetch (undici)", async () => {
    const c = await certificates();
    const dispatcher = new Agent({
      connect: {
        ca: c.sandboxCa.certPem,
        lookup: ((_h: string, o: { all?: boolean }, cb: (...a: unknown[]) => void) =>
          o.all ? cb(null, [{ address: GUEST_IP, family: 4 }]) : cb(null, GUEST_IP, 4)) as never,
      },
    });
    const res = await fetch(url("/fetch?q=1"), { dispatcher });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("hello GET /fetch?q=1 0\n");
    expect([...res.headers.keys()]).not.toContain("authorization");
    expect(seen.at(-1)).toEqual({ url: "/fetch?q=1", authorization: TOKEN });
    await dispatcher.close();
  });

  it("WebSocket upgrade passes after the middleware and relays both ways", async () => {
    const c = await certificates();
    const ws = new WebSocket(`wss://${HOST}:${guest.port}/ws`, {
      ca: c.sandboxCa.certPem,
      lookup: ((_h: string, o: { all?: boolean }, cb: (...a: unknown[]) => void) =>
        o.all ? cb(null, [{ address: GUEST_IP, family: 4 }]) : cb(null, GUEST_IP, 4)) as never,
    });
    const messages: string[] = [];
    ws.on("message", (m) => messages.push(m.toString()));
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    ws.send("ping");
    while (messages.length < 2) await new Promise((r) => setTimeout(r, 20));
    expect(messages).toEqual(["auth=true", "echo:ping"]);
    ws.close();
    expect(guest.events.some((e) => e.type === "http.request" && e.status === 101 && e.url === "/ws")).toBe(true);
  });
});

describe("git over https", () => {
  let dir: string;
  let gitUp: Upstream;
  let gitGuest: Guest;
  const REAL = "ghs_real-installation-token";
  const secrets = createSecrets({ GIT_TOKEN: { value: REAL, hosts: [HOST] } });
  const basicSeen: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "http-git-"));
    const g = (args: string[], cwd = dir) => run("git", ["-c", "user.name=t", "-c", "user.email=t@example.com", ...args], { cwd });
    await g(["init", "-q", "-b", "main", "work"]);
    await run("sh", ["-c", `echo 'intercepted clone' > README && git add README`], { cwd: join(dir, "work") });
    await g(["commit", "-qm", "first"], join(dir, "work"));
    await g(["clone", "-q", "--bare", "work", "repo.git"]);
    // A smart-HTTP server: `git http-backend` as CGI behind Node's HTTPS server, requiring Basic auth with the real token.
    gitUp = await startUpstream((req, res) => {
      basicSeen.push(req.headers.authorization ?? "");
      const expected = `Basic ${Buffer.from(`x-access-token:${REAL}`).toString("base64")}`;
      if (req.headers.authorization !== expected) {
        res.writeHead(401, { "www-authenticate": 'Basic realm="git"' }).end();
        return;
      }
      serveGit(req, res, dir);
    });
    gitGuest = await startGuestSide(gitUp.port, secrets.middleware);
  });
  afterAll(async () => {
    await gitGuest.close();
    await gitUp.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("clones with only a placeholder in the guest; the secrets middleware puts the real token in", async () => {
    const placeholder = secrets.env.GIT_TOKEN!;
    expect(placeholder).toMatch(/^sandbox-secret-[0-9a-f]{32}$/);
    const { stderr } = await run(
      "git",
      [
        "-c", `http.sslCAInfo=${gitGuest.caFile}`,
        "-c", `http.curloptResolve=${HOST}:${gitGuest.port}:${GUEST_IP}`,
        "clone", "-q", `https://x-access-token:${placeholder}@${HOST}:${gitGuest.port}/repo.git`, join(dir, "clone"),
      ],
      { env: { PATH: process.env.PATH, HOME: dir, GIT_TERMINAL_PROMPT: "0", GIT_CONFIG_NOSYSTEM: "1" } },
    );
    expect(stderr).toBe("");
    const { stdout } = await run("cat", [join(dir, "clone", "README")]);
    expect(stdout).toBe("intercepted clone\n");
    // The upstream saw the real token (after git's unauthenticated first try), never the placeholder.
    const real = `Basic ${Buffer.from(`x-access-token:${REAL}`).toString("base64")}`;
    expect(basicSeen.filter((a) => a === real).length).toBeGreaterThanOrEqual(2);
    expect(basicSeen.some((a) => Buffer.from(a.replace(/^Basic /, ""), "base64").toString().includes(placeholder))).toBe(false);
  });
});
