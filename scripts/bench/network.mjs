// Network benchmarks, floors measured in the same run (JSON, like bench.mjs):
//  - TCP throughput guest→host echo through an accepted flow (bytes sent and
//    echoed back, counted in the guest) vs the same transfer over host loopback;
//  - connection setup latency (connect + close, measured in the guest) with a
//    trivial policy, vs a host loopback connect;
//  - policy callback overhead per flow: Node-side time from the helper's
//    question to the verdict (the `elapsedMs` of decision events).
// The echo server runs in a network namespace of its own behind a veth pair (the
// host's own addresses are refused to the guest whatever the policy says, and the
// guest's 127.0.0.1 is its own loopback), opted in with allowProtected; the floor
// connects to the same server from the host over the same veth. Needs root (ip netns).
// Usage: node scripts/bench/network.mjs  (or through bench.mjs)
import { execFileSync, spawn } from "node:child_process";
import { connect } from "node:net";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const round = (x) => Math.round(x * 100) / 100;
const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, p50: round(q(0.5)), p95: round(q(0.95)), min: round(s[0]), max: round(s[s.length - 1]) };
};

const GUEST_CLIENT = String.raw`
import socket, sys, threading, time, json
host, port, mib, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}
s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
total = mib << 20; chunk = b"x" * 65536; got = 0
def reader():
    global got
    buf = bytearray(1 << 16)
    while got < total:
        n = s.recv_into(buf)
        if n == 0: break
        got += n
t = threading.Thread(target=reader); t0 = time.perf_counter(); t.start()
sent = 0
while sent < total:
    s.sendall(chunk); sent += len(chunk)
t.join(); dt = time.perf_counter() - t0; s.close()
out["throughputMiBs"] = (total / 1048576) / dt
lat = []
for i in range(conns):
    t0 = time.perf_counter(); c = socket.create_connection((host, port)); lat.append((time.perf_counter() - t0) * 1000); c.close()
out["connectMs"] = lat
print(json.dumps(out))
`;

const ECHO_SERVER = String.raw`
const s = require("node:net").createServer((c) => { c.setNoDelay(true); c.pipe(c); c.on("error", () => {}); });
s.listen(0, process.argv[1], () => console.log(s.address().port));
`;

/** A namespace with an echo server on `address`; `close` removes both. */
async function echoNamespace() {
  const ns = `sbxbench${process.pid}`;
  const [hostIf, nsIf] = [`sbxb${process.pid}h`.slice(-15), `sbxb${process.pid}n`.slice(-15)];
  const [hostIp, address] = ["10.231.77.1", "10.231.77.2"];
  const ip = (...a) => execFileSync("ip", a, { stdio: ["ignore", "ignore", "pipe"] });
  ip("netns", "add", ns);
  try {
    ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf);
    ip("link", "set", nsIf, "netns", ns);
    ip("addr", "add", `${hostIp}/30`, "dev", hostIf);
    ip("link", "set", hostIf, "up");
    ip("netns", "exec", ns, "ip", "addr", "add", `${address}/30`, "dev", nsIf);
    ip("netns", "exec", ns, "ip", "link", "set", nsIf, "up");
    ip("netns", "exec", ns, "ip", "link", "set", "lo", "up");
    const server = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", ECHO_SERVER, address], { stdio: ["ignore", "pipe", "inherit"] });
    const port = await new Promise((resolve, reject) => {
      server.stdout.once("data", (d) => resolve(Number(String(d).trim())));
      server.once("exit", (code) => reject(new Error(`the echo server in ${ns} exited (${code})`)));
    });
    return {
      address,
      port,
      close: () => {
        server.kill("SIGKILL");
        execFileSync("ip", ["netns", "del", ns]);
      },
    };
  } catch (e) {
    execFileSync("ip", ["netns", "del", ns]);
    throw e;
  }
}

