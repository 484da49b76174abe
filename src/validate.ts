/** Input checks shared by the public API; each failure says how to fix it. */
import { SandboxConfigError } from "./errors.js";

export function checkInteger(what: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new SandboxConfigError(`${what} must be an integer from ${min} to ${max}, got ${String(value)}`);
  }
  return value;
}

export function checkAbsolutePath(what: string, value: unknown): string {
  if (typeof value !== "string" || !value.startsWith("/") || value.includes("\0")) {
    throw new SandboxConfigError(`${what} must be an absolute guest path like "/workspace", got ${JSON.stringify(value)}`);
  }
  return value;
}

const HOSTNAME = /^(?=.{1,64}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;

export function checkHostname(value: unknown): string {
  if (typeof value !== "string" || !HOSTNAME.test(value)) {
    throw new SandboxConfigError(
      `hostname must be 1-64 characters of letters, digits, '-' and '.', not starting or ending with '-', got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

export function checkEnv(what: string, env: unknown): Record<string, string> {
  if (env === undefined) return {};
  if (typeof env !== "object" || env === null || Array.isArray(env)) {
    throw new SandboxConfigError(`${what} must be an object of string values`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (k === "" || k.includes("=") || k.includes("\0")) {
      throw new SandboxConfigError(`${what}: variable name ${JSON.stringify(k)} is empty or contains '=' or NUL`);
    }
    if (typeof v !== "string" || v.includes("\0")) {
      throw new SandboxConfigError(`${what}.${k} must be a string without NUL bytes`);
    }
    out[k] = v;
  }
  return out;
}

export function checkArgv(cmd: unknown, args: unknown): string[] {
  if (typeof cmd !== "string" || cmd === "" || cmd.includes("\0")) {
    throw new SandboxConfigError(`the command must be a non-empty string, got ${JSON.stringify(cmd)}`);
  }
  if (!Array.isArray(args) || args.some((a) => typeof a !== "string" || a.includes("\0"))) {
    throw new SandboxConfigError("args must be an array of strings without NUL bytes");
  }
  return [cmd, ...(args as string[])];
}
