#!/usr/bin/env node
// HTTP interception benchmark, its floor measured in the same run: the same
// keep-alive HTTPS client (undici) against the same loopback upstream, once
// directly and once through the interceptor (TLS terminated with the sandbox
// CA, middleware injecting a header, undici upstream with verification).
//
// Reports sequential latency (p50 of each, and the p50 added by the
// interceptor) and requests/s with BENCH_HTTP_CONCURRENCY connections.
// Standalone: `node scripts/bench/http.mjs` (after `npm run build`); also run by
// scripts/bench.mjs. Env: BENCH_HTTP_REQUESTS (default 2000), BENCH_HTTP_CONCURRENCY (default 8).
import { once } from "node:events";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createNetServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Client } from "undici";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const REQUESTS = Number(process.env.BENCH_HTTP_REQUESTS ?? 2000);
const CONCURRENCY = Number(process.env.BENCH_HTTP_CONCURRENCY ?? 8);
const HOST = "api.bench.test";

const round = (x) => Math.round(x * 1000) / 1000;
const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, p50: round(q(0.5)), p95: round(q(0.95)), p99: round(q(0.99)), min: round(s[0]), max: round(s[s.length - 1]) };
};

export async function runHttpBench() {
  const { createSandboxCa, generateRsaKey } = await import(pathToFileURL(join(root, "dist/src/network/http/ca.js")).href);
  const { createHttpInterceptor } = await import(pathToFileURL(join(root, "dist/src/network/http/intercept.js")).href);
  const [sandboxCa, upstreamCa, key] = await Promise.all([createSandboxCa(), createSandboxCa({ commonName: "bench upstream CA" }), generateRsaKey()]);

  const body = Buffer.from("ok\n");
  const upstream = createHttpsServer({ key: key.privateKeyPem, cert: upstreamCa.issueLeaf(HOST, key) }, (req, res) => {
    req.resume();
    req.on("end", () => res.end(body));
  });
  upstream.keepAliveTimeout = 60_000;
  upstream.listen(0, "127.0.0.1");
  await once(upstream, "listening");
  const port = upstream.address().port;

  const interceptor = createHttpInterceptor({ ca: sandboxCa, upstreamCa: upstreamCa.certPem });
  const middleware = (r) => r.headers.set("authorization", "Bearer bench-token");
  const guestSide = createNetServer((socket) => {
    void interceptor.handle(socket, {
      src: { ip: "127.0.0.1", port: socket.remotePort ?? 0 },
      dst: { ip: "127.0.0.1", port },
      hostname: HOST,
      middleware,
    });
  });
  guestSide.listen(port, "127.0.0.2");
  await once(guestSide, "listening");

  const client = (ip, ca) =>
    new Client(`https://${HOST}:${port}`, {
      pipelining: 1,
      connect: { host: ip, servername: HOST, ca, lookup: (_h, o, cb) => (o?.all ? cb(null, [{ address: ip, family: 4 }]) : cb(null, ip, 4)) },
    });
  const one = async (c) => {
    const t = performance.now();
    const res = await c.request({ path: "/bench", method: "GET" });
    await res.body.text();
    if (res.statusCode !== 200) throw new Error(`bench request failed: ${res.statusCode}`);
    return performance.now() - t;
  };

  async function measure(ip, ca) {
    // Latency: one keep-alive connection, sequential requests (after a warm-up).
    const c = client(ip, ca);
    for (let i = 0; i < 50; i++) await one(c);
    const lat = [];
    for (let i = 0; i < REQUESTS; i++) lat.push(await one(c));
    await c.close();
    // Throughput: CONCURRENCY keep-alive connections in parallel.
    const clients = Array.from({ length: CONCURRENCY }, () => client(ip, ca));
    await Promise.all(clients.map((k) => one(k)));
    let left = REQUESTS;
    const t0 = performance.now();
    await Promise.all(
      clients.map(async (k) => {
        while (left-- > 0) await one(k);
      }),
    );
    const rps = REQUESTS / ((performance.now() - t0) / 1000);
    await Promise.all(clients.map((k) => k.close()));
    return { latencyMs: stats(lat), requestsPerSecond: Math.round(rps) };
  }

  const direct = await measure("127.0.0.1", upstreamCa.certPem);
  const intercepted = await measure("127.0.0.2", sandboxCa.certPem);
  await interceptor.close();
  guestSide.close();
  upstream.closeAllConnections();
  upstream.close();
  return {
    requests: REQUESTS,
    concurrency: CONCURRENCY,
    direct,
    intercepted,
    addedLatencyP50Ms: round(intercepted.latencyMs.p50 - direct.latencyMs.p50),
    latencyRatioP50: round(intercepted.latencyMs.p50 / direct.latencyMs.p50),
    throughputRatio: round(intercepted.requestsPerSecond / direct.requestsPerSecond),
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  console.log(JSON.stringify({ date: new Date().toISOString(), httpInterception: await runHttpBench() }, null, 2));
}
