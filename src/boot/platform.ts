/** Where a boot runs: the platform's artifacts, the backend and the native addon. */
import { requireBackendArtifacts, resolveArtifacts, type Artifacts } from "../artifacts.js";
import { chooseBackend, type BackendChoice } from "../backend.js";
import { SandboxConfigError } from "../errors.js";
import { loadNative } from "../native.js";
import { helperSigningProblem } from "../setup-macos.js";
import type { SandboxResources } from "../sandbox.js";
import type { NativeAddon } from "../native-addon.js";

export interface Platform {
  artifacts: Artifacts;
  choice: BackendChoice;
  native: NativeAddon;
}

/** Helper path → why macOS would refuse it Hypervisor.framework (checked once per helper). */
const signingChecked = new Map<string, string | undefined>();

export function resolvePlatform(resources: Required<SandboxResources>): Platform {
  const artifacts = resolveArtifacts();
  const choice = chooseBackend(resources.backend, artifacts.helper);
  requireBackendArtifacts(artifacts, choice.backend);
  if (choice.backend === "krun") {
    // macOS: an unsigned helper would die inside Hypervisor.framework with a bare error.
    if (!signingChecked.has(artifacts.helper)) {
      signingChecked.set(artifacts.helper, helperSigningProblem({ platform: process.platform, helper: artifacts.helper }));
    }
    const problem = signingChecked.get(artifacts.helper);
    if (problem) {
      signingChecked.delete(artifacts.helper); // checked again after the user ran setup-macos
      throw new SandboxConfigError(problem);
    }
  }
  return { artifacts, choice, native: loadNative(artifacts) };
}
