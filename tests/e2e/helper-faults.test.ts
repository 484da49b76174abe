/**
 * The helper's fault injector (`sandbox-host --inject-faults`) corrupts a
 * share of the filesystem, network-policy and block-store requests it sends
 * to Node. Each bad frame costs one operation (EIO in the guest, a denied
 * flow), is reported, and never waits out a deadline; lane, helper and Node
 * carry on. Runs in its own Node process (tests/e2e/fixtures/helper-faults.mjs).
 */
import { describe, expect, it } from "vitest";
import { runFixture } from "./helpers.js";

describe("helper-side fault injection on Node-bound requests", () => {
  it("costs one operation per bad frame, reports it, and never a 30 s wait", async () => {
    const run = await runFixture("helper-faults.mjs", []);
    expect(run.code, run.stderr).toBe(0);
    const r = JSON.parse(run.stdout.trim().split("\n").at(-1)!);
    // Filesystem: some operations fail with EIO, the rest succeed; none waits for the deadline.
    expect(r.fs.ok).toBeGreaterThan(30);
    expect(Object.keys(r.fs.failed)).toEqual(["EIO"]);
    expect(r.fs.slowest).toBeLessThan(5);
    // Network: a corrupted question is a denial (RST / REFUSED) at once.
    expect(r.connect.ok).toBe(0);
    expect(r.connect.slowest).toBeLessThan(5);
    expect(r.dns.slowest).toBeLessThan(5);
    expect(r.afterFaults).toBe(0);
    expect(r.helperAliveDuring).toBe(true);
    expect(r.leftovers).toEqual([]);
    // Block store: corrupted requests fail syncs with EIO quickly and are reported as BlockStoreErrors.
    expect(r.disk.slowest).toBeLessThan(10);
    expect(Object.keys(r.disk.failed).length).toBeGreaterThan(0);
    expect(r.storeErrors).toContain("request");
    expect(r.closeRejected).toBe(true);
    expect(r.closeSeconds).toBeLessThan(60);
    expect(r.diagnostics).toBeGreaterThan(0);
    expect(r.unhandled).toEqual([]);
  }, 700_000);
});
