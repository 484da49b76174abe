/**
 * `sandbox setup-macos`: ad-hoc signs the installed helper with the
 * Hypervisor.framework entitlement. Local only: no network, no Apple account.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const HYPERVISOR_ENTITLEMENTS = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>com.apple.security.hypervisor</key>
  <true/>
</dict>
</plist>
`;

/** The codesign invocation: ad-hoc identity ("-"), forced re-sign, entitlements. */
export function codesignArgs(helper: string, entitlementsFile: string): string[] {
  return ["--sign", "-", "--force", "--entitlements", entitlementsFile, helper];
}

export interface SetupMacosDeps {
  platform: NodeJS.Platform;
  helper: string;
  /** Runs a command; defaults to execFileSync. */
  run?: (cmd: string, args: string[]) => void;
  log?: (line: string) => void;
}

/** Returns the process exit code. */
export function setupMacos(deps: SetupMacosDeps): number {
  const log = deps.log ?? ((l) => process.stderr.write(l + "\n"));
  if (deps.platform !== "darwin") {
    log(
      `setup-macos only applies to macOS, where the sandbox-host helper needs the com.apple.security.hypervisor ` +
        `entitlement to use Hypervisor.framework. This is ${deps.platform}: nothing to sign here.`,
    );
    return 2;
  }
  const run = deps.run ?? ((cmd, args) => void execFileSync(cmd, args, { stdio: "inherit" }));
  const dir = mkdtempSync(join(tmpdir(), "sandbox-entitlements-"));
  try {
    const file = join(dir, "hypervisor.entitlements");
    writeFileSync(file, HYPERVISOR_ENTITLEMENTS);
    run("codesign", codesignArgs(deps.helper, file));
    log(`signed ${deps.helper} (ad-hoc) with the hypervisor entitlement`);
    return 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface SigningCheckDeps {
  platform: NodeJS.Platform;
  helper: string;
  /** Prints the helper's entitlements (`codesign -d --entitlements - --xml helper`); throws if unsigned. */
  readEntitlements?: (helper: string) => string;
}

/**
 * On macOS, the reason the helper cannot use Hypervisor.framework (unsigned, or
 * signed without the entitlement) with the command that fixes it; undefined
 * when it can (and on every other platform).
 */
export function helperSigningProblem(deps: SigningCheckDeps): string | undefined {
  if (deps.platform !== "darwin") return undefined;
  const read =
    deps.readEntitlements ??
    ((helper: string) => execFileSync("codesign", ["-d", "--entitlements", "-", "--xml", helper], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }));
  let entitlements: string;
  try {
    entitlements = read(deps.helper);
  } catch {
    entitlements = "";
  }
  if (entitlements.includes("com.apple.security.hypervisor")) return undefined;
  return (
    `the sandbox-host helper (${deps.helper}) is not signed with the com.apple.security.hypervisor entitlement, ` +
    `so macOS refuses it Hypervisor.framework; run \`npx @torkbot/sandbox setup-macos\` once (ad-hoc, no Apple account needed)`
  );
}
