/**
 * Trees in and out of a guest as tar, on top of `lane.fs` requests: the tar
 * library (`tar`) parses what is uploaded and encodes the headers of what is
 * downloaded; extraction into a host directory is the library's own, with
 * its path checks (no absolute paths, no `..`, no writing through links) and
 * every warning made an error.
 */
import { createReadStream, mkdirSync, type Stats } from "node:fs";
import { lstat, readdir, readFile, readlink } from "node:fs/promises";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { Header, Pax, Parser, extract as tarExtract, type ReadEntry } from "tar";
import { SandboxConfigError, SandboxProtocolError } from "../errors.js";
import type { FileRequest, PutEntry } from "../protocol/generated/wire.js";
import { WIRE } from "../protocol/generated/wire.js";
import { call, CHUNK, type FileLink } from "./requests.js";
import { readRanges } from "./streams.js";

/** Progress of an upload or download: bytes of file data and entries so far. */
export interface TransferProgress {
  /** File data bytes moved so far. */
  bytes: number;
  /** Entries (files, directories, links) moved so far. */
  entries: number;
  /**
   * `download(…, hostDir)` only: entries not extracted as they were, with why — links whose target
   * points outside `hostDir` (an absolute target is re-rooted under it, an escaping relative one skipped).
   */
  refused?: TransferRefusal[];
}

/** Options of `lane.upload` and `lane.download`. */
export interface TransferOptions {
  /** Called after each entry (files, directories, links). */
  onProgress?: (progress: TransferProgress) => void;
}

/** Requests an upload keeps in flight: init serves them in order, so nothing waits on a reply but the window. */
const UPLOAD_WINDOW = 64;

/** `a/./b/` → `a/b`; `undefined` for paths that leave the directory (absolute, `..`). */
function relative(p: string): string | undefined {
  const parts = p.split("/").filter((s) => s !== "" && s !== ".");
  if (p.startsWith("/") || parts.some((s) => s === "..")) return undefined;
  return parts.join("/");
}