// The same client against an echo server inside the guest (its loopback): what
// the emulated guest itself can move, with no NIC, stack or policy involved.
const GUEST_ECHO = String.raw`
import socket, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", 7007)); l.listen(64)
def serve(c):
    while True:
        d = c.recv(1 << 16)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

async function hostFloor(host, port, mib, conns) {
  const total = mib << 20;
  const chunk = Buffer.alloc(65536, 120);
  const t0 = performance.now();
  await new Promise((resolve, reject) => {
    const s = connect({ host, port, noDelay: true });
    let got = 0;
    let sent = 0;
    s.on("data", (d) => {
      got += d.length;
      if (got >= total) {
        s.destroy();
        resolve();
      }
    });
    s.on("error", reject);
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        if (!s.write(chunk)) return s.once("drain", pump);
      }
    };
    s.on("connect", pump);
  });
  const throughput = mib / ((performance.now() - t0) / 1000);
  const lat = [];
  for (let i = 0; i < conns; i++) {
    const t = performance.now();
    await new Promise((resolve, reject) => {
      const c = connect({ host, port }, () => {
        lat.push(performance.now() - t);
        c.destroy();
        resolve();
      });
      c.on("error", reject);
    });
  }
  return { throughput, lat };
}

export async function benchNetwork({ image = "debian:12", log = () => {} } = {}) {
  const { defineSandbox, network, rootfs } = await import(join(root, "dist/src/index.js"));
  const MIB = Number(process.env.BENCH_NET_MIB ?? 64);
  const CONNS = Number(process.env.BENCH_NET_CONNS ?? 50);
  if (process.getuid?.() !== 0) return { skipped: "needs root: the echo server runs in a network namespace (ip netns)" };
  const echo = await echoNamespace();
  const { address: host, port } = echo;
  const decisions = [];
  const policy = network.policy((conn) => void conn.matchTcp(`${host}:${port}`)?.accept(), {
    allowProtected: [`${host}/32`],
    onEvent: (e) => e.type === "decision" && e.protocol === "tcp" && decisions.push(e.elapsedMs),
  });
  const lane = await defineSandbox({ rootfs: rootfs.builtIn(image), network: policy }).boot();
  const guest = [];
  const floor = [];
  const guestLocal = [];
  try {
    const echoInGuest = lane.spawn("python3", ["-c", GUEST_ECHO]);
    await echoInGuest.ready;
    for (let i = 0; i < 3; i++) {
      log(`network round ${i + 1}/3: ${MIB} MiB echo + ${CONNS} connects, guest then host loopback`);
      const r = await lane.exec("python3", ["-c", GUEST_CLIENT, host, String(port), String(MIB), String(CONNS)], { timeoutMs: 600_000 });
      if (r.exitCode !== 0) throw new Error(`guest client failed: ${r.stderr}`);
      guest.push(JSON.parse(r.stdout));
      floor.push(await hostFloor(host, port, MIB, CONNS));
      const g = await lane.exec("sh", ["-c", 'for i in $(seq 50); do python3 -c "import socket; socket.create_connection((\'127.0.0.1\', 7007)).close()" 2>/dev/null && break; sleep 0.1; done; exec python3 -c "$0" 127.0.0.1 7007 "$1" "$2"', GUEST_CLIENT, String(MIB), String(CONNS)], { timeoutMs: 600_000 });
      if (g.exitCode !== 0) throw new Error(`guest loopback client failed: ${g.stderr}`);
      guestLocal.push(JSON.parse(g.stdout));
    }
    echoInGuest.kill();
  } finally {
    await lane.close();
    echo.close();
  }
  const tput = stats(guest.map((g) => g.throughputMiBs));
  const floorTput = stats(floor.map((f) => f.throughput));
  const connect = stats(guest.flatMap((g) => g.connectMs));
  const floorConnect = stats(floor.flatMap((f) => f.lat));
  return {
    tcpEchoThroughputMiBs: tput,
    hostLoopbackEchoThroughputMiBs: floorTput,
    tcpThroughputRatio: round(tput.p50 / floorTput.p50),
    guestLoopbackEchoThroughputMiBs: stats(guestLocal.map((g) => g.throughputMiBs)),
    throughputVsGuestLoopback: round(tput.p50 / stats(guestLocal.map((g) => g.throughputMiBs)).p50),
    guestLoopbackConnectMs: stats(guestLocal.flatMap((g) => g.connectMs)),
    connectSetupMs: connect,
    hostLoopbackConnectMs: floorConnect,
    policyDecisionMs: stats(decisions),
    note: "guest figures are measured inside the VM (TCG here): the ratio includes emulation, the stack and the splice",
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const result = await benchNetwork({ image: process.env.BENCH_IMAGE ?? "debian:12", log: (m) => process.stderr.write(`[bench] ${m}\n`) });
  console.log(JSON.stringify({ date: new Date().toISOString(), network: result }, null, 2));
}
