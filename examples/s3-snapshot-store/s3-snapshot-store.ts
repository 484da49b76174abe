/**
 * A SandboxSnapshotStore on object storage (any S3-compatible service): lane
 * snapshots (`snapshot.save(store)`, `sandbox.loadSnapshot(store, id)`) that
 * another process or another host can resume.
 *
 * Layout: one object per name under `keyPrefix` (`<prefix>/<id>/<file>`).
 * - put() streams the bytes as a multipart upload of `partBytes` parts, so a
 *   512 MiB RAM file never sits in memory whole. S3 makes the object visible
 *   only when the upload completes, which is what the contract asks: a save
 *   that dies half-way leaves no manifest and the snapshot is never listed.
 *   A put that fails aborts its upload (no orphan parts billed).
 * - get() streams the object's body; list() pages through ListObjectsV2.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import type { SandboxSnapshotStore } from "@torkbot/sandbox";

export interface S3SnapshotStoreOptions {
  client: S3Client;
  bucket: string;
  /** Where the snapshots live, e.g. `snapshots` (no trailing slash). */
  keyPrefix: string;
  /** Bytes per multipart part (S3's minimum is 5 MiB). Default 16 MiB. */
  partBytes?: number;
}

const MIN_PART = 5 * 1024 * 1024;

export class S3SnapshotStore implements SandboxSnapshotStore {
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #partBytes: number;

  constructor(options: S3SnapshotStoreOptions) {
    this.#client = options.client;
    this.#bucket = options.bucket;
    this.#prefix = options.keyPrefix.replace(/\/+$/, "");
    this.#partBytes = Math.max(MIN_PART, options.partBytes ?? 16 * 1024 * 1024);
  }

  #key(name: string): string {
    return this.#prefix === "" ? name : `${this.#prefix}/${name}`;
  }

  async put(name: string, data: AsyncIterable<Uint8Array>): Promise<void> {
    const Bucket = this.#bucket;
    const Key = this.#key(name);
    const parts = partsOf(data, this.#partBytes);
    const first = await parts.next();
    const firstPart = first.done ? new Uint8Array(0) : first.value;
    const second = first.done ? undefined : await parts.next();
    // Small objects (manifests, device state) in one request.
    if (second === undefined || second.done) {
      await this.#client.send(new PutObjectCommand({ Bucket, Key, Body: firstPart }));
      return;
    }
    const { UploadId } = await this.#client.send(new CreateMultipartUploadCommand({ Bucket, Key }));
    if (!UploadId) throw new Error(`S3 gave no upload id for ${Key}`);
    try {
      const done: { ETag: string; PartNumber: number }[] = [];
      const upload = async (body: Uint8Array) => {
        const PartNumber = done.length + 1;
        const r = await this.#client.send(new UploadPartCommand({ Bucket, Key, UploadId, PartNumber, Body: body }));
        done.push({ ETag: r.ETag ?? "", PartNumber });
      };
      await upload(firstPart);
      await upload(second.value);
      for (let p = await parts.next(); !p.done; p = await parts.next()) await upload(p.value);
      await this.#client.send(new CompleteMultipartUploadCommand({ Bucket, Key, UploadId, MultipartUpload: { Parts: done } }));
    } catch (err) {
      await this.#client.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId })).catch(() => {});
      throw err;
    }
  }

  async get(name: string): Promise<AsyncIterable<Uint8Array>> {
    const r = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#key(name) }));
    const body = r.Body as AsyncIterable<Uint8Array> | undefined;
    if (!body) throw new Error(`S3 object ${this.#key(name)} has no body`);
    return body;
  }

  async list(prefix: string): Promise<string[]> {
    const names: string[] = [];
    const strip = this.#prefix === "" ? 0 : this.#prefix.length + 1;
    let ContinuationToken: string | undefined;
    do {
      const r = await this.#client.send(new ListObjectsV2Command({ Bucket: this.#bucket, Prefix: this.#key(prefix), ContinuationToken }));
      for (const o of r.Contents ?? []) if (o.Key) names.push(o.Key.slice(strip));
      ContinuationToken = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (ContinuationToken);
    return names;
  }

  async delete(name: string): Promise<void> {
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#key(name) }));
  }
}

/** Regroups a byte stream into parts of exactly `size` bytes (the last one shorter). */
async function* partsOf(data: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  let part = new Uint8Array(size);
  let filled = 0;
  for await (const chunk of data) {
    let at = 0;
    while (at < chunk.length) {
      const n = Math.min(size - filled, chunk.length - at);
      part.set(chunk.subarray(at, at + n), filled);
      filled += n;
      at += n;
      if (filled === size) {
        yield part;
        part = new Uint8Array(size);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield part.subarray(0, filled);
}