/** Uploads a host directory or a tar stream into `guestDir` (created if missing). */
export async function upload(link: FileLink, source: string | ReadableStream<Uint8Array>, guestDir: string, o: TransferOptions = {}): Promise<TransferProgress> {
  if (typeof source !== "string" && !(source instanceof ReadableStream)) badSource(source);
  const base = guestDir.replace(/\/+$/, "") || "/";
  const join = (rel: string) => (rel === "" ? base : base === "/" ? `/${rel}` : `${base}/${rel}`);
  await call(link, "upload", { op: "mkdir", path: base, recursive: true }, "done");

  const inFlight = new Set<Promise<unknown>>();
  let failure: { error: unknown } | undefined;
  const send = (p: Promise<unknown>) => {
    const q: Promise<unknown> = p.then(
      () => inFlight.delete(q),
      (error: unknown) => {
        inFlight.delete(q);
        failure ??= { error };
      },
    );
    inFlight.add(q);
  };
  const dirTimes: { path: string; mode: number; mtimeMs: number }[] = [];
  const progress: TransferProgress = { bytes: 0, entries: 0 };
  let entryError: unknown;
  const batch = new PutBatch((req, data) => send(call(link, "upload", req, "done", data)));

  const parser = new Parser({
    strict: true,
    onReadEntry: (entry: ReadEntry) => {
      const rel = relative(entry.path);
      if (rel === undefined) {
        entryError ??= new SandboxConfigError(`the tar stream has an entry outside the target directory: ${JSON.stringify(entry.path)}`);
        entry.resume();
        return;
      }
      const path = join(rel);
      const mode = (entry.mode ?? 0o644) & 0o7777;
      const mtimeMs = entry.mtime ? Math.max(0, Math.floor(entry.mtime.getTime())) : undefined;
      const times = mtimeMs === undefined ? {} : { mtimeMs };
      switch (entry.type) {
        case "Directory":
          batch.add({ type: "directory", path, mode }, []);
          if (mtimeMs !== undefined) dirTimes.push({ path, mode, mtimeMs });
          entry.resume();
          break;
        case "SymbolicLink":
          batch.add({ type: "symlink", path, target: entry.linkpath ?? "", ...times }, []);
          entry.resume();
          break;
        case "File":
        case "OldFile":
        case "ContiguousFile":
          if ((entry.size ?? 0) <= SMALL_FILE) {
            // Whole in one Put with its neighbours: created, written, mode and mtime set in one go.
            const parts: Buffer[] = [];
            entry.on("data", (c: Buffer) => parts.push(c));
            entry.on("end", () => {
              const size = parts.reduce((n, c) => n + c.length, 0);
              progress.bytes += size;
              batch.add({ type: "file", path, mode, size, ...times }, parts);
            });
          } else {
            batch.flush();
            const w = largeFile(path, mode, mtimeMs);
            entry.on("data", w.data);
            entry.on("end", w.end);
          }
          break;
        default:
          entryError ??= new SandboxConfigError(`the tar stream has a ${entry.type} entry (${JSON.stringify(entry.path)}); upload takes files, directories and symbolic links`);
          entry.resume();
      }
      progress.entries++;
      o.onProgress?.({ ...progress });
    },
  });
  /** A file too big for a Put: a sequence of range writes, mtime with the last. Fed with `data`, then `end`. */
  const largeFile = (path: string, mode: number, mtimeMs: number | undefined) => {
    let offset = 0;
    let parts: Buffer[] = [];
    let size = 0;
    let sentAny = false;
    let timed = false;
    const flush = (last: boolean) => {
      while (size >= CHUNK || (last && (size > 0 || !sentAny))) {
        const joined = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
        const piece = joined.subarray(0, CHUNK);
        const first = !sentAny;
        const final = last && joined.length <= CHUNK;
        sentAny = true;
        timed ||= final && mtimeMs !== undefined;
        const req = {
          op: "write" as const,
          path,
          offset,
          create: first,
          truncate: first,
          createParents: false,
          ...(first ? { mode, forceMode: true } : {}),
          ...(final && mtimeMs !== undefined ? { mtimeMs } : {}),
        };
        send(call(link, "upload", req, "done", [piece]));
        offset += piece.length;
        progress.bytes += piece.length;
        const rest = joined.subarray(piece.length);
        parts = rest.length ? [rest] : [];
        size = rest.length;
        if (last && size === 0) break;
      }
    };
    return {
      data: (c: Buffer) => {
        parts.push(c);
        size += c.length;
        flush(false);
      },
      end: () => {
        flush(true);
        // A size that is a multiple of CHUNK ended with a full piece sent before the end was known.
        if (!timed && mtimeMs !== undefined) send(call(link, "upload", { op: "utimes", path, mtimeMs }, "done"));
      },
    };
  };
  const window = async () => {
    while (inFlight.size >= UPLOAD_WINDOW) await Promise.race(inFlight);
  };
  if (typeof source === "string") {
    await walkInto(source, {
      failed: () => failure !== undefined,
      window,
      entry(rel, st, data, linkTarget) {
        const path = join(rel);
        const mode = st.mode & 0o7777;
        const mtimeMs = Math.max(0, Math.floor(st.mtimeMs));
        if (st.isDirectory()) {
          batch.add({ type: "directory", path, mode }, []);
          dirTimes.push({ path, mode, mtimeMs });
        } else if (st.isSymbolicLink()) {
          batch.add({ type: "symlink", path, target: linkTarget ?? "", mtimeMs }, []);
        } else if (data) {
          progress.bytes += data.length;
          batch.add({ type: "file", path, mode, size: data.length, mtimeMs }, [data]);
        } else {
          batch.flush();
          return largeFile(path, mode, mtimeMs);
        }
        return undefined;
      },
      counted() {
        progress.entries++;
        o.onProgress?.({ ...progress });
      },
    });
    return finish();
  }
  const input = source as unknown as AsyncIterable<Uint8Array>;
  let parseError: unknown;
  parser.on("error", (e: unknown) => (parseError ??= e));
  for await (const chunk of input) {
    parser.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    if (parseError || entryError || failure) break;
    while (inFlight.size >= UPLOAD_WINDOW) await Promise.race(inFlight);
  }
  if (!parseError && !entryError && !failure) parser.end();
  if (!parseError && !entryError && !failure) batch.flush();
  await Promise.all(inFlight);
  if (parseError) throw new SandboxConfigError(`the upload is not a valid tar stream: ${String((parseError as Error).message ?? parseError)}`);
  if (entryError) throw entryError;
  if (failure) throw failure.error;
  return finish();

  async function finish(): Promise<TransferProgress> {
    batch.flush();
    await Promise.all(inFlight);
    if (failure) throw failure.error;
    // Directory times last, deepest first: creating entries changed them.
    for (const d of dirTimes.reverse()) batch.add({ type: "directory", ...d }, []);
    batch.flush();
    await Promise.all(inFlight);
    if (failure) throw (failure as { error: unknown }).error;
    return progress;
  }
}

interface WalkSink {
  failed(): boolean;
  window(): Promise<void>;
  /** One entry; a file's bytes when small (else a writer to feed), a link's target. */
  entry(rel: string, st: Stats, data: Buffer | undefined, linkTarget: string | undefined): { data(c: Buffer): void; end(): void } | undefined;
  counted(): void;
}

