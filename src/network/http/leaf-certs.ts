/**
 * Leaf certificates for intercepted hostnames, one TLS context per hostname,
 * cached (LRU-bounded). All leaves of a sandbox share one RSA key generated
 * lazily on the first TLS flow: the key never leaves the host, every leaf is
 * scoped to its hostname by its certificate, and one key means one ~100 ms
 * native key generation per sandbox instead of one per hostname.
 */
import { createSecureContext, type SecureContext } from "node:tls";
import { generateRsaKey, type LeafKey, type SandboxCa } from "./ca.js";

export class LeafCertificates {
  readonly #ca: SandboxCa;
  readonly #maxEntries: number;
  #key: Promise<LeafKey> | undefined;
  readonly #contexts = new Map<string, Promise<SecureContext>>();

  constructor(ca: SandboxCa, options: { maxEntries?: number } = {}) {
    this.#ca = ca;
    this.#maxEntries = options.maxEntries ?? 512;
  }

  /** Starts generating the shared leaf key in the background (so the first TLS flow does not wait for it). */
  warm(): void {
    this.#leafKey().catch(() => {});
  }

  /** The TLS server context presenting a certificate for `hostname`. */
  contextFor(hostname: string): Promise<SecureContext> {
    const hit = this.#contexts.get(hostname);
    if (hit) {
      // Refresh LRU position.
      this.#contexts.delete(hostname);
      this.#contexts.set(hostname, hit);
      return hit;
    }
    const made = this.#make(hostname);
    this.#contexts.set(hostname, made);
    made.catch(() => this.#contexts.delete(hostname));
    while (this.#contexts.size > this.#maxEntries) {
      const oldest = this.#contexts.keys().next().value as string;
      this.#contexts.delete(oldest);
    }
    return made;
  }

  /** The PEM certificate that `contextFor(hostname)` presents (for tests and diagnostics). */
  async certificateFor(hostname: string): Promise<string> {
    const key = await this.#leafKey();
    return this.#ca.issueLeaf(hostname, key);
  }

  async #make(hostname: string): Promise<SecureContext> {
    const key = await this.#leafKey();
    const cert = this.#ca.issueLeaf(hostname, key);
    return createSecureContext({ key: key.privateKeyPem, cert, minVersion: "TLSv1.2" });
  }

  #leafKey(): Promise<LeafKey> {
    if (!this.#key) {
      this.#key = generateRsaKey();
      this.#key.catch(() => (this.#key = undefined));
    }
    return this.#key;
  }
}
