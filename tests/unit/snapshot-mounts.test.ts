import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SandboxSnapshotError } from "../../src/errors.js";
import { matchSnapshotMounts, readSnapshotMounts, writeSnapshotMounts } from "../../src/snapshot-mounts.js";

const m = (target: string, readOnly = false) => ({ target, mount: { readOnly } });

describe("a snapshot's mounts", () => {
  it("round-trip through mounts.json; a snapshot without one had none", async () => {
    const dir = mkdtempSync(join(tmpdir(), "snap-mounts-"));
    try {
      expect(await readSnapshotMounts(dir)).toEqual([]);
      await writeSnapshotMounts(dir, [{ target: "/mnt/a", readOnly: true }]);
      expect(await readSnapshotMounts(dir)).toEqual([{ target: "/mnt/a", readOnly: true }]);
      writeFileSync(join(dir, "mounts.json"), "{not json");
      await expect(readSnapshotMounts(dir)).rejects.toBeInstanceOf(SandboxSnapshotError);
      writeFileSync(join(dir, "mounts.json"), JSON.stringify({ mounts: [{ target: 1 }] }));
      await expect(readSnapshotMounts(dir)).rejects.toThrow(/corrupt snapshot/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a restore's mounts are put in the snapshot's order, or refused with what differs", () => {
    const recorded = [{ target: "/mnt/a", readOnly: false }, { target: "/mnt/a/b", readOnly: true }];
    expect(matchSnapshotMounts(recorded, [m("/mnt/a/b", true), m("/mnt/a")]).map((x) => x.target)).toEqual(["/mnt/a", "/mnt/a/b"]);
    expect(() => matchSnapshotMounts(recorded, [m("/mnt/a")])).toThrow(/lacks \/mnt\/a\/b/);
    expect(() => matchSnapshotMounts(recorded, [m("/mnt/a"), m("/mnt/a/b", true), m("/x")])).toThrow(/adds \/x/);
    expect(() => matchSnapshotMounts(recorded, [m("/mnt/a"), m("/mnt/a/b", false)])).toThrow(/was read-only at the checkpoint/);
    expect(() => matchSnapshotMounts([], [m("/mnt/a")])).toThrow(/taken with mounts at none/);
    expect(matchSnapshotMounts([], [])).toEqual([]);
  });
});
