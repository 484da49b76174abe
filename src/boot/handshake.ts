/** Launch → Launched → Hello → Configure → Ready, failing on any exit, error or deadline. */
import { SandboxBootError, SandboxError } from "../errors.js";
import type { ConnectionEnd, ControlFrame, HelperConnection } from "../helper-connection.js";
import { Kind, type Configure, type Hello, type Launch, type Launched, type Ready } from "../protocol/contract.js";

export interface Handshake {
  launched: Launched;
  hello: Hello;
  ready: Ready;
}

export function handshake(
  conn: HelperConnection,
  launch: Launch,
  configure: Promise<Configure>,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    let launched: Launched | undefined;
    let hello: Hello | undefined;
    const cleanup = () => {
      clearTimeout(timer);
      conn.off("control", onControl);
      conn.off("exit", onExit);
      signal?.removeEventListener("abort", onAbort);
    };
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new SandboxBootError(`the guest was not ready within ${timeoutMs} ms; raise boot({ timeoutMs }) on slow hosts`)),
      timeoutMs,
    );
    const onAbort = () => fail(new DOMException("boot was aborted", "AbortError"));
    const onExit = (end: ConnectionEnd) => {
      const tail = end.vmExit?.consoleTail?.trim();
      // A broken contract is its own error, whenever it happens.
      if (end.error?.code === "ERR_SANDBOX_PROTOCOL") return fail(end.error);
      const why = end.helperError?.message ?? (end.vmExit ? "the VM exited during boot" : "the sandbox helper exited during boot");
      const last = conn.diagnostics.at(-1);
      fail(
        new SandboxBootError(`${why}${last ? `; the helper's last diagnostic: ${last}` : ""}${tail ? `; console output:\n${lastLines(tail, 20)}` : ""}`, {
          consoleTail: end.vmExit?.consoleTail,
        }),
      );
    };
    const onControl = (frame: ControlFrame) => {
      switch (frame.kind) {
        case "Launched":
          launched = frame.msg;
          break;
        case "Hello":
          hello = frame.msg;
          configure.then(
            (body) => conn.sendJson("Configure", 0, body),
            (err: unknown) => fail(err instanceof Error ? err : new SandboxError("ERR_SANDBOX_BOOT", String(err))),
          );
          break;
        case "InitError":
          conn.send(Kind.Shutdown, 0);
          fail(
            new SandboxBootError(`guest init failed at ${frame.msg.stage}: ${frame.msg.message}`, {
              stage: frame.msg.stage,
              guestMessage: frame.msg.message,
            }),
          );
          break;
        case "Ready":
          cleanup();
          if (!launched || !hello) return reject(new SandboxBootError("the guest was ready before the helper launched it"));
          resolve({ launched, hello, ready: frame.msg });
          break;
      }
    };
    conn.on("control", onControl);
    conn.on("exit", onExit);
    signal?.addEventListener("abort", onAbort, { once: true });
    conn.sendJson("Launch", 0, launch);
  });
}

function lastLines(text: string, n: number): string {
  return text.split("\n").slice(-n).join("\n");
}

/**
 * A restored VM: Launch → Launched → Resumed (the helper sends the guest its
 * Resume; there is no Hello or Configure). Resolves in the shape of a boot.
 */
export function resumeHandshake(conn: HelperConnection, launch: Launch, timeoutMs: number, signal: AbortSignal | undefined): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    let launched: Launched | undefined;
    const cleanup = () => {
      clearTimeout(timer);
      conn.off("control", onControl);
      conn.off("exit", onExit);
      signal?.removeEventListener("abort", onAbort);
    };
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const timer = setTimeout(() => fail(new SandboxBootError(`the restored guest did not resume within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = () => fail(new DOMException("boot was aborted", "AbortError"));
    const onExit = (end: ConnectionEnd) => {
      if (end.error?.code === "ERR_SANDBOX_PROTOCOL") return fail(end.error);
      const why = end.helperError?.message ?? (end.vmExit ? "the VM exited while resuming" : "the sandbox helper exited while resuming");
      const tail = end.vmExit?.consoleTail?.trim();
      fail(new SandboxBootError(`restoring the snapshot failed: ${why}${tail ? `; console output:\n${lastLines(tail, 20)}` : ""}`, { consoleTail: end.vmExit?.consoleTail }));
    };
    const onControl = (frame: ControlFrame) => {
      if (frame.kind === "Launched") launched = frame.msg;
      if (frame.kind !== "Resumed") return;
      cleanup();
      if (!launched) return reject(new SandboxBootError("the guest resumed before the helper launched it"));
      const ready: Ready = { uptimeMs: 0, kernel: "", warnings: frame.msg.warnings };
      resolve({ launched, hello: { protocol: 0, uptimeMs: 0, initStartedMs: 0, modulesLoadedMs: 0 }, ready });
    };
    conn.on("control", onControl);
    conn.on("exit", onExit);
    signal?.addEventListener("abort", onAbort, { once: true });
    conn.sendJson("Launch", 0, launch);
  });
}
