/**
 * `lane.fs` against a table of expected results, on real VMs: debian:12 with
 * its read-only root and with an ephemeral (writable) one, and busybox. One
 * lane per root, shared by every row.
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineSandbox, rootfs, SandboxFileSystemError, type Lane } from "../../src/index.js";

type Root = "debian-ro" | "debian-ephemeral" | "busybox";
const ROOTS: Record<Root, () => ReturnType<typeof defineSandbox>> = {
  "debian-ro": () => defineSandbox({ rootfs: rootfs.builtIn("debian:12") }),
  "debian-ephemeral": () => defineSandbox({ rootfs: rootfs.ephemeral({ base: rootfs.builtIn("debian:12") }) }),
  busybox: () => defineSandbox({ rootfs: rootfs.builtIn("busybox") }),
};

/** What a row gives: its value, or the errno name it fails with. */
async function outcome(f: () => Promise<unknown>): Promise<unknown> {
  try {
    const v = await f();
    return v instanceof Buffer ? { bytes: v.toString("latin1") } : v === undefined ? "ok" : v;
  } catch (err) {
    if (err instanceof SandboxFileSystemError) return err.code;
    throw err;
  }
}

const W = "/tmp/lanefs";

/** The table: [what, call, expected]; run in order (later rows see earlier changes). */
function table(lane: Lane, writableRoot: boolean): [string, () => Promise<unknown>, unknown][] {
  const fs = lane.fs;
  return [
    ["mkdir", () => fs.mkdir(W), "ok"],
    ["mkdir again", () => fs.mkdir(W), "EEXIST"],
    ["mkdir recursive over a dir", () => fs.mkdir(W, { recursive: true }), "ok"],
    ["writeFile with mode", () => fs.writeFile(`${W}/a.txt`, "hello world", { mode: 0o600 }), "ok"],
    ["readFile utf8", () => fs.readFile(`${W}/a.txt`, { encoding: "utf8" }), "hello world"],
    ["readFile start", () => fs.readFile(`${W}/a.txt`, { start: 6, encoding: "utf8" }), "world"],
    ["readFile start..end", () => fs.readFile(`${W}/a.txt`, { start: 0, end: 5, encoding: "utf8" }), "hello"],
    ["readFile past the end", () => fs.readFile(`${W}/a.txt`, { start: 100, encoding: "utf8" }), ""],
    ["readFile bytes", () => fs.readFile(`${W}/a.txt`, { start: 4, end: 7 }), { bytes: "o w" }],
    ["stat", async () => { const s = await fs.stat(`${W}/a.txt`); return [s.type, s.mode.toString(8), s.size]; }, ["file", "600", 11]],
    ["writeFile keeps the mode of an existing file", async () => { await fs.writeFile(`${W}/a.txt`, "hello world", { mode: 0o777 }); return (await fs.stat(`${W}/a.txt`)).mode.toString(8); }, "600"],
    ["readFile missing", () => fs.readFile(`${W}/missing`), "ENOENT"],
    ["stat missing", () => fs.stat(`${W}/missing`), "ENOENT"],
    ["readFile a directory", () => fs.readFile(W), "EISDIR"],
    ["writeFile over a directory", () => fs.writeFile(W, "x"), "EISDIR"],
    ["readFile through a file", () => fs.readFile(`${W}/a.txt/b`), "ENOTDIR"],
    ["readdir a file", () => fs.readdir(`${W}/a.txt`), "ENOTDIR"],
    ["mkdir recursive over a file", () => fs.mkdir(`${W}/a.txt`, { recursive: true }), "EEXIST"],
    ["writeFile without parents", () => fs.writeFile(`${W}/x/y/z.txt`, "deep"), "ENOENT"],
    ["writeFile createParents", () => fs.writeFile(`${W}/x/y/z.txt`, "deep", { createParents: true }), "ok"],
    ["readFile of it", () => fs.readFile(`${W}/x/y/z.txt`, { encoding: "utf8" }), "deep"],
    ["the guest sees it", async () => (await lane.exec("cat", [`${W}/x/y/z.txt`])).stdout, "deep"],
    ["mkdir nested without recursive", () => fs.mkdir(`${W}/m/n`), "ENOENT"],
    ["mkdir recursive with mode", async () => { await fs.mkdir(`${W}/m/n`, { recursive: true, mode: 0o700 }); return (await fs.stat(`${W}/m/n`)).mode.toString(8); }, "700"],
    ["symlink", () => fs.symlink("a.txt", `${W}/link`), "ok"],
    ["symlink over an entry", () => fs.symlink("a.txt", `${W}/link`), "EEXIST"],
    ["readlink", () => fs.readlink(`${W}/link`), "a.txt"],
    ["readlink of a file", () => fs.readlink(`${W}/a.txt`), "EINVAL"],
    ["lstat a link", async () => (await fs.lstat(`${W}/link`)).type, "symlink"],
    ["stat a link", async () => (await fs.stat(`${W}/link`)).type, "file"],
    ["readFile through a link", () => fs.readFile(`${W}/link`, { encoding: "utf8" }), "hello world"],
    ["dangling link", () => fs.symlink("/nowhere", `${W}/dangling`), "ok"],
    ["exists a dangling link", () => fs.exists(`${W}/dangling`), false],
    ["exists a file", () => fs.exists(`${W}/a.txt`), true],
    ["exists a missing path", () => fs.exists(`${W}/nope/deeper`), false],
    ["exists through a file", () => fs.exists(`${W}/a.txt/x`), false],
    [
      "readdir withTypes",
      () => fs.readdir(W, { withTypes: true }),
      [
        { name: "a.txt", type: "file" },
        { name: "dangling", type: "symlink" },
        { name: "link", type: "symlink" },
        { name: "m", type: "directory" },
        { name: "x", type: "directory" },
      ],
    ],
    ["readdir names", () => fs.readdir(`${W}/x`), ["y"]],
    ["rename", () => fs.rename(`${W}/a.txt`, `${W}/b.txt`), "ok"],
    ["rename missing", () => fs.rename(`${W}/a.txt`, `${W}/c.txt`), "ENOENT"],
    ["rename a dir over a non-empty dir", () => fs.rename(`${W}/m`, `${W}/x`), "ENOTEMPTY"],
    ["after rename", async () => [await fs.exists(`${W}/a.txt`), await fs.exists(`${W}/b.txt`)], [false, true]],
    ["chmod", async () => { await fs.chmod(`${W}/b.txt`, 0o755); return (await fs.stat(`${W}/b.txt`)).mode.toString(8); }, "755"],
    ["chmod missing", () => fs.chmod(`${W}/nope`, 0o644), "ENOENT"],
    ["rm a directory", () => fs.rm(`${W}/x`), "EISDIR"],
    ["rm missing", () => fs.rm(`${W}/nope`), "ENOENT"],
    ["rm missing with force", () => fs.rm(`${W}/nope`, { force: true }), "ok"],
    ["rm a link leaves its target", async () => { await fs.rm(`${W}/link`); return fs.exists(`${W}/b.txt`); }, true],
    ["rm recursive", async () => { await fs.rm(`${W}/x`, { recursive: true }); return fs.exists(`${W}/x`); }, false],
    ["write on the root", () => fs.writeFile("/lanefs-root.txt", "x"), writableRoot ? "ok" : "EROFS"],
    ["mkdir on the root", () => fs.mkdir("/lanefs-dir"), writableRoot ? "ok" : "EROFS"],
    ["readFile on the root", async () => (await fs.readFile("/etc/passwd", { encoding: "utf8" })).startsWith("root:"), true],
    ["rm on the root", () => fs.rm("/etc/passwd"), writableRoot ? "ok" : "EROFS"],
    ["chmod on the root", () => fs.chmod("/etc", 0o755), writableRoot ? "ok" : "EROFS"],
    ["readFile of a procfs file (size 0)", async () => (await fs.readFile("/proc/self/status", { encoding: "utf8" })).includes("Name:"), true],
    ["readdir /", async () => (await fs.readdir("/")).includes("etc"), true],
  ];
}

