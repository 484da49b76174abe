import { mkdtempSync, readFileSync, rmSync, writeFileSync, truncateSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DirectorySnapshotStore, listSavedSnapshots, SandboxSnapshotError } from "../../src/index.js";
import { fetchSnapshotFiles, requirementMismatch, saveSnapshotFiles, type SnapshotRequirements } from "../../src/snapshot-store.js";

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), "sbx-snapstore-unit-"));
  dirs.push(d);
  return d;
};
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

const requires: SnapshotRequirements = { version: "0.1.0", backend: "qemu", imageSha256: "a", kernelSha256: "k", initrdSha256: "i", memoryMiB: 512, cpus: 1, rootDisk: "writable" };

describe("snapshot stores", () => {
  it("saves files then the manifest, lists only complete saves, verifies on fetch", async () => {
    const src = tmp();
    writeFileSync(join(src, "state"), "device state");
    writeFileSync(join(src, "ram"), Buffer.alloc(3 << 20, 7));
    const store = new DirectorySnapshotStore(tmp());
    await saveSnapshotFiles(store, src, "s1", "h", requires);
    expect(await listSavedSnapshots(store)).toEqual(["s1"]);
    const out = tmp();
    const m = await fetchSnapshotFiles(store, "s1", out);
    expect(m.requires).toEqual(requires);
    expect(readFileSync(join(out, "state"), "utf8")).toBe("device state");

    truncateSync(join(store.root, "s1", "ram"), 1 << 20);
    await expect(fetchSnapshotFiles(store, "s1", tmp())).rejects.toThrow(/truncated/);
    writeFileSync(join(store.root, "s1", "ram"), Buffer.alloc(3 << 20, 8));
    await expect(fetchSnapshotFiles(store, "s1", tmp())).rejects.toThrow(/corrupt/);
    unlinkSync(join(store.root, "s1", "manifest.json"));
    expect(await listSavedSnapshots(store)).toEqual([]);
    await expect(fetchSnapshotFiles(store, "s1", tmp())).rejects.toBeInstanceOf(SandboxSnapshotError);
  });

  it("refuses names that leave the store and says which requirement differs", async () => {
    const store = new DirectorySnapshotStore(tmp());
    await expect(store.put("../x", (async function* () {})())).rejects.toBeInstanceOf(SandboxSnapshotError);
    await expect(fetchSnapshotFiles(store, "a/b", tmp())).rejects.toBeInstanceOf(SandboxSnapshotError);
    expect(requirementMismatch(requires, { ...requires, memoryMiB: 768 })).toContain("memoryMiB 512");
    expect(requirementMismatch(requires, { ...requires })).toBeUndefined();
  });
});
