import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { alive, startFixture, waitUntil } from "./helpers.js";
import { defineSandbox, fs, rootfs, SandboxBootError, type Lane, type MemoryFileSystem, type SandboxFileSystem } from "../../src/index.js";

const suite = readFileSync(new URL("./fixtures/posix_suite.py", import.meta.url), "utf8");
const sandbox = defineSandbox({ rootfs: rootfs.builtIn("debian:12") });

/** Every regular file under `dir` of a memfs volume: path → sha256. */
function hostTree(vol: MemoryFileSystem, dir = "/"): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of vol.readdirSync(dir) as string[]) {
    const p = dir === "/" ? `/${name}` : `${dir}/${name}`;
    const st = vol.lstatSync(p);
    if (st.isDirectory()) Object.assign(out, hostTree(vol, p));
    else if (st.isFile()) out[p] = createHash("sha256").update(vol.readFileSync(p) as Buffer).digest("hex");
  }
  return out;
}

/** The same listing made in the guest with find + sha256sum. */
async function guestTree(lane: Lane, dir: string): Promise<Record<string, string>> {
  const r = await lane.exec("sh", ["-c", `cd ${dir} && find . -type f -print0 | xargs -0 -r sha256sum`]);
  expect(r.exitCode, r.stderr).toBe(0);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split("\n").filter(Boolean)) {
    const [hash, path] = [line.slice(0, 64), line.slice(66)];
    out[path.slice(1)] = hash;
  }
  return out;
}

