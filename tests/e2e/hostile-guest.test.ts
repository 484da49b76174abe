/**
 * A hostile guest: a root process takes init's control-port descriptor and
 * writes frames (bad JSON, wrong types, null, out-of-range numbers, credit and
 * acks never granted, host-only and helper-only kinds, lengths up to 4 GiB,
 * frames cut in half, random and mutated bytes) for 60 s in all, while a
 * second lane in the same Node process runs an exec loop. Runs in its own
 * Node process (tests/e2e/fixtures/hostile-guest.mjs), so a crash would show
 * as its exit code and its RSS is its own.
 */
import { describe, expect, it } from "vitest";
import { runFixture } from "./helpers.js";

describe("a hostile guest writing to the control port", () => {
  it("ends only its own lane, with a SandboxProtocolError naming the offence; Node and the other lane carry on", async () => {
    const run = await runFixture("hostile-guest.mjs", ["--expose-gc"]);
    expect(run.code, run.stderr).toBe(0);
    const r = JSON.parse(run.stdout.trim().split("\n").at(-1)!);
    for (const c of r.cases) {
      if (c.harmless) {
        expect(c.matches, `${c.mode}: a harmless frame keeps the lane working`).toBe(true);
        continue;
      }
      expect(c.protocolError, `${c.mode}: ${c.message}`).toBe(true);
      expect(c.offender, c.mode).toBe("guest");
      expect(c.matches, `${c.mode}: ${c.message}`).toBe(true);
      expect(c.sameAsLaneEnd, c.mode).toBe(true);
    }
    expect(r.cases).toHaveLength(17);
    expect(r.fuzz.lanes).toBeGreaterThan(0);
    expect(r.fuzz.other ?? [], "every fuzzed lane ended with a protocol error or kept working").toEqual([]);
    expect(r.attackSeconds).toBeGreaterThanOrEqual(60);
    expect(r.loopError).toBeNull();
    expect(r.loop).toBeGreaterThan(50);
    expect(r.unhandled).toEqual([]);
    expect(r.leftovers).toEqual([]);
    expect(r.otherLaneGone).toBe(true);
    expect(r.rssGrowthMiB).toBeLessThan(64);
  }, 700_000);
});
