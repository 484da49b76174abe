/**
 * One `lane.fs` operation on the wire: send, await, and turn an `error`
 * reply into a SandboxFileSystemError. Every reply is checked again here
 * (the helper checked it too): the result this request expects, data no
 * longer than asked, directory names that are one path component.
 */
import { LaneClosedError, SandboxFileSystemError, SandboxProtocolError } from "../errors.js";
import type { HelperConnection } from "../helper-connection.js";
import type { FileReply, FileRequest } from "../protocol/generated/wire.js";
import { WIRE } from "../protocol/generated/wire.js";
import { SandboxConfigError } from "../errors.js";

/** Largest range one request reads or writes. */
export const CHUNK = WIRE.maxFileChunk;
/** Requests one read or write stream keeps in flight (2 MiB). */
export const IN_FLIGHT = 4;

type Result<R extends FileReply["result"]> = Extract<FileReply, { result: R }>;

/** The connection end a lane's fs calls go through; `undefined` once the lane is closed. */
export type FileLink = () => HelperConnection | undefined;

const EXPECTS: Record<FileRequest["op"], FileReply["result"]> = {
  read: "data",
  write: "done",
  stat: "stat",
  readdir: "dir",
  mkdir: "done",
  rm: "done",
  rename: "done",
  chmod: "done",
  symlink: "done",
  readlink: "link",
  utimes: "done",
  put: "done",
};

/** Sends one request; rejects with SandboxFileSystemError (guest errno) or the lane's end. */
export async function call<R extends FileReply["result"]>(
  link: FileLink,
  syscall: string,
  req: FileRequest,
  expect: R,
  data: readonly Uint8Array[] = [],
): Promise<{ reply: Result<R>; bytes: Buffer }> {
  const conn = link();
  if (!conn) throw new LaneClosedError(`lane.fs.${syscall}() on a closed lane`);
  const { reply, bytes } = await conn.fileRequest(req, data);
  const path = req.op === "put" ? (req.entries[reply.result === "error" ? (reply.entry ?? 0) : 0]?.path ?? "") : "path" in req ? req.path : req.from;
  if (reply.result === "error") {
    const dest = req.op === "rename" ? req.to : req.op === "symlink" ? req.target : undefined;
    throw new SandboxFileSystemError(reply.code, reply.errno, syscall, path, dest);
  }
  const max = req.op === "read" ? req.length : 0;
  const bad =
    reply.result !== EXPECTS[req.op] || reply.result !== expect
      ? `a ${reply.result} answer to ${req.op}`
      : bytes.length > max
        ? `${bytes.length} bytes of data for a request of ${max}`
        : reply.result === "dir" && reply.entries.some((e) => !isEntryName(e.name))
          ? "a directory entry name that is not one path component"
          : undefined;
  if (bad) {
    const err = new SandboxProtocolError(`the guest answered lane.fs.${syscall}(${JSON.stringify(path)}) with ${bad}; the lane was ended`, {
      offender: "guest",
      frameKind: "FileReply",
      diagnostics: conn.diagnostics,
    });
    conn.fail(err);
    throw err;
  }
  return { reply: reply as Result<R>, bytes };
}

function isEntryName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

/** An absolute guest path that fits one request (≤ 4096 bytes, no NUL). */
export function guestPath(what: string, value: unknown): string {
  if (typeof value !== "string" || !value.startsWith("/") || value.includes("\0")) {
    throw new SandboxConfigError(`${what} must be an absolute guest path like "/workspace/a.txt", got ${JSON.stringify(value)}`);
  }
  if (Buffer.byteLength(value) > WIRE.maxGuestPath) {
    throw new SandboxConfigError(`${what} is ${Buffer.byteLength(value)} bytes long; guest paths are at most ${WIRE.maxGuestPath} bytes`);
  }
  return value;
}

/** A permission mode, 0 to 0o7777. */
export function fileMode(what: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > 0o7777) {
    throw new SandboxConfigError(`${what} must be a permission mode from 0 to 0o7777 (e.g. 0o644), got ${JSON.stringify(value)}`);
  }
  return value;
}
