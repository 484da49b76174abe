/**
 * Per-boot interception lifecycle in one object, for the network wiring:
 * the CA starts generating at once (pass `ca` to `boot({ interceptCa })`, which
 * awaits it only when the guest asks for its configuration), flows handed to
 * `handle` before it is ready simply wait for it, and `close()` ends them all.
 */
import { createSandboxCa, type CaOptions, type SandboxCa } from "./ca.js";
import { createHttpInterceptor, type HttpInterceptor, type HttpInterceptorOptions } from "./intercept.js";
import type { InterceptHandler } from "./types.js";

/** One boot's interception: its CA (generating), a handler usable at once, and the interceptor once ready. */
export interface BootInterception {
  /** The sandbox CA of this boot (its certificate goes to the guest). */
  readonly ca: Promise<SandboxCa>;
  /** The handler for the intercept server; usable immediately. */
  readonly handle: InterceptHandler;
  /** The interceptor once the CA exists. */
  readonly interceptor: Promise<HttpInterceptor>;
  close(): Promise<void>;
}

/** Starts one boot's interception: the CA key is generated in the background while the VM boots. */
export function startInterception(options: Omit<HttpInterceptorOptions, "ca"> & { caOptions?: CaOptions } = {}): BootInterception {
  const { caOptions, ...rest } = options;
  const ca = createSandboxCa(caOptions);
  const interceptor = ca.then((c) => createHttpInterceptor({ ...rest, ca: c }));
  // Failures surface to whoever awaits `ca` (the boot) or calls `handle`.
  interceptor.catch(() => {});
  let closed = false;
  return {
    ca,
    interceptor,
    handle: async (socket, flow) => {
      let i: HttpInterceptor;
      try {
        i = await interceptor;
      } catch {
        socket.destroy();
        return;
      }
      if (closed) {
        socket.destroy();
        return;
      }
      await i.handle(socket, flow);
    },
    async close() {
      closed = true;
      const i = await interceptor.catch(() => undefined);
      await i?.close();
    },
  };
}
