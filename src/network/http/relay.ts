/** Middleware invocation with a deadline, and the byte relay of upgraded connections. */
import type { Duplex } from "node:stream";
import type { InterceptedFlow, InterceptedRequest } from "./types.js";

/** Runs the middleware with a deadline; resolves undefined on success, else what it threw. */
export async function runMiddleware(
  middleware: InterceptedFlow["middleware"],
  request: InterceptedRequest,
  timeoutMs: number,
): Promise<Error | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(() => middleware(request)),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the middleware did not finish within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  } finally {
    clearTimeout(timer);
  }
}

/** Relays bytes both ways until either side ends; then tears both down. */
export function relay(a: Duplex, b: Duplex): Promise<void> {
  return new Promise((resolve) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      a.destroy();
      b.destroy();
      resolve();
    };
    a.pipe(b);
    b.pipe(a);
    a.on("close", finish).on("error", finish);
    b.on("close", finish).on("error", finish);
    a.resume();
  });
}
