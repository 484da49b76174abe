import { describe, expect, it } from "vitest";
import { defineSandbox, rootfs, SandboxConfigError } from "../../src/index.js";
import { checkArgv, checkEnv, checkHostname } from "../../src/validate.js";

describe("input validation", () => {
  it("rejects bad resources with a message naming the field and the range", () => {
    expect(() => defineSandbox({ resources: { cpus: 0 } })).toThrow(/resources.cpus must be an integer from 1 to 64, got 0/);
    expect(() => defineSandbox({ resources: { memoryMiB: 1.5 } })).toThrow(SandboxConfigError);
    expect(() => defineSandbox({ resources: { backend: "firecracker" as never } })).toThrow(/"auto", "qemu" or "krun"/);
    expect(() => defineSandbox({ rootfs: { kind: "docker" } as never })).toThrow(/rootfs.builtIn/);
  });

  it("accepts a plain definition and applies documented defaults", () => {
    const sb = defineSandbox({ rootfs: rootfs.builtIn("busybox") });
    expect(sb.definition.resources).toEqual({ cpus: 1, memoryMiB: 512, backend: "auto", maxProcesses: 1024, workloadMemoryMiB: 448 });
  });

  it("checks hostnames, env and argv", () => {
    expect(checkHostname("agent-42")).toBe("agent-42");
    expect(() => checkHostname("-bad")).toThrow(SandboxConfigError);
    expect(() => checkHostname("a".repeat(65))).toThrow(SandboxConfigError);
    expect(() => checkEnv("env", { "A=B": "x" })).toThrow(/contains '='/);
    expect(() => checkEnv("env", { A: 1 as never })).toThrow(/env.A must be a string/);
    expect(() => checkArgv("", [])).toThrow(/non-empty/);
    expect(() => checkArgv("ls", ["a\0b"])).toThrow(/NUL/);
    expect(checkArgv("ls", ["-l"])).toEqual(["ls", "-l"]);
  });

  it("refuses an interception CA that is not exactly one public certificate, before booting", async () => {
    const sb = defineSandbox({ rootfs: rootfs.builtIn("busybox") });
    const key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    const cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    await expect(sb.boot({ interceptCa: { certPem: key } })).rejects.toThrow(/public part only; no private key/);
    await expect(sb.boot({ interceptCa: { certPem: cert + key } })).rejects.toThrow(SandboxConfigError);
    await expect(sb.boot({ interceptCa: { certPem: cert + cert } })).rejects.toThrow(SandboxConfigError);
  });

  it("refuses an idle timeout under 1 s or not an integer, before booting", async () => {
    const sb = defineSandbox({ rootfs: rootfs.builtIn("busybox") });
    await expect(sb.boot({ idleTimeoutMs: 10 })).rejects.toThrow(/idleTimeoutMs/);
    await expect(sb.boot({ idleTimeoutMs: 1500.5 })).rejects.toThrow(SandboxConfigError);
  });

  it("rejects an empty built-in image name", () => {
    expect(() => rootfs.builtIn("")).toThrow(SandboxConfigError);
  });
});

describe("rootfs.ephemeral options", () => {
  it("rounds maxDirtyBytes down to whole blocks and defaults to 64 MiB", () => {
    const base = rootfs.builtIn("busybox");
    expect(rootfs.ephemeral({ base }).maxDirtyBytes).toBe(64 * 1024 * 1024);
    expect(rootfs.ephemeral({ base, maxDirtyBytes: 100_000 }).maxDirtyBytes).toBe(65_536);
    expect(() => rootfs.ephemeral({ base, maxDirtyBytes: 1000 })).toThrow(/at least 65536 bytes/);
    expect(() => rootfs.ephemeral({ base: undefined as never })).toThrow(SandboxConfigError);
    expect(defineSandbox({ rootfs: rootfs.ephemeral({ base }) }).definition.rootfs.kind).toBe("ephemeral");
  });
});