/**
 * A host directory walked directly (lstat, readdir, readFile, readlink — links
 * never followed), parents before children, the root itself as "" (as tar's
 * "./"). Packing it as tar first and parsing that again cost more than the
 * whole guest side of a 10,000-file upload.
 */
async function walkInto(root: string, sink: WalkSink): Promise<void> {
  const visit = async (rel: string): Promise<void> => {
    if (sink.failed()) return;
    const abs = rel === "" ? root : `${root}/${rel}`;
    const st = await lstat(abs);
    if (st.isDirectory()) {
      sink.entry(rel, st, undefined, undefined);
      sink.counted();
      await sink.window();
      const names = (await readdir(abs)).sort();
      for (const name of names) await visit(rel === "" ? name : `${rel}/${name}`);
    } else if (st.isSymbolicLink()) {
      sink.entry(rel, st, undefined, await readlink(abs));
      sink.counted();
    } else if (st.isFile()) {
      const small = st.size <= SMALL_FILE ? await readFile(abs) : undefined;
      if (small && small.length <= SMALL_FILE) {
        sink.entry(rel, st, small, undefined);
      } else if (small) {
        // Grew since the lstat: written as a large file.
        const w = sink.entry(rel, st, undefined, undefined)!;
        w.data(small);
        w.end();
      } else {
        const w = sink.entry(rel, st, undefined, undefined)!;
        for await (const c of createReadStream(abs, { highWaterMark: CHUNK })) {
          w.data(c as Buffer);
          await sink.window();
          if (sink.failed()) return;
        }
        w.end();
      }
      sink.counted();
      await sink.window();
    } else {
      throw new SandboxConfigError(`${JSON.stringify(abs)} is a ${kindOf(st)}; upload takes files, directories and symbolic links`);
    }
  };
  await visit("");
}

function kindOf(st: Stats): string {
  return st.isFIFO() ? "fifo" : st.isSocket() ? "socket" : st.isBlockDevice() ? "block device" : st.isCharacterDevice() ? "character device" : "special file";
}

/** Files up to this size travel inside a Put with their neighbours. */
const SMALL_FILE = 64 * 1024;
/** JSON header bytes one Put may hold (the frame also carries up to CHUNK of data). */
const PUT_HEADER_BYTES = 256 * 1024;

/**
 * Entries of an upload gathered into Put requests: one request per up to
 * `maxPutEntries` entries and CHUNK bytes of data, instead of one per entry —
 * under TCG each request's round through helper and init costs more than
 * making a small file.
 */
class PutBatch {
  #entries: PutEntry[] = [];
  #data: Buffer[] = [];
  #bytes = 0;
  #headerBytes = 0;
  readonly #send: (req: Extract<FileRequest, { op: "put" }>, data: Buffer[]) => void;

  constructor(send: (req: Extract<FileRequest, { op: "put" }>, data: Buffer[]) => void) {
    this.#send = send;
  }

