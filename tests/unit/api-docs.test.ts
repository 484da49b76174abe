/**
 * The published API explains itself: every export of the package has TSDoc,
 * and the built typings type-check under `strict` without `skipLibCheck`,
 * from this checkout's dist/ as a consumer would see them.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("../../", import.meta.url));

/** Exports of `entry` without a doc comment, as "name (file)". */
function undocumented(entry: string): string[] {
  const program = ts.createProgram([entry], { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, strict: true });
  const checker = program.getTypeChecker();
  const file = program.getSourceFile(entry)!;
  const missing: string[] = [];
  const seen = new Set<string>();
  for (const sym of checker.getExportsOfModule(checker.getSymbolAtLocation(file)!)) {
    const target = sym.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(sym) : sym;
    const where = (s: ts.Symbol) => s.declarations?.[0]?.getSourceFile().fileName.replace(root, "") ?? "?";
    const documented = (s: ts.Symbol) => ts.displayPartsToString(s.getDocumentationComment(checker)).trim() !== "";
    if (!documented(target)) missing.push(`${sym.name} (${where(target)})`);
    // The public members of exported classes: methods and properties a user calls.
    if (target.flags & ts.SymbolFlags.Class) {
      for (const member of checker.getPropertiesOfType(checker.getDeclaredTypeOfSymbol(target))) {
        const decl = member.valueDeclaration ?? member.declarations?.[0];
        if (!decl || !decl.getSourceFile().fileName.startsWith(join(root, "src"))) continue; // inherited from Error & co.
        const hidden = ts.getCombinedModifierFlags(decl as ts.Declaration) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected);
        if (hidden || member.name.startsWith("#") || member.name.startsWith("__")) continue;
        const key = `${decl.getSourceFile().fileName}:${decl.pos}`;
        if (seen.has(key)) continue; // reported once, where it is declared
        seen.add(key);
        if (!documented(member)) missing.push(`${(decl.parent as ts.ClassDeclaration).name?.text ?? sym.name}.${member.name} (${where(member)})`);
      }
    }
  }
  return missing;
}

describe("the published API", () => {
  it("documents every export with TSDoc", () => {
    expect(undocumented(join(root, "src/index.ts"))).toEqual([]);
  });

  it("type-checks from the built typings under strict, without skipLibCheck", () => {
    const dts = join(root, "dist/src/index.d.ts");
    expect(existsSync(dts), "dist/ is built by npm run setup").toBe(true);
    const dir = mkdtempSync(join(tmpdir(), "typings-"));
    try {
      const consumer = join(dir, "consumer.ts");
      writeFileSync(
        consumer,
        `import { defineSandbox, rootfs, fs, network, type Lane, type LaneEvent } from ${JSON.stringify(join(root, "dist/src/index.js"))};
export async function use(): Promise<number> {
  const sandbox = defineSandbox({ rootfs: rootfs.builtIn("debian:12"), network: network.policy(() => {}) });
  const lane: Lane = await sandbox.boot({ mounts: { "/workspace": fs.virtual(fs.memory()) }, onEvent: (e: LaneEvent) => void e });
  const r = await lane.exec("true");
  await lane.close();
  return r.exitCode;
}
`,
      );
      const program = ts.createProgram([consumer], {
        strict: true,
        skipLibCheck: false,
        noEmit: true,
        module: ts.ModuleKind.NodeNext,
        moduleResolution: ts.ModuleResolutionKind.NodeNext,
        target: ts.ScriptTarget.ES2022,
        lib: ["lib.es2022.d.ts", "lib.esnext.disposable.d.ts", "lib.dom.d.ts"],
        types: ["node"],
        typeRoots: [join(root, "node_modules/@types")],
      });
      const diagnostics = ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n") + ` (${d.file?.fileName.replace(root, "") ?? ""})`);
      expect(diagnostics).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
