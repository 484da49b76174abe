/** Loads the napi addon that spawns and supervises helper processes (and lists host directories). */
import { createRequire } from "node:module";
import type { Artifacts } from "./artifacts.js";
import { SandboxArtifactError } from "./errors.js";
import type { NativeAddon } from "./native-addon.js";

let addon: NativeAddon | undefined;

export function loadNative(a: Artifacts): NativeAddon {
  if (addon) return addon;
  const require = createRequire(import.meta.url);
  try {
    addon = require(a.addon) as NativeAddon;
  } catch (err) {
    throw new SandboxArtifactError(`cannot load the native addon ${a.addon}: ${(err as Error).message}`);
  }
  return addon;
}

/** The addon if a lane already loaded it: optional fast paths use it, never load it. */
export function loadedNative(): NativeAddon | undefined {
  return addon;
}