describe("memfs workspace mounted in the guest", () => {
  let lane: Lane;
  let ws: MemoryFileSystem;
  beforeAll(async () => {
    ws = fs.memory({ files: { "/task.txt": "Summarize the current GitHub user\n", "/suite.py": suite } });
    lane = await sandbox.boot({ mounts: { "/workspace": fs.virtual(ws) }, cwd: "/workspace" });
  });
  afterAll(async () => {
    await lane?.close();
  });

  it("serves host files to the guest and guest writes to the host", async () => {
    const r = await lane.exec("sh", ["-c", "cat task.txt && echo hi > a && cat a && stat -c '%U %a' a"]);
    expect(r).toMatchObject({ exitCode: 0, stdout: "Summarize the current GitHub user\nhi\nroot 644\n" });
    expect(ws.readFileSync("/a", "utf8")).toBe("hi\n");
  });

  it("is coherent both ways: guest close → host read, host write → next guest open", async () => {
    // A guest process keeps writing while the host reads after each of its closes.
    for (let i = 0; i < 3; i++) {
      const w = await lane.exec("sh", ["-c", `printf 'round-${i}' > coherent.txt`]);
      expect(w.exitCode).toBe(0);
      expect(ws.readFileSync("/coherent.txt", "utf8")).toBe(`round-${i}`);
      ws.writeFileSync("/coherent.txt", `host-${i}-longer-than-before`);
      const r = await lane.exec("cat", ["coherent.txt"]);
      expect(r.stdout).toBe(`host-${i}-longer-than-before`);
    }
    ws.mkdirSync("/made-by-host");
    ws.writeFileSync("/made-by-host/x", "x");
    ws.unlinkSync("/a");
    const r = await lane.exec("sh", ["-c", "cat made-by-host/x; test -e a && echo a-still-there || echo a-gone"]);
    expect(r.stdout).toBe("xa-gone\n");
  });

  it("passes the POSIX behaviour suite exactly as the guest's tmpfs does", async () => {
    const mount = await lane.exec("python3", ["/workspace/suite.py", "/workspace/posix"], { timeoutMs: 300_000 });
    const tmpfs = await lane.exec("python3", ["/workspace/suite.py", "/tmp/posix"], { timeoutMs: 300_000 });
    expect(mount.stderr).toBe("");
    expect(tmpfs.stderr).toBe("");
    const lines = mount.stdout.trim().split("\n");
    expect(lines.length).toBeGreaterThan(60);
    expect(lines.at(-1)).toBe("done");
    expect(mount.stdout).not.toContain("child-error");
    expect(mount.stdout).toBe(tmpfs.stdout);
    // A few results spelled out, so "both wrong the same way" cannot pass.
    expect(lines).toContain("rename over existing file: (False, b'new')");
    expect(lines).toContain("rename dir over non-empty dir: ENOTEMPTY");
    expect(lines).toContain("unlinked but open: (b'STILL here', 10, False)");
    expect(lines).toContain("O_APPEND: b'abcd'");
    expect(lines).toContain("EACCES read 0600 file: EACCES");
    expect(lines).toContain("chown: (1234, 5678)");
    // uid/gid and mode the guest set are what the host sees.
    const st = ws.statSync("/posix/h1");
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([1234, 5678, 0o640]);
  });

  it("runs git init/add/commit and python3 writes; the host sees the exact tree", async () => {
    const script = [
      "set -e",
      "mkdir -p proj && cd proj",
      "python3 -c \"import os; os.makedirs('src/pkg', exist_ok=True); open('src/pkg/mod.py','w').write('print(42)\\n'); open('data.bin','wb').write(bytes(range(256))*4096)\"",
      "git init -q -b main .",
      "git -c user.name=agent -c user.email=agent@example.com add -A",
      "git -c user.name=agent -c user.email=agent@example.com commit -q -m 'first commit'",
      "git log --oneline | wc -l",
      "git status --porcelain | wc -l",
      "git fsck --no-progress 2>&1 | grep -v '^Checking' || true",
    ].join("\n");
    const r = await lane.exec("sh", ["-c", script], { timeoutMs: 300_000 });
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe("1\n0\n");
    const guest = await guestTree(lane, "/workspace/proj");
    const host = hostTree(ws, "/proj");
    expect(Object.keys(host).sort()).toEqual(Object.keys(guest).map((p) => `/proj${p}`).sort());
    for (const [p, h] of Object.entries(guest)) expect(host[`/proj${p}`], p).toBe(h);
    expect(Object.keys(host).some((p) => p.startsWith("/proj/.git/objects/"))).toBe(true);
    expect(ws.readFileSync("/proj/src/pkg/mod.py", "utf8")).toBe("print(42)\n");
    expect(ws.readFileSync("/proj/.git/HEAD", "utf8")).toBe("ref: refs/heads/main\n");
  });

  it("moves a 100 MB file byte-exact in both directions", async () => {
    const w = await lane.exec("sh", ["-c", "head -c 104857600 /dev/urandom > big.bin && sha256sum big.bin | cut -c1-64"], { timeoutMs: 600_000 });
    expect(w.exitCode, w.stderr).toBe(0);
    const data = ws.readFileSync("/big.bin") as Buffer;
    expect(data.length).toBe(100 * 1024 * 1024);
    expect(createHash("sha256").update(data).digest("hex")).toBe(w.stdout.trim());
    ws.unlinkSync("/big.bin");
    const host = Buffer.alloc(101 * 1024 * 1024, 7);
    host.write("tail", host.length - 4);
    ws.writeFileSync("/host-big.bin", host);
    const r = await lane.exec("sh", ["-c", "sha256sum host-big.bin | cut -c1-64; tail -c 4 host-big.bin"], { timeoutMs: 600_000 });
    expect(r.stdout).toBe(`${createHash("sha256").update(host).digest("hex")}\ntail`);
    ws.unlinkSync("/host-big.bin");
  });
});

describe("lifecycle with mounts", () => {
  it("kill -9 of Node mid-write leaves no helper or VMM behind", async () => {
    const { child, line } = await startFixture("hold-mount.mjs");
    const { helperPid, vmmPid } = JSON.parse(line) as { helperPid: number; vmmPid: number };
    expect(alive(helperPid) && alive(vmmPid)).toBe(true);
    child.kill("SIGKILL");
    expect(await waitUntil(() => !alive(helperPid) && !alive(vmmPid), 5000)).toBe(true);
  });
});

