/**
 * Network namespaces for the network e2e tests: a "host" namespace where the
 * Node fixture, the helper and the VM run, and an "internet" namespace with the
 * test's servers on documentation addresses, joined by a veth pair and real
 * routes. Nothing leaves the machine. Names are unique per run; `cleanup()`
 * deletes both namespaces (and with them the veth pair).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";

export const ADDR = {
  hostSide: "198.51.100.1",
  inetSide: "198.51.100.2",
  dns: "203.0.113.53",
  tcp: "203.0.113.10",
  udp: "203.0.113.11",
  other: "203.0.113.12",
  privateSvc: "10.99.0.1",
  // HTTP interception test: api.test, other.test, denied.test.
  api: "203.0.113.20",
  api2: "203.0.113.21",
  api3: "203.0.113.22",
  // IPv6 (documentation prefix; the guest reaches it only through sandbox-net's v6 sockets).
  hostSide6: "2001:db8:ffff::1",
  inetSide6: "2001:db8:ffff::2",
  tcp6: "2001:db8::10",
  v6only: "2001:db8::20",
} as const;

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

export interface Netns {
  host: string;
  inet: string;
  /** Runs a fixture script under `ip netns exec ns node …`; resolves once it printed a line matching `ready`. */
  startNode(ns: string, fixture: string, args: string[], ready: (line: string) => boolean): Promise<{ child: ChildProcess; lines: string[] }>;
  cleanup(): void;
}

export function createNetns(): Netns {
  const id = randomBytes(3).toString("hex");
  const host = `sbxh-${id}`;
  const inet = `sbxi-${id}`;
  const children: ChildProcess[] = [];
  const cleanup = () => {
    for (const c of children) c.kill("SIGKILL");
    for (const ns of [host, inet]) {
      try {
        ip("netns", "del", ns);
      } catch {
        // already gone
      }
    }
  };
  try {
    ip("netns", "add", host);
    ip("netns", "add", inet);
    ip("link", "add", `vh${id}`, "type", "veth", "peer", "name", `vi${id}`);
    ip("link", "set", `vh${id}`, "netns", host);
    ip("link", "set", `vi${id}`, "netns", inet);
    ip("-n", host, "link", "set", "lo", "up");
    ip("-n", inet, "link", "set", "lo", "up");
    ip("-n", host, "addr", "add", `${ADDR.hostSide}/24`, "dev", `vh${id}`);
    ip("-n", inet, "addr", "add", `${ADDR.inetSide}/24`, "dev", `vi${id}`);
    ip("-n", host, "link", "set", `vh${id}`, "up");
    ip("-n", inet, "link", "set", `vi${id}`, "up");
    for (const a of [ADDR.dns, ADDR.tcp, ADDR.udp, ADDR.other, ADDR.privateSvc, ADDR.api, ADDR.api2, ADDR.api3]) {
      ip("-n", inet, "addr", "add", `${a}/32`, "dev", "lo");
    }
    ip("-n", host, "route", "add", "203.0.113.0/24", "via", ADDR.inetSide);
    // IPv6 without DAD delays (nothing else on the veth), routed like the IPv4 side.
    ip("-n", host, "addr", "add", `${ADDR.hostSide6}/64`, "dev", `vh${id}`, "nodad");
    ip("-n", inet, "addr", "add", `${ADDR.inetSide6}/64`, "dev", `vi${id}`, "nodad");
    for (const a of [ADDR.tcp6, ADDR.v6only]) ip("-n", inet, "addr", "add", `${a}/128`, "dev", "lo");
    ip("-n", host, "-6", "route", "add", "2001:db8::/48", "via", ADDR.inetSide6);
    ip("-n", host, "route", "add", "10.99.0.0/24", "via", ADDR.inetSide);
  } catch (err) {
    cleanup();
    const why = (err as { stderr?: Buffer }).stderr?.toString().trim() ?? String(err);
    throw new Error(`setting up the test's network namespaces failed (these tests need root and iproute2): ${why}`);
  }
  const startNode: Netns["startNode"] = (ns, fixture, args, ready) => {
    const script = fileURLToPath(new URL(`./fixtures/${fixture}`, import.meta.url));
    const child = spawn("ip", ["netns", "exec", ns, process.execPath, script, ...args], { stdio: ["ignore", "pipe", "inherit"] });
    children.push(child);
    const lines: string[] = [];
    return new Promise((resolve, reject) => {
      let buf = "";
      child.stdout!.on("data", (d: Buffer) => {
        buf += d.toString();
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          lines.push(line);
          if (ready(line)) resolve({ child, lines });
        }
      });
      child.on("exit", (code) => reject(new Error(`fixture ${fixture} exited with ${code} before it was ready; output:\n${lines.join("\n")}`)));
    });
  };
  return { host, inet, startNode, cleanup };
}

/** The internet namespace's servers, as net-internet.mjs expects them. */
export const INTERNET = {
  dns: ADDR.dns,
  zone: {
    "allowed.test": ADDR.tcp,
    "other.test": ADDR.other,
    "udp.test": ADDR.udp,
    "private.test": ADDR.privateSvc,
  },
  /** AAAA records; v6only.test has no A record. */
  zone6: {
    "v6only.test": ADDR.v6only,
  },
  tcpEcho: [
    [ADDR.tcp, 7],
    [ADDR.privateSvc, 7],
    [ADDR.tcp6, 7],
  ],
  udpEcho: [[ADDR.udp, 7]],
  http: [
    [ADDR.tcp, 80],
    [ADDR.other, 80],
    [ADDR.v6only, 80],
  ],
};
