import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { codesignArgs, helperSigningProblem, HYPERVISOR_ENTITLEMENTS, setupMacos } from "../../src/setup-macos.js";

describe("setup-macos", () => {
  it("signs ad-hoc with the hypervisor entitlement on macOS", () => {
    const calls: Array<{ cmd: string; args: string[]; entitlements: string }> = [];
    const code = setupMacos({
      platform: "darwin",
      helper: "/pkg/artifacts/bin/sandbox-host",
      run: (cmd, args) => calls.push({ cmd, args, entitlements: readFileSync(args[4]!, "utf8") }),
      log: () => {},
    });
    expect(code).toBe(0);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.cmd).toBe("codesign");
    expect(calls[0]!.args).toEqual(["--sign", "-", "--force", "--entitlements", calls[0]!.args[4], "/pkg/artifacts/bin/sandbox-host"]);
    expect(calls[0]!.entitlements).toBe(HYPERVISOR_ENTITLEMENTS);
    expect(HYPERVISOR_ENTITLEMENTS).toContain("<key>com.apple.security.hypervisor</key>\n  <true/>");
    expect(codesignArgs("/h", "/e")).toEqual(["--sign", "-", "--force", "--entitlements", "/e", "/h"]);
  });

  it("explains itself and exits non-zero elsewhere (CLI on this host)", () => {
    const cli = fileURLToPath(new URL("../../bin/sandbox.js", import.meta.url));
    const r = spawnSync(process.execPath, [cli, "setup-macos"], { encoding: "utf8" });
    if (process.platform !== "darwin") {
      expect(r.status).toBe(2);
      expect(r.stderr).toContain("setup-macos only applies to macOS");
      expect(r.stderr).toContain("com.apple.security.hypervisor");
    }
  });
});

describe("helper signing check (boot on macOS)", () => {
  const helper = "/opt/sandbox/bin/sandbox-host";
  it("names setup-macos when the helper lacks the hypervisor entitlement or is unsigned", () => {
    const missing = helperSigningProblem({ platform: "darwin", helper, readEntitlements: () => "<plist><dict></dict></plist>" });
    expect(missing).toMatch(/not signed with the com\.apple\.security\.hypervisor entitlement/);
    expect(missing).toContain("npx @torkbot/sandbox setup-macos");
    const unsigned = helperSigningProblem({
      platform: "darwin",
      helper,
      readEntitlements: () => {
        throw new Error("code object is not signed at all");
      },
    });
    expect(unsigned).toContain("setup-macos");
  });
  it("is satisfied by a helper signed with the entitlement, and never checks elsewhere", () => {
    expect(helperSigningProblem({ platform: "darwin", helper, readEntitlements: () => HYPERVISOR_ENTITLEMENTS })).toBeUndefined();
    const never = () => {
      throw new Error("must not run");
    };
    expect(helperSigningProblem({ platform: "linux", helper, readEntitlements: never })).toBeUndefined();
  });
});