  add(entry: PutEntry, data: Buffer[]): void {
    const size = entry.type === "file" ? entry.size : 0;
    // Paths are at most 4096 bytes each: a generous estimate of the entry's JSON.
    const header = Buffer.byteLength(entry.path) + (entry.type === "symlink" ? Buffer.byteLength(entry.target) : 0) + 96;
    if (this.#entries.length >= WIRE.maxPutEntries || this.#bytes + size > CHUNK || this.#headerBytes + header > PUT_HEADER_BYTES) this.flush();
    this.#entries.push(entry);
    this.#data.push(...data);
    this.#bytes += size;
    this.#headerBytes += header;
  }

  flush(): void {
    if (this.#entries.length === 0) return;
    this.#send({ op: "put", entries: this.#entries }, this.#data);
    this.#entries = [];
    this.#data = [];
    this.#bytes = 0;
    this.#headerBytes = 0;
  }
}

function badSource(s: unknown): never {
  throw new SandboxConfigError(`upload source must be a host directory path or a ReadableStream of tar bytes, got ${s === null ? "null" : typeof s}`);
}

/** The tar bytes of a guest file or tree: headers from `lstat`, data from range reads, links as links. */
export async function* tarOf(link: FileLink, guestPath: string, progress: TransferProgress, onProgress?: (p: TransferProgress) => void): AsyncGenerator<Buffer> {
  const root = guestPath.replace(/\/+$/, "") || "/";
  const top = await call(link, "download", { op: "stat", path: root, follow: false }, "stat");
  const name = root === "/" ? "" : root.slice(root.lastIndexOf("/") + 1);
  const header = (path: string, st: (typeof top)["reply"]["stat"], type: "File" | "Directory" | "SymbolicLink", linkpath?: string) => {
    const data = { path, mode: st.mode, size: type === "File" ? st.size : 0, mtime: new Date(st.mtimeMs), type, linkpath, uid: 0, gid: 0 };
    const h = new Header(data);
    const out: Buffer[] = [];
    if (h.encode()) out.push(new Pax(data).encode());
    out.push(h.block!);
    progress.entries++;
    onProgress?.({ ...progress });
    return Buffer.concat(out);
  };
  async function* entry(path: string, rel: string, st: (typeof top)["reply"]["stat"]): AsyncGenerator<Buffer> {
    if (st.type === "directory") {
      if (rel !== "") yield header(`${rel}/`, st, "Directory");
      const seen = new Set<string>();
      let skip = 0;
      for (;;) {
        const { reply } = await call(link, "download", { op: "readdir", path, skip }, "dir");
        for (const e of reply.entries) {
          if (seen.has(e.name)) throw guestOffence(link, `the guest listed ${JSON.stringify(e.name)} twice in ${JSON.stringify(path)}; the lane was ended`);
          seen.add(e.name);
          const child = path === "/" ? `/${e.name}` : `${path}/${e.name}`;
          const cst = await call(link, "download", { op: "stat", path: child, follow: false }, "stat").then((r) => r.reply.stat, () => undefined);
          if (cst) yield* entry(child, rel === "" ? e.name : `${rel}/${e.name}`, cst);
        }
        skip += reply.entries.length;
        if (!reply.more || reply.entries.length === 0) break;
      }
    } else if (st.type === "symlink") {
      const { reply } = await call(link, "download", { op: "readlink", path }, "link");
      yield header(rel, st, "SymbolicLink", reply.target);
    } else if (st.type === "file") {
      yield header(rel, st, "File");
      let n = 0;
      for await (const chunk of readRanges(link, "download", path, 0, st.size)) {
        n += chunk.length;
        progress.bytes += chunk.length;
        yield chunk;
      }
      // The header promised st.size bytes: a file that shrank meanwhile is padded with zeros.
      if (n < st.size) yield Buffer.alloc(st.size - n);
      if (st.size % 512) yield Buffer.alloc(512 - (st.size % 512));
    }
    // Devices, fifos and sockets have no content to carry: skipped.
  }
  yield* entry(root, top.reply.stat.type === "directory" ? "" : name, top.reply.stat);
  yield Buffer.alloc(1024);
}

/** `tarOf` as a web stream, pulled as it is read. */
export function tarStream(gen: AsyncGenerator<Buffer>): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        try {
          const { value, done } = await gen.next();
          if (done) c.close();
          else c.enqueue(value);
        } catch (err) {
          c.error(err);
        }
      },
      async cancel() {
        await gen.return(undefined);
      },
    },
    new CountQueuingStrategy({ highWaterMark: 0 }),
  );
}

/**
 * Extracts guest tar bytes into `hostDir` with the tar library's safe defaults:
 * entries stay inside `hostDir` (absolute and `..` paths refused), nothing is
 * written through a link, and no link pointing outside `hostDir` is made — the
 * library re-roots an absolute target under `hostDir` and skips a link whose
 * relative target escapes it. Each such entry is returned, never silently lost.
 */
export async function extractInto(gen: AsyncGenerator<Buffer>, hostDir: string): Promise<TransferRefusal[]> {
  mkdirSync(hostDir, { recursive: true });
  const refused: TransferRefusal[] = [];
  const unpack = tarExtract({
    cwd: hostDir,
    strict: false,
    preservePaths: false,
    preserveOwner: false,
    onwarn: (code: string, message: string, data: unknown) => {
      const d = data as { entry?: { path?: string }; path?: string } | undefined;
      if (refused.length < 10_000) refused.push({ path: String(d?.entry?.path ?? d?.path ?? ""), reason: `${code}: ${message}` });
    },
  }) as unknown as Writable;
  await pipeline(Readable.from(gen), unpack);
  return refused;
}

/** An entry `download(…, hostDir)` did not extract as it was in the guest, and why. */
export interface TransferRefusal {
  /** The entry's path in the tar (relative to `hostDir`). */
  path: string;
  /** The tar library's code and words, e.g. `TAR_ENTRY_ERROR: linkpath escapes extraction directory`. */
  reason: string;
}

function guestOffence(link: FileLink | undefined, message: string): SandboxProtocolError {
  const conn = link?.();
  const err = new SandboxProtocolError(message, { offender: "guest", frameKind: "FileReply", diagnostics: conn?.diagnostics });
  conn?.fail(err);
  return err;
}