describe("filesystem errors reach the guest as errno", () => {
  it("maps JavaScript error codes (ENOSPC, EACCES, unknown → EIO) and read-only views to EROFS", async () => {
    const backing = fs.memory({ files: { "/ro/keep.txt": "keep\n", "/rw/forbidden": "" } });
    const inner = backing.promises as unknown as SandboxFileSystem;
    // A SandboxFileSystem written by hand: a quota on bytes written, a forbidden path, a buggy call.
    let written = 0;
    const quota: SandboxFileSystem = {
      lstat: (p) => inner.lstat(p),
      readdir: (p) => inner.readdir(p),
      mkdir: (p, m) => inner.mkdir(p, m),
      rmdir: (p) => inner.rmdir(p),
      unlink: (p) => inner.unlink(p),
      rename: (a, b) => inner.rename(a, b),
      symlink: (t, p) => inner.symlink(t, p),
      link: (a, b) => inner.link(a, b),
      chmod: (p, m) => inner.chmod(p, m),
      truncate: (p, n) => inner.truncate(p, n),
      utimes: (p, a, m) => inner.utimes(p, a, m),
      async open(p, flags, mode) {
        if (p.endsWith("forbidden")) throw Object.assign(new Error("policy"), { code: "EACCES" });
        const h = await inner.open(p, flags, mode);
        return {
          read: (b, o, l, pos) => h.read(b, o, l, pos),
          stat: () => h.stat(),
          truncate: (n) => h.truncate(n),
          close: () => h.close(),
          async write(b, o, l, pos) {
            if (written + l > 64 * 1024) throw Object.assign(new Error("quota"), { code: "ENOSPC" });
            written += l;
            return h.write(b, o, l, pos);
          },
        };
      },
      readlink: () => Promise.reject(new Error("no code at all")),
    };
    await using lane = await sandbox.boot({
      mounts: { "/mnt/quota": fs.virtual(quota), "/mnt/ro": fs.virtual(fs.readOnly(backing)) },
    });
    const r = await lane.exec("sh", [
      "-c",
      [
        "(head -c 200000 /dev/zero > /mnt/quota/rw/big) 2>&1 | sed 's/.*: //'",
        "cat /mnt/quota/rw/forbidden 2>&1 | sed 's/.*: //'",
        "ln -s x /mnt/quota/rw/l && readlink /mnt/quota/rw/l; echo readlink=$?",
        "(echo x > /mnt/ro/ro/new) 2>&1 | sed 's/.*: //'",
        "rm /mnt/ro/ro/keep.txt 2>&1 | sed 's/.*: //'",
        "cat /mnt/ro/ro/keep.txt",
        "grep -c ' /mnt/ro virtiofs ro,' /proc/mounts",
      ].join("; "),
    ]);
    expect(r.stdout).toBe(
      [
        "No space left on device",
        "Permission denied",
        "readlink=1",
        "Read-only file system",
        "Read-only file system",
        "keep",
        "1",
        "",
      ].join("\n"),
    );
    expect(backing.existsSync("/ro/new")).toBe(false);
    expect(backing.readFileSync("/ro/keep.txt", "utf8")).toBe("keep\n");
  });
});

describe("mount targets", () => {
  it("creates missing targets on tmpfs and inside earlier mounts, in parent-first order", async () => {
    const outer = fs.memory({ files: { "/readme": "outer\n" } });
    const inner = fs.memory({ files: { "/readme": "inner\n" } });
    await using lane = await sandbox.boot({
      // Given child-first on purpose: boot orders parents first.
      mounts: { "/run/outer/deep/inner": fs.virtual(inner), "/run/outer": fs.virtual(outer) },
      cwd: "/run/outer/deep/inner",
    });
    const r = await lane.exec("sh", ["-c", "cat readme ../../readme"]);
    expect(r.stdout).toBe("inner\nouter\n");
    // The nested target was created inside the outer JavaScript filesystem.
    expect(outer.statSync("/deep/inner").isDirectory()).toBe(true);
  });

  it("fails the boot with init's message when the target would change a read-only root", async () => {
    const err = await sandbox
      .boot({ mounts: { "/opt/newdir/ws": fs.virtual(fs.memory()) } })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxBootError);
    const e = err as SandboxBootError;
    expect(e.stage).toBe("mounts");
    expect(e.guestMessage).toContain("mount target /opt/newdir/ws does not exist");
    expect(e.message).toContain("/opt is on the root filesystem");
  });

  it("creates a missing target on an ephemeral root", async () => {
    const eph = defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }) });
    const data = fs.memory({ files: { "/f": "eph\n" } });
    await using lane = await eph.boot({ mounts: { "/srv/data": fs.virtual(data) } });
    expect((await lane.exec("cat", ["/srv/data/f"])).stdout).toBe("eph\n");
  });
});

