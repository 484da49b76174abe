/** Whether a host pid is alive (zombies count as gone: they hold no resources but a slot). */
export { alive } from "./helpers-alive.mjs";

export async function waitUntil(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}

/** Starts a Node fixture script and resolves with the first line it prints (it keeps running). */
export async function startFixture(
  name: string,
  args: string[] = [],
): Promise<{ child: import("node:child_process").ChildProcess; line: string }> {
  const { spawn } = await import("node:child_process");
  const { fileURLToPath } = await import("node:url");
  const script = fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
  const child = spawn(process.execPath, [script, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  const line = await new Promise<string>((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (d: Buffer) => {
      buf += d.toString();
      if (buf.includes("\n")) resolve(buf.split("\n")[0]!);
    });
    child.on("exit", (code) => reject(new Error(`fixture ${name} exited early with ${code}`)));
  });
  return { child, line };
}

/** Runs a Node fixture script to completion without blocking the test worker; resolves with its exit code and output. */
export async function runFixture(name: string, nodeArgs: string[] = [], timeoutMs = 600_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { execFile } = await import("node:child_process");
  const { fileURLToPath } = await import("node:url");
  const script = fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
  return new Promise((resolve) => {
    execFile(process.execPath, [...nodeArgs, script], { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number | null) ?? null : 0;
      resolve({ code: typeof code === "number" ? code : null, stdout, stderr });
    });
  });
}
