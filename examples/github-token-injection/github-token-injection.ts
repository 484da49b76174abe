/**
 * GitHub-style token injection: the guest calls an API with plain `curl`, and
 * the host adds a short-lived token to each request on the way out. The token
 * never enters the guest: not its environment, files, or any response.
 */
import { defineSandbox, network, rootfs, type NetworkEvent } from "@torkbot/sandbox";

export interface TokenInjectionOptions {
  /** The API's hostname, e.g. "api.github.com". */
  apiHost: string;
  /** DNS resolvers the policy forwards the guest's queries to, e.g. ["1.1.1.1"]. */
  resolvers: string[];
  /** Mints a token per request (an installation-token service, a vault…). */
  token: () => Promise<string>;
  /** Extra root certificates for the API's TLS certificate (a private CA); Node's roots otherwise. */
  upstreamCa?: string;
  /** Audit hook: every decision, denial and intercepted request. */
  onEvent?: (event: NetworkEvent) => void;
}

export interface TokenInjectionOutcome {
  /** What `curl https://<apiHost>/user` printed in the guest. */
  body: string;
  /** Whether the guest could find the token anywhere it looked. */
  tokenVisibleInGuest: boolean;
}

export async function callApiWithInjectedToken(options: TokenInjectionOptions): Promise<TokenInjectionOutcome> {
  const issued: string[] = [];
  const sandbox = defineSandbox({
    rootfs: rootfs.builtIn("debian:12"),
    network: network.policy(
      (conn) => {
        if (conn.matchDns()?.accept({ resolvers: options.resolvers })) return;
        conn.matchHttp(options.apiHost)?.accept(async (request) => {
          const token = await options.token();
          issued.push(token);
          request.headers.set("authorization", `Bearer ${token}`);
        });
        // Anything else: not granted, so denied.
      },
      { upstreamCa: options.upstreamCa, onEvent: options.onEvent },
    ),
  });
  await using lane = await sandbox.boot();
  const call = await lane.exec("curl", ["-fsS", "-m", "30", `https://${options.apiHost}/user`]);
  if (call.exitCode !== 0) throw new Error(`curl failed (${call.exitCode}): ${call.stderr}`);
  // Look for every token the host issued, everywhere the guest can see.
  const patterns = issued.flatMap((t) => ["-e", t]);
  const search = issued.length
    ? await lane.exec("sh", ["-c", 'env | grep -q "$@" && echo env; grep -rlq "$@" /run /tmp /etc /root 2>/dev/null && echo files; true', "sh", ...patterns])
    : { stdout: "" };
  return {
    body: call.stdout,
    tokenVisibleInGuest: search.stdout.trim() !== "" || issued.some((t) => call.stdout.includes(t)),
  };
}
