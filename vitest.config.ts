import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  // Examples import the package by name, as users do; in the repository that is src/.
  resolve: { alias: { "@torkbot/sandbox": fileURLToPath(new URL("./src/index.ts", import.meta.url)) } },
  test: {
    include: ["tests/**/*.test.ts"],
    // e2e files boot real VMs under software emulation on a 2-core machine:
    // running them one file at a time keeps timings honest and avoids starving guests.
    fileParallelism: false,
    pool: "forks",
    testTimeout: 180_000,
    hookTimeout: 180_000,
    reporters: ["default"],
    // Each test file gets its own empty SANDBOX_IMAGES_DIR (never the user's).
    setupFiles: ["tests/images-dir.setup.ts"],
  },
});
