/** Root filesystem descriptions. A description is inert: nothing boots or reads until `boot()`. */
import { SandboxConfigError } from "./errors.js";

export interface BuiltInRootfs {
  readonly kind: "builtIn";
  /** Catalog name, e.g. `debian:12` or `busybox`. */
  readonly name: string;
}

export type RootfsSpec = BuiltInRootfs;

export const rootfs = {
  /** A read-only image from the installed catalog (see `listBuiltInImages()`). */
  builtIn(name: string): BuiltInRootfs {
    if (typeof name !== "string" || name.trim() === "") {
      throw new SandboxConfigError('rootfs.builtIn(name) needs an image name such as "debian:12"');
    }
    return Object.freeze({ kind: "builtIn" as const, name });
  },
};

export function isRootfsSpec(value: unknown): value is RootfsSpec {
  return typeof value === "object" && value !== null && (value as { kind?: unknown }).kind === "builtIn";
}