describe.each(Object.keys(ROOTS) as Root[])("lane.fs on %s", (root) => {
  let lane: Lane;
  beforeAll(async () => {
    lane = await ROOTS[root]().boot();
  });
  afterAll(async () => {
    await lane?.close();
  });

  it("answers every call of the table as expected", async () => {
    const got: [string, unknown][] = [];
    const want: [string, unknown][] = [];
    for (const [what, call, expected] of table(lane, root === "debian-ephemeral")) {
      want.push([what, expected]);
      got.push([what, await outcome(call)]);
    }
    expect(got).toEqual(want);
  });

  it("moves multi-chunk files byte-exact, in ranges too, and pages large directories", async () => {
    const data = randomBytes(3 * 1024 * 1024 + 12345);
    await lane.fs.writeFile(`${W}/big.bin`, data);
    expect((await lane.exec("sha256sum", [`${W}/big.bin`])).stdout.split(" ")[0]).toBe((await import("node:crypto")).createHash("sha256").update(data).digest("hex"));
    expect((await lane.fs.readFile(`${W}/big.bin`)).equals(data)).toBe(true);
    const [a, b] = [700_000, 2_100_123];
    expect((await lane.fs.readFile(`${W}/big.bin`, { start: a, end: b })).equals(data.subarray(a, b))).toBe(true);
    const chunks: Buffer[] = [];
    for await (const c of lane.fs.createReadStream(`${W}/big.bin`, { start: 5 })) chunks.push(Buffer.from(c));
    expect(Buffer.concat(chunks).equals(data.subarray(5))).toBe(true);

    const mk = await lane.exec("sh", ["-c", `mkdir ${W}/many && cd ${W}/many && i=0; while [ $i -lt 2500 ]; do : > f$i; i=$((i+1)); done`]);
    expect(mk.exitCode).toBe(0);
    const names = await lane.fs.readdir(`${W}/many`);
    expect(names.length).toBe(2500);
    expect(new Set(names).size).toBe(2500);
    expect(names).toEqual([...names].sort());
  });

  it("reports a failure as a SandboxFileSystemError with the errno, path and a fix", async () => {
    const err = await lane.fs.writeFile(`${W}/no/such/dir.txt`, "x").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxFileSystemError);
    const e = err as SandboxFileSystemError;
    expect([e.code, e.errno, e.syscall, e.path]).toEqual(["ENOENT", 2, "writeFile", `${W}/no/such/dir.txt`]);
    expect(e.message).toContain("createParents");
    await expect(lane.fs.readFile("relative/path")).rejects.toThrow(/absolute guest path/);
  });
});
