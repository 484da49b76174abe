#!/usr/bin/env node
/**
 * Generates the TypeScript side of the wire contract from
 * src/protocol/generated/wire-contract.json (written by crates/sandbox-contract
 * from the Rust types): message types (json-schema-to-typescript), validators
 * compiled ahead of time (Ajv standalone), the frame-kind table, constants and
 * the protected-address table.
 *
 *   node scripts/gen-contract.mjs            write src/protocol/generated/{wire,validators}.ts
 *   node scripts/gen-contract.mjs --check    exit 1 if they are stale
 *
 * `npm run contract` runs the Rust generator first, then this.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { generate } from "./contract/generate.mjs";

const dir = fileURLToPath(new URL("../src/protocol/generated/", import.meta.url));
const contract = JSON.parse(readFileSync(`${dir}wire-contract.json`, "utf8"));
const files = await generate(contract);
const check = process.argv.includes("--check");
let stale = 0;
for (const [name, text] of Object.entries(files)) {
  const path = `${dir}${name}`;
  let old = "";
  try {
    old = readFileSync(path, "utf8");
  } catch {}
  if (old === text) continue;
  if (check) {
    console.error(`${path} is stale; run npm run contract`);
    stale++;
  } else {
    writeFileSync(path, text);
    console.log(`wrote ${path}`);
  }
}
process.exit(stale ? 1 : 0);
