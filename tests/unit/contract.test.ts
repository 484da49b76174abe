/**
 * The wire contract: the TypeScript side must be exactly what the Rust types
 * generate (crates/sandbox-contract writes wire-contract.json, which
 * scripts/gen-contract.mjs turns into wire.ts and validators.ts), and the
 * validators must accept what Rust writes and refuse what Rust refuses.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { generate } from "../../scripts/contract/generate.mjs";
import { ContractViolation, decodeFramed, decodeJson, encodeFramed, KINDS, Kind, MESSAGE_NAMES } from "../../src/protocol/contract.js";
import * as validators from "../../src/protocol/generated/validators.js";

const dir = new URL("../../src/protocol/generated/", import.meta.url);
const contract = JSON.parse(readFileSync(new URL("wire-contract.json", dir), "utf8"));

describe("wire contract", () => {
  it("the committed TypeScript is what the committed contract generates (run npm run contract when this fails)", async () => {
    const files = await generate(contract);
    for (const [name, text] of Object.entries(files)) {
      expect(readFileSync(new URL(name, dir), "utf8"), `${name} is stale: run npm run contract`).toBe(text);
    }
  });

  it("the kind table is the contract's, with no kind on one side only", () => {
    expect(KINDS.map((k) => [k.name, k.value, k.direction, k.channel, k.payload, k.message])).toEqual(
      contract.kinds.map((k: Record<string, unknown>) => [k.name, k.value, k.direction, k.channel, k.payload, k.message]),
    );
    for (const k of KINDS) expect(Kind[k.name]).toBe(k.value);
    expect(Object.keys(Kind)).toHaveLength(KINDS.length);
  });

  it("every example Rust serialised passes its validator", () => {
    const examples = contract.examples as Record<string, unknown>;
    expect(Object.keys(examples).sort()).toEqual(MESSAGE_NAMES.filter((n) => n !== "Category").sort());
    for (const [name, value] of Object.entries(examples)) {
      const validate = (validators as Record<string, (v: unknown) => boolean>)[name]!;
      expect(validate(value), `${name}: ${JSON.stringify((validate as { errors?: unknown }).errors)}`).toBe(true);
    }
  });

  it("refuses what Rust refuses: wrong types, out-of-range numbers, unknown enum values and fields", () => {
    const exit = (body: unknown) => () => decodeJson("Exit", Buffer.from(JSON.stringify(body)), 3);
    expect(exit({ exitCode: 3, signal: null, timedOut: false })()).toEqual({ exitCode: 3, signal: null, timedOut: false });
    for (const bad of [
      null,
      [],
      "x",
      { exitCode: -1, timedOut: false },
      { exitCode: 256, timedOut: false },
      { exitCode: 1.5, timedOut: false },
      { exitCode: "3", timedOut: false },
      { exitCode: 3, signal: 65, timedOut: false },
      { exitCode: 3 },
      { exitCode: 3, timedOut: false, extra: true },
    ]) {
      expect(exit(bad), JSON.stringify(bad)).toThrow(ContractViolation);
    }
    expect(() => decodeJson("Exit", Buffer.from("{not json"), 1)).toThrow(/Exit frame \(0x17\) on channel 1: the payload is not JSON/);
    expect(() => decodeJson("HelperError", Buffer.from('{"cause":"new-cause","message":"x"}'))).toThrow(ContractViolation);
    expect(() => decodeJson("StdinAck", Buffer.from('{"bytes":4294967296}'))).toThrow(ContractViolation);
    expect(() => decodeJson("Hello", Buffer.from('{"protocol":2,"uptimeMs":9007199254740992,"initStartedMs":0,"modulesLoadedMs":0}'))).toThrow(
      ContractViolation,
    );
  });

  it("tagged requests dispatch on their tag and framed payloads check their header length", () => {
    const req = { mount: 0, uid: 0, gid: 0, pid: 7, call: { op: "read", node: 5, fh: 1, offset: 0, size: 4096 } } as const;
    const frame = encodeFramed("FsRequest", 9, req, [Buffer.from("data")]);
    const { header, bytes } = decodeFramed("FsRequest", frame.subarray(9), 9);
    expect(header).toEqual(req);
    expect(bytes.toString()).toBe("data");
    const bad = (call: unknown) => () => decodeFramed("FsRequest", encodeFramed("FsRequest", 1, { ...req, call } as never).subarray(9));
    expect(bad({ op: "read", node: 5 })).toThrow(/not a valid FsRequest/);
    expect(bad({ op: "format-disk" })).toThrow(ContractViolation);
    expect(bad({ op: "lookup", parent: 1, name: "x".repeat(256) })).toThrow(ContractViolation);
    expect(() => decodeFramed("BlockRequest", Buffer.from([0, 0, 0, 9, 0x7b]))).toThrow(/header length 9 exceeds the payload/);
  });
});