describe("one filesystem in two running sandboxes", () => {
  it("shares one tree: each lane sees the other's completed writes at its next open", async () => {
    const shared = fs.memory({ files: { "/log": "" } });
    await using a = await sandbox.boot({ hostname: "lane-a", mounts: { "/mnt/shared": fs.virtual(shared) } });
    await using b = await sandbox.boot({ hostname: "lane-b", mounts: { "/mnt/shared": fs.virtual(shared) } });
    expect((await a.exec("sh", ["-c", "echo from-a > /mnt/shared/a.txt; hostname >> /mnt/shared/log"])).exitCode).toBe(0);
    expect((await b.exec("sh", ["-c", "cat /mnt/shared/a.txt; echo from-b > /mnt/shared/b.txt; hostname >> /mnt/shared/log"])).stdout).toBe("from-a\n");
    expect((await a.exec("sh", ["-c", "cat /mnt/shared/b.txt; mv /mnt/shared/b.txt /mnt/shared/b-moved.txt"])).stdout).toBe("from-b\n");
    const seen = await b.exec("sh", ["-c", "ls /mnt/shared; cat /mnt/shared/log"]);
    expect(seen.stdout).toBe("a.txt\nb-moved.txt\nlog\nlane-a\nlane-b\n");
    // A file open in A stays readable after B deletes it (A's handle is its own).
    const holder = a.spawn("sh", ["-c", "exec 3< /mnt/shared/a.txt; echo opened; read line; cat <&3"]);
    const reader = holder.stdout.getReader();
    let out = "";
    while (!out.includes("opened\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    expect(out).toBe("opened\n");
    expect((await b.exec("rm", ["/mnt/shared/a.txt"])).exitCode).toBe(0);
    // Opening the name again in A fails at once (close-to-open), though A still holds the file.
    expect((await a.exec("sh", ["-c", "cat /mnt/shared/a.txt 2>/dev/null || echo gone-for-a-too"])).stdout).toBe("gone-for-a-too\n");
    const w = holder.stdin.getWriter();
    await w.write(new TextEncoder().encode("go\n"));
    await w.close();
    for (let r = await reader.read(); !r.done; r = await reader.read()) out += new TextDecoder().decode(r.value);
    expect(out).toBe("opened\nfrom-a\n");
    expect((await holder.exit).exitCode).toBe(0);
    expect(shared.readFileSync("/log", "utf8")).toBe("lane-a\nlane-b\n");
  });
});

describe("host directory adapter", () => {
  let base: string;
  let root: string;
  let outside: string;
  let before: string[];
  const snapshot = () => {
    const out: string[] = [];
    for (const n of readdirSync(outside).sort()) out.push(`${n}:${createHash("sha256").update(readFileSync(join(outside, n))).digest("hex")}`);
    out.push(`passwd:${createHash("sha256").update(readFileSync("/etc/passwd")).digest("hex")}`);
    return out;
  };
  beforeAll(() => {
    base = mkdtempSync(join(tmpdir(), "sandbox-hostdir-"));
    root = join(base, "root");
    outside = join(base, "outside");
    mkdirSync(join(root, "d"), { recursive: true });
    mkdirSync(outside);
    writeFileSync(join(outside, "secret"), "host secret\n");
    writeFileSync(join(root, "suite.py"), suite);
    before = snapshot();
  });
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it("passes the POSIX suite like tmpfs (ownership aside: the host keeps its own owners)", async () => {
    await using lane = await sandbox.boot({ mounts: { "/workspace": fs.virtual(fs.hostDir(root)) } });
    const mount = await lane.exec("python3", ["/workspace/suite.py", "/workspace/posix", "--no-chown"], { timeoutMs: 300_000 });
    const tmpfs = await lane.exec("python3", ["/workspace/suite.py", "/tmp/posix", "--no-chown"], { timeoutMs: 300_000 });
    expect(mount.stderr).toBe("");
    expect(mount.stdout.trim().split("\n").at(-1)).toBe("done");
    expect(mount.stdout).toBe(tmpfs.stdout);
    expect(readFileSync(join(root, "posix/h1")).length).toBeGreaterThan(0);
    const chown = await lane.exec("sh", ["-c", "chown 1:1 /workspace/posix/h1 2>&1 | sed 's/.*: //'"]);
    expect(chown.stdout).toBe("Operation not permitted\n");
    // Served by the helper itself: the guest's statfs is the host directory's own.
    const df = await lane.exec("stat", ["-f", "-c", "%b %S", "/workspace"]);
    const host = statfsSync(root);
    expect(df.stdout).toBe(`${host.blocks} ${host.bsize}\n`);
  });

  it("resists escapes: '..', symlinks to / and outside, and a rename race across two lanes", async () => {
    const mount = { "/workspace": fs.virtual(fs.hostDir(root)) };
    await using a = await sandbox.boot({ hostname: "attacker-a", mounts: mount });
    await using b = await sandbox.boot({ hostname: "attacker-b", mounts: mount });
    const attempts = [
      `cat /workspace/../../proc/sys/kernel/hostname`, // the guest's own file: ".." stops at the guest's root
      `cat /workspace/../..${outside}/secret`,
      `echo pwned > /workspace/../../${outside}/secret`,
      `ln -s / /workspace/rootlink && echo pwned > /workspace/rootlink${outside}/pwned`,
      `ln -s ${outside} /workspace/outlink && cat /workspace/outlink/secret`,
      `ln -s ../outside /workspace/rel && echo pwned > /workspace/rel/pwned`,
      `ln -s /etc/passwd /workspace/pw && echo pwned >> /workspace/pw`,
    ];
    const results: string[] = [];
    for (const cmd of attempts) {
      const r = await a.exec("sh", ["-c", cmd]);
      results.push(`${r.exitCode === 0 ? "ok" : "failed"} ${r.stdout.trim()}`);
    }
    // Only the first reads something, and it is the guest's own hostname.
    expect(results[0]).toBe("ok attacker-a");
    expect(results.slice(1).every((r) => r.startsWith("failed"))).toBe(true);

    // Rename race: A keeps working inside /workspace/d by its open directory, while B
    // swaps d for a symlink to the host's outside directory, over and over.
    const race = [
      "cd /workspace/d || exit 1",
      "i=0; while [ $i -lt 200 ]; do echo pwned > f$i 2>/dev/null; i=$((i+1)); done",
      "echo finished",
    ].join("; ");
    const swapper = [
      "i=0; while [ $i -lt 100 ]; do",
      `mv /workspace/d /workspace/d.away 2>/dev/null; ln -s ${outside} /workspace/d 2>/dev/null;`,
      "rm -f /workspace/d 2>/dev/null; mv /workspace/d.away /workspace/d 2>/dev/null; i=$((i+1)); done; echo swapped",
    ].join(" ");
    const [ra, rb] = await Promise.all([a.exec("sh", ["-c", race], { timeoutMs: 300_000 }), b.exec("sh", ["-c", swapper], { timeoutMs: 300_000 })]);
    expect(ra.stdout).toBe("finished\n");
    expect(rb.stdout).toBe("swapped\n");
    // A's directory was renamed under it and the name replaced by a symlink: its next create must not follow it.
    const stale = await a.exec("sh", ["-c", `cd /workspace/d && mv /workspace/d /workspace/d.gone && ln -s ${outside} /workspace/d && echo pwned > via-stale; echo $?`]);
    expect(stale.stdout.trim()).toBe("0"); // the guest kernel tracks the renamed directory: the file lands in d.gone
    expect(existsSync(join(root, "d.gone", "via-stale"))).toBe(true);
    expect(snapshot()).toEqual(before);
    expect(readdirSync(outside)).toEqual(["secret"]);
  });
});
