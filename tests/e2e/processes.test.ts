import { createHash, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineSandbox, LaneClosedError, ProcessStartError, rootfs, type Lane, type SandboxPty } from "../../src/index.js";

async function readAll(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  const dec = new TextDecoder();
  for await (const chunk of stream) text += dec.decode(chunk, { stream: true });
  return text + dec.decode();
}

/** Collects pty output and lets a test wait for a pattern. */
function screen(term: SandboxPty) {
  let text = "";
  const waiters: Array<() => void> = [];
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of term.output) {
      text += dec.decode(chunk, { stream: true });
      waiters.splice(0).forEach((w) => w());
    }
  })();
  const writer = term.input.getWriter();
  return {
    get text() {
      return text;
    },
    type: (s: string) => writer.write(new TextEncoder().encode(s)),
    async waitFor(re: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const m = text.match(re);
        if (m) return m;
        if (Date.now() > end) throw new Error(`timed out waiting for ${re}; screen so far:\n${text}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
    },
  };
}

describe("streaming processes and terminals (debian:12)", () => {
  let lane: Lane;
  beforeAll(async () => {
    lane = await defineSandbox({ rootfs: rootfs.builtIn("debian:12"), resources: { cpus: 2, memoryMiB: 768 } }).boot();
  });
  afterAll(async () => {
    await lane?.close();
  });

  it("pipes 50 MB of random bytes through cat byte-exact", async () => {
    const data = randomBytes(50 * 1024 * 1024);
    const want = createHash("sha256").update(data).digest("hex");
    const cat = lane.spawn("cat");
    await cat.ready;
    const hash = createHash("sha256");
    let received = 0;
    const reading = (async () => {
      for await (const chunk of cat.stdout) {
        hash.update(chunk);
        received += chunk.length;
      }
    })();
    const writer = cat.stdin.getWriter();
    for (let off = 0; off < data.length; off += 1 << 20) await writer.write(data.subarray(off, off + (1 << 20)));
    await writer.close();
    await reading;
    expect(await cat.exit).toMatchObject({ exitCode: 0 });
    expect(received).toBe(data.length);
    expect(hash.digest("hex")).toBe(want);
  });

  it("delivers stdin EOF", async () => {
    const wc = lane.spawn("wc", ["-c"]);
    const w = wc.stdin.getWriter();
    await w.write(new Uint8Array(1000).fill(97));
    await w.close();
    expect((await readAll(wc.stdout)).trim()).toBe("1000");
    expect((await wc.exit).exitCode).toBe(0);
  });

  it("keeps host memory flat while a slow reader consumes `yes`", async () => {
    const yes = lane.spawn("yes");
    await yes.ready;
    const reader = yes.stdout.getReader();
    await reader.read();
    global.gc?.();
    const before = process.memoryUsage().rss;
    let bytes = 0;
    let reads = 0;
    const end = Date.now() + 4000;
    while (Date.now() < end) {
      const { value } = await reader.read();
      bytes += value?.length ?? 0;
      reads++;
      await new Promise((r) => setTimeout(r, 100));
    }
    const growth = process.memoryUsage().rss - before;
    // Unthrottled, yes would push hundreds of MiB in 4 s; only what was pulled crossed:
    // at most one guest read chunk (256 KiB) per pull, and never more than the reads asked for.
    expect(bytes).toBeLessThanOrEqual(reads * 256 * 1024);
    expect(bytes).toBeLessThan(16 * 1024 * 1024);
    expect(growth).toBeLessThan(32 * 1024 * 1024);
    yes.kill("SIGKILL");
    await reader.cancel();
    await yes.stderr.cancel();
    expect((await yes.exit).signal).toBe(9);
  });

  it("rejects `ready` with a typed ENOENT for a missing program", async () => {
    const p = lane.spawn("/usr/bin/definitely-not-here");
    const err = await p.ready.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProcessStartError);
    expect(err).toMatchObject({ errno: "ENOENT" });
    await expect(p.exit).rejects.toBeInstanceOf(ProcessStartError);
  });

  it("runs 100 concurrent spawns to completion with the right output", async () => {
    const procs = Array.from({ length: 100 }, (_, i) => lane.spawn("sh", ["-c", `echo out-${i}; echo err-${i} >&2`]));
    const results = await Promise.all(
      procs.map(async (p) => {
        const [out, err, exit] = await Promise.all([readAll(p.stdout), readAll(p.stderr), p.exit]);
        return { out, err, code: exit.exitCode };
      }),
    );
    results.forEach((r, i) => expect(r).toEqual({ out: `out-${i}\n`, err: `err-${i}\n`, code: 0 }));
  });

  it("kill() takes the whole process group", async () => {
    const p = lane.spawn("sh", ["-c", "sleep 100 & sleep 100 & echo $$; wait"]);
    const reader = p.stdout.getReader();
    const { value } = await reader.read();
    const pgid = new TextDecoder().decode(value).trim();
    p.kill("SIGKILL");
    expect((await p.exit).signal).toBe(9);
    await reader.cancel();
    await p.stderr.cancel();
    const check = await lane.exec("sh", ["-c", `ps -eo pgid= | awk '$1 == ${pgid}' | wc -l`]);
    expect(check.stdout.trim()).toBe("0");
  });

  it("gives a pty process a real terminal with the requested size, and resizes it", async () => {
    const term = lane.pty("sh", ["-c", "test -t 0 && test -t 1 && echo is-a-tty; stty size; read _; stty size"], {
      size: { rows: 40, cols: 120 },
    });
    const s = screen(term);
    await s.waitFor(/is-a-tty/);
    await s.waitFor(/40 120/);
    term.resize({ rows: 50, cols: 132 });
    await s.type("\n");
    await s.waitFor(/50 132/);
    expect((await term.exit).exitCode).toBe(0);
  });

  it("^C interrupts the foreground job of an interactive shell and returns to the prompt", async () => {
    const term = lane.pty("sh", ["-i"], { env: { PS1: "PROMPT$ " } });
    const s = screen(term);
    await s.waitFor(/PROMPT\$ /);
    await s.type("sleep 100\n");
    await new Promise((r) => setTimeout(r, 500));
    await s.type("\x03");
    await s.type("echo back-$((40+2))\n");
    await s.waitFor(/back-42/);
    await s.type("exit 3\n");
    expect((await term.exit).exitCode).toBe(3);
  });

  it("delivers SIGWINCH to the foreground process on resize", async () => {
    const term = lane.pty("bash", ["-c", "trap 'echo winch-$(stty size)' WINCH; echo armed; while :; do sleep 0.1; done"]);
    const s = screen(term);
    await s.waitFor(/armed/);
    term.resize({ rows: 33, cols: 99 });
    await s.waitFor(/winch-33 99/);
    term.kill("SIGKILL");
    await term.exit;
  });

  it("rejects running processes when the lane closes", async () => {
    const other = await defineSandbox({ rootfs: rootfs.builtIn("busybox") }).boot();
    const p = other.spawn("sleep", ["100"]);
    await p.ready;
    await other.close();
    await expect(p.exit).rejects.toBeInstanceOf(LaneClosedError);
  });
});
