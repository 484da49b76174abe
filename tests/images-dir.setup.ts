/**
 * vitest setupFile: every test file gets its own, empty image store, so no
 * test sees images another file (or the user) imported; removed afterwards.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";

const dir = mkdtempSync(join(tmpdir(), "sandbox-test-images-"));
process.env.SANDBOX_IMAGES_DIR = dir;
afterAll(() => rmSync(dir, { recursive: true, force: true }));
