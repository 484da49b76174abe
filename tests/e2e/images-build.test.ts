/** `rootfs.build` and `sandbox build -f`: images from setup steps, on real VMs. */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineSandbox, ImageBuildError, listImages, rootfs } from "../../src/index.js";

const cli = fileURLToPath(new URL("../../bin/sandbox.js", import.meta.url));
let work: string;
let src: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "sandbox-build-"));
  src = join(work, "src");
  mkdirSync(join(src, "sub"), { recursive: true });
  writeFileSync(join(src, "app.sh"), "#!/bin/sh\necho app says $GREETING\n", { mode: 0o755 });
  writeFileSync(join(src, "sub", "data.txt"), "data\n");
  symlinkSync("sub/data.txt", join(src, "link"));
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

const steps = () => [
  { run: "echo one > /etc/one && mkdir -p /opt/tool" },
  { run: "echo two > /opt/tool/two; cp /etc/one /opt/tool/one-copy" },
  { copy: src, to: "/app" },
];

describe("rootfs.build", () => {
  it("runs two run steps and a copy, boots with the results, and a second build is a cache hit (< 10 % of the time)", async () => {
    const output: string[] = [];
    const t0 = performance.now();
    const built = await rootfs.build({
      base: rootfs.builtIn("busybox"),
      steps: steps(),
      env: { GREETING: "hello" },
      workdir: "/app",
      name: "built/tool:1",
      onOutput: (c) => output.push(Buffer.from(c).toString()),
    });
    const first = performance.now() - t0;
    expect(built.cached).toBe(false);
    expect(built.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(built.name).toBe(`built/tool:1@${built.digest}`);
    expect(listImages().find((i) => i.name === "built/tool:1")).toMatchObject({ digest: built.digest, source: expect.stringMatching(/^build from busybox@sha256:/) });

    await using lane = await defineSandbox({ rootfs: built }).boot();
    const r = await lane.exec("sh", [
      "-c",
      "pwd; cat /etc/one /opt/tool/two /opt/tool/one-copy /app/sub/data.txt; readlink /app/link; ./app.sh; stat -c '%a %u %g' /app/app.sh",
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("/app\none\ntwo\none\ndata\nsub/data.txt\napp says hello\n755 0 0\n");
    // The base is untouched.
    await using base = await defineSandbox({ rootfs: rootfs.builtIn("busybox") }).boot();
    expect((await base.exec("sh", ["-c", "test -e /etc/one || echo clean"])).stdout).toBe("clean\n");

    const t1 = performance.now();
    const again = await rootfs.build({ base: rootfs.builtIn("busybox"), steps: steps(), env: { GREETING: "hello" }, workdir: "/app", name: "built/tool:1" });
    const second = performance.now() - t1;
    expect(again).toMatchObject({ cached: true, digest: built.digest });
    expect(second).toBeLessThan(first * 0.1);
    process.stderr.write(`[images-build] first build ${Math.round(first)} ms, cached ${Math.round(second)} ms\n`);

    // The same steps as a Sandboxfile: same inputs, the same cached image.
    const file = join(work, "Sandboxfile.yaml");
    writeFileSync(
      file,
      [
        "base: busybox",
        "workdir: /app",
        "env: { GREETING: hello }",
        "steps:",
        "  - run: echo one > /etc/one && mkdir -p /opt/tool",
        "  - run: echo two > /opt/tool/two; cp /etc/one /opt/tool/one-copy",
        "  - copy: ./src",
        "    to: /app",
        "",
      ].join("\n"),
    );
    const cliBuild = spawnSync(process.execPath, [cli, "build", "-f", file, "--name", "built/tool:2"], { encoding: "utf8" });
    expect(cliBuild.status).toBe(0);
    expect(cliBuild.stderr).toContain(`cached: ${built.digest}`);
    expect(cliBuild.stdout).toContain(`built/tool:2@${built.digest}`);
  });

  it("a failing step is an ImageBuildError with the step and its output; nothing is added", async () => {
    const before = listImages().length;
    const err = await rootfs
      .build({ base: rootfs.builtIn("busybox"), steps: [{ run: "echo fine" }, { run: "echo broken >&2; exit 7" }] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageBuildError);
    const e = err as ImageBuildError;
    expect(e.step).toBe(1);
    expect(e.exitCode).toBe(7);
    expect(e.output).toContain("broken");
    expect(e.message).toContain("build step 2 (echo broken >&2; exit 7) exited with code 7");
    expect(listImages().length).toBe(before);
  });
});
