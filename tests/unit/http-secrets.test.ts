/**
 * `network.secrets(...)` building blocks: placeholders for the guest, and the
 * middleware that swaps them for the real value only towards allowed hosts —
 * checked directly and through the interceptor on real sockets.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HttpHeaders } from "../../src/network/http/headers.js";
import { composeMiddleware, createSecrets, hostAllowed, InsecureTransportError, secretsMiddleware, type SecretEvent } from "../../src/network/http/secrets.js";
import type { InterceptedRequest } from "../../src/network/http/types.js";
import { completeResponse, HOST, rawConnect, readBody, readUntil, startGuestSide, startUpstream, type Guest, type Upstream } from "./http-harness.js";

const req = (hostname: string, headers: [string, string][]): InterceptedRequest => ({
  method: "GET",
  url: "/",
  protocol: "h1",
  scheme: "https:",
  hostname,
  src: { ip: "10.0.0.2", port: 40000 },
  dst: { ip: "203.0.113.5", port: 443 },
  headers: new HttpHeaders(headers),
});

describe("secrets", () => {
  it("gives the guest placeholders only, distinct per secret and per call", () => {
    const spec = { GH_TOKEN: { value: "ghp_real", hosts: ["api.github.com"] }, NPM_TOKEN: { value: "npm_real", hosts: ["*.npmjs.org"] } };
    const a = createSecrets(spec);
    const b = createSecrets(spec);
    expect(Object.keys(a.env)).toEqual(["GH_TOKEN", "NPM_TOKEN"]);
    for (const v of Object.values(a.env)) expect(v).toMatch(/^sandbox-secret-[0-9a-f]{32}$/);
    expect(a.env.GH_TOKEN).not.toBe(a.env.NPM_TOKEN);
    expect(a.env.GH_TOKEN).not.toBe(b.env.GH_TOKEN);
    expect(JSON.stringify(a.env)).not.toContain("real");
  });

  it("rejects bad specs with clear errors", () => {
    expect(() => createSecrets({ "BAD-NAME": { value: "x", hosts: ["a.test"] } })).toThrow(/environment variable name/);
    expect(() => createSecrets({ A: { value: "", hosts: ["a.test"] } })).toThrow(/non-empty/);
    expect(() => createSecrets({ A: { value: "x\r\nInjected: 1", hosts: ["a.test"] } })).toThrow(/CR, LF/);
    expect(() => createSecrets({ A: { value: "x", hosts: [] } })).toThrow(/at least one/);
    expect(() => createSecrets({ A: { value: "x", hosts: ["https://a.test/"] } })).toThrow(/not a hostname/);
  });

  it("matches hosts exactly or by *.domain (subdomains only)", () => {
    expect(hostAllowed("api.github.com", ["api.github.com"])).toBe(true);
    expect(hostAllowed("API.GitHub.com.", ["api.github.com"])).toBe(true);
    expect(hostAllowed("evilapi.github.com", ["api.github.com"])).toBe(false);
    expect(hostAllowed("registry.npmjs.org", ["*.npmjs.org"])).toBe(true);
    expect(hostAllowed("npmjs.org", ["*.npmjs.org"])).toBe(false);
    expect(hostAllowed("evilnpmjs.org", ["*.npmjs.org"])).toBe(false);
  });

  it("substitutes in headers (Bearer and Basic) for allowed hosts; elsewhere the placeholder goes out unchanged", async () => {
    const events: SecretEvent[] = [];
    const spec = { TOKEN: { value: "real-value", hosts: ["api.test"] } };
    const { env } = createSecrets(spec);
    const mw = secretsMiddleware(spec, env, (e) => events.push(e));
    const p = env.TOKEN!;
    const basic = `Basic ${Buffer.from(`user:${p}`).toString("base64")}`;

    const allowed = req("api.test", [["Authorization", `Bearer ${p}`], ["X-Other", "keep"], ["Proxy-Thing", basic]]);
    await mw(allowed);
    expect([...allowed.headers]).toEqual([
      ["Authorization", "Bearer real-value"],
      ["X-Other", "keep"],
      ["Proxy-Thing", `Basic ${Buffer.from("user:real-value").toString("base64")}`],
    ]);

    const elsewhere = req("other.test", [["Authorization", `Bearer ${p}`]]);
    await mw(elsewhere);
    expect(elsewhere.headers.get("authorization")).toBe(`Bearer ${p}`);
    expect(events.map((e) => [e.type, e.hostname, e.header])).toEqual([
      ["secret.substituted", "api.test", "Authorization"],
      ["secret.substituted", "api.test", "Proxy-Thing"],
      ["secret.withheld", "other.test", "Authorization"],
    ]);
  });

  it("refuses to put a secret on a plain-HTTP request unless the host is allowInsecure", async () => {
    const events: SecretEvent[] = [];
    const spec = { T: { value: "real-value", hosts: ["api.test", "legacy.test"], allowInsecure: ["legacy.test"] } };
    const { env } = createSecrets(spec);
    const mw = secretsMiddleware(spec, env, (e) => events.push(e));
    const plain = { ...req("api.test", [["authorization", `Bearer ${env.T}`]]), scheme: "http:" as const };
    await expect(Promise.resolve().then(() => mw(plain))).rejects.toBeInstanceOf(InsecureTransportError);
    expect(plain.headers.get("authorization")).toBe(`Bearer ${env.T}`);
    const legacy = { ...req("legacy.test", [["authorization", `Bearer ${env.T}`]]), scheme: "http:" as const };
    await mw(legacy);
    expect(legacy.headers.get("authorization")).toBe("Bearer real-value");
    // A placeholder to a host that may not receive it is not a secret leak: it goes out unchanged.
    const other = { ...req("other.test", [["authorization", `Bearer ${env.T}`]]), scheme: "http:" as const };
    await mw(other);
    expect(events.map((e) => e.type)).toEqual(["secret.refused", "secret.substituted", "secret.withheld"]);
    expect(() => createSecrets({ T: { value: "v", hosts: ["a.test"], allowInsecure: "a.test" as never } })).toThrow(/allowInsecure/);
  });

  it("composes with a policy middleware", async () => {
    const spec = { T: { value: "v", hosts: ["api.test"] } };
    const s = createSecrets(spec);
    const r = req("api.test", [["authorization", s.env.T!]]);
    await composeMiddleware(s.middleware, (x) => x.headers.set("x-policy", x.headers.get("authorization") ?? ""))(r);
    expect(r.headers.get("x-policy")).toBe("v");
  });

  describe("through the interceptor", () => {
    let up: Upstream;
    let guest: Guest;
    const seen: (string | undefined)[] = [];
    const secrets = createSecrets({ API_KEY: { value: "the-real-key", hosts: [HOST] } });
    beforeAll(async () => {
      up = await startUpstream(async (r, res) => {
        seen.push(r.headers["x-api-key"] as string | undefined);
        await readBody(r);
        res.end("ok");
      });
      guest = await startGuestSide(up.port, secrets.middleware);
    });
    afterAll(async () => {
      await guest.close();
      await up.close();
    });

    it("the upstream gets the real key; the guest only ever had the placeholder", async () => {
      const s = await rawConnect(guest.port);
      s.write(`GET / HTTP/1.1\r\nHost: ${HOST}:${guest.port}\r\nX-Api-Key: ${secrets.env.API_KEY}\r\n\r\n`);
      const { text } = await readUntil(s, completeResponse);
      expect(text).toMatch(/^HTTP\/1\.1 200 /);
      expect(text).not.toContain("the-real-key");
      expect(seen).toEqual(["the-real-key"]);
      s.destroy();
    });
  });
});
