/**
 * Trees through `lane.upload` / `lane.download` on a real VM: a 10,000-file
 * host tree (modes, links, an empty dir, mtimes) goes in and comes back
 * identical; a guest tree with links pointing outside (`../../etc/passwd`,
 * absolute) is extracted as links and writes nothing outside `hostDir`.
 * `lane.fs.watch` on the same lane: a recursive tree while a guest process
 * churns 1,000 files, an overflow when the consumer stops reading, and the
 * ends (return(), AbortSignal, the lane's close).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Header } from "tar";
import { defineSandbox, rootfs, SandboxConfigError, SandboxFileSystemError, type GuestWatchEvent, type Lane } from "../../src/index.js";

function walk(dir: string, rel = ""): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const st = lstatSync(join(dir, r));
    // File mtimes (to the second, as tar keeps them), modes, link targets.
    const what = st.isSymbolicLink() ? `link ${readlinkSync(join(dir, r))}` : st.isDirectory() ? `dir ${(st.mode & 0o7777).toString(8)}` : `file ${st.size} ${(st.mode & 0o7777).toString(8)} ${Math.floor(st.mtimeMs / 1000)}`;
    out.push(`${r} ${what}`);
    if (st.isDirectory() && !st.isSymbolicLink()) out.push(...walk(dir, r));
  }
  return out;
}

describe("lane.upload / lane.download", () => {
  let lane: Lane;
  const work = mkdtempSync(join(tmpdir(), "lanefs-trees-"));
  beforeAll(async () => {
    lane = await defineSandbox({ rootfs: rootfs.builtIn("busybox"), resources: { memoryMiB: 1024 } }).boot();
  });
  afterAll(async () => {
    await lane?.close();
    rmSync(work, { recursive: true, force: true });
  });

  it("moves a 10,000-file tree in and out: diff -r clean, modes, link targets and mtimes equal", { timeout: 600_000 }, async () => {
    const src = join(work, "src");
    const when = new Date("2024-05-06T07:08:09Z");
    for (let d = 0; d < 100; d++) {
      const dir = join(src, `d${d}`);
      mkdirSync(dir, { recursive: true });
      for (let f = 0; f < 100; f++) {
        const p = join(dir, `f${f}.txt`);
        writeFileSync(p, `file ${d}/${f}\n`.repeat(1 + (f % 7)), { mode: f % 3 === 0 ? 0o755 : f % 3 === 1 ? 0o600 : 0o644 });
        utimesSync(p, when, when);
      }
    }
    symlinkSync("d0/f0.txt", join(src, "rel-link"));
    symlinkSync("../d1/f1.txt", join(src, "d0", "up-link"));
    mkdirSync(join(src, "empty"), { mode: 0o700 });
    const events: number[] = [];
    const up = await lane.upload(src, "/tmp/up", { onProgress: (p) => events.push(p.entries) });
    expect(up.entries).toBeGreaterThanOrEqual(10_000 + 100 + 3);
    expect(events.length).toBe(up.entries);
    expect((await lane.exec("sh", ["-c", "find /tmp/up -type f | wc -l"])).stdout.trim()).toBe("10000");
    const back = join(work, "back");
    const down = await lane.download("/tmp/up", back);
    expect(down.refused).toEqual([]);
    // The upload counts the tar's own root entry ("./"); the download has none.
    expect(down.entries).toBe(up.entries - 1);
    execFileSync("diff", ["-r", "--no-dereference", src, back]);
    expect(walk(back)).toEqual(walk(src));
  });

  it("extracts a guest tree with outside-pointing links as links, writing nothing outside hostDir", async () => {
    const passwd = createHash("sha256").update(readFileSync("/etc/passwd")).digest("hex");
    const mk = await lane.exec("sh", [
      "-c",
      "mkdir -p /tmp/evil/d && ln -s ../../etc/passwd /tmp/evil/rel && ln -s /etc/passwd /tmp/evil/abs && ln -s / /tmp/evil/root && echo pwned > /tmp/evil/d/passwd",
    ]);
    expect(mk.exitCode).toBe(0);
    const parent = join(work, "jail");
    mkdirSync(parent);
    const host = join(parent, "inside");
    const got = await lane.download("/tmp/evil", host);
    expect(readdirSync(parent)).toEqual(["inside"]);
    // No link out of hostDir is made: the escaping one is skipped, absolute ones re-rooted inside; each is reported.
    expect(() => lstatSync(join(host, "rel"))).toThrow(/ENOENT/);
    expect(readlinkSync(join(host, "abs"))).toBe("etc/passwd");
    expect([...new Set(got.refused!.map((r) => r.path))].sort()).toEqual(["abs", "rel", "root"]);
    expect(readFileSync(join(host, "d/passwd"), "utf8")).toBe("pwned\n");
    expect(createHash("sha256").update(readFileSync("/etc/passwd")).digest("hex")).toBe(passwd);

    // A tar stream naming a path outside the target is refused, and nothing is written for it.
    const h = new Header({ path: "../../etc/passwd", mode: 0o644, size: 0, type: "File", mtime: new Date() });
    h.encode();
    const tarBytes = Buffer.concat([h.block!, Buffer.alloc(1024)]);
    const stream = new ReadableStream<Uint8Array>({ start: (c) => (c.enqueue(tarBytes), c.close()) });
    await expect(lane.upload(stream, "/tmp/in")).rejects.toBeInstanceOf(SandboxConfigError);
    expect((await lane.exec("cat", ["/etc/passwd"])).stdout).not.toBe("");

    // The stream form is plain tar: a host tar lists it.
    const chunks: Buffer[] = [];
    for await (const c of lane.download("/tmp/evil")) chunks.push(Buffer.from(c));
    const listing = execFileSync("tar", ["-tv"], { input: Buffer.concat(chunks) }).toString();
    expect(listing).toMatch(/rel -> \.\.\/\.\.\/etc\/passwd/);
  });

  it("watches a recursive tree while a guest process churns 1,000 files: create, modify, delete, rename", { timeout: 300_000 }, async () => {
    const W = "/tmp/watched";
    await lane.fs.mkdir(`${W}/sub`, { recursive: true });
    const watcher = lane.fs.watch(W, { recursive: true });
    await watcher.ready;
    const seen = new Map<string, Set<string>>();
    const consumed = (async () => {
      for await (const e of watcher) {
        if (!seen.has(e.path)) seen.set(e.path, new Set());
        seen.get(e.path)!.add(e.type);
        if (e.path === `${W}/done`) break;
      }
    })();
    // deep/er is made and filled at once: its first files exist before its watch does (found by the scan).
    const D = `${W}/sub/deep/er`;
    const churn = await lane.exec("sh", [
      "-c",
      `mkdir -p ${D} && i=0; while [ $i -lt 1000 ]; do echo a > ${D}/f$i; i=$((i+1)); done; echo b >> ${W}/sub/deep/er/f1; mv ${D}/f2 ${W}/sub/g2; rm ${D}/f3; : > ${W}/done`,
    ]);
    expect(churn.exitCode).toBe(0);
    await consumed;
    expect(seen.has(W) && seen.get(W)!.has("overflow")).toBe(false);
    const created = [...Array(1000).keys()].filter((i) => seen.get(`${D}/f${i}`)?.has("create"));
    expect(created.length).toBe(1000);
    expect([...seen.get(`${D}/f1`)!]).toContain("modify");
    expect([...seen.get(`${D}/f2`)!]).toContain("rename");
    expect([...seen.get(`${W}/sub/g2`)!]).toEqual(["rename"]);
    expect([...seen.get(`${D}/f3`)!]).toContain("delete");
    expect([...seen.get(`${W}/sub/deep`)!]).toContain("create");
    expect([...seen.get(D)!]).toContain("create");
    // return() (the break) ended it: the iterator is done.
    expect(await watcher.next()).toEqual({ value: undefined, done: true });
  });

  it("reports an overflow when the consumer stops reading, never silent loss", { timeout: 300_000 }, async () => {
    const W = "/tmp/flood";
    await lane.fs.mkdir(W, { recursive: true });
    const watcher = lane.fs.watch(W, { maxQueued: 16 });
    await watcher.ready;
    // Nobody reads while 1,000 files are made: the host holds one window, the guest 16 events, the rest is lost.
    const churn = await lane.exec("sh", ["-c", `i=0; while [ $i -lt 1000 ]; do : > ${W}/f$i; i=$((i+1)); done`]);
    expect(churn.exitCode).toBe(0);
    const events: GuestWatchEvent[] = [];
    for await (const e of watcher) {
      events.push(e);
      if (e.type === "overflow") break;
    }
    expect(events.at(-1)).toEqual({ type: "overflow", path: W });
    const creates = events.filter((e) => e.type === "create").length;
    expect(creates).toBeGreaterThan(0);
    expect(creates).toBeLessThan(1000);
    expect(events.length).toBeLessThanOrEqual(256 + 16 + 1);
  });

  it("rejects a missing path with ENOENT and ends on an AbortSignal", async () => {
    const missing = lane.fs.watch("/tmp/no/such/dir");
    const err = await missing.next().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxFileSystemError);
    expect([(err as SandboxFileSystemError).code, (err as SandboxFileSystemError).syscall, (err as SandboxFileSystemError).path]).toEqual(["ENOENT", "watch", "/tmp/no/such/dir"]);
    await expect(missing.ready).rejects.toBeInstanceOf(SandboxFileSystemError);

    const ac = new AbortController();
    const watcher = lane.fs.watch("/tmp", { signal: ac.signal });
    await watcher.ready;
    const next = watcher.next();
    ac.abort();
    expect(await next).toEqual({ value: undefined, done: true });
  });

  // Last: it closes the shared lane.
  it("ends the iteration cleanly when the lane closes", { timeout: 120_000 }, async () => {
    const watcher = lane.fs.watch("/tmp", { recursive: true });
    await watcher.ready;
    let sawLast!: () => void;
    const last = new Promise<void>((r) => (sawLast = r));
    const consumed = (async () => {
      for await (const e of watcher) if (e.path === "/tmp/last.txt" && e.type === "create") sawLast();
      return "ended";
    })();
    await lane.fs.writeFile("/tmp/last.txt", "x");
    await last;
    // Still iterating, waiting for the next event, when the lane goes.
    await lane.close();
    expect(await consumed).toBe("ended");
  });
});
