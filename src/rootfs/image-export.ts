/**
 * Offline image work, no VM: `compose` describes base + overlay, `flatten`
 * writes the merged view as a standalone QCOW2 through random-access storage,
 * `bytes` streams an image container's bytes (catalog image, image file or flattened).
 */
import { createReadStream } from "node:fs";
import { SandboxConfigError } from "../errors.js";
import { resolveImage, type ImageFileRootfs } from "../images/resolve.js";
import type { SandboxBlockStore } from "./block-store.js";
import { Qcow2Reader } from "./qcow2-reader.js";
import { writeQcow2, type ByteSink } from "./qcow2-writer.js";

export interface BuiltInRef {
  readonly kind: "builtIn";
  readonly name: string;
}

/** A catalog image or a pinned image file. */
export type BaseRef = BuiltInRef | ImageFileRootfs;

/** The merged view of a base image and a block-store overlay (the same contract `rootfs.cow` boots). */
export interface ComposedRootfs {
  readonly kind: "composed";
  readonly base: BaseRef;
  readonly overlay: SandboxBlockStore;
}

/** Random-access storage for image bytes (what `flatten` writes into). */
export interface ImageByteStore extends ByteSink {
  read(offset: number, length: number): Promise<Uint8Array>;
}

/** A standalone QCOW2 written by `rootfs.flatten`; read it back with `rootfs.bytes`. */
export interface FlattenedImage {
  readonly kind: "flattened";
  readonly format: "qcow2";
  readonly dest: ImageByteStore;
  readonly sizeBytes: number;
  readonly virtualSizeBytes: number;
}

/** Block size of overlays (the copy-on-write engine's). */
const OVERLAY_BLOCK = 64 * 1024;

export async function flatten(options: {
  format: "qcow2";
  source: ComposedRootfs | BaseRef;
  dest: ImageByteStore;
  clusterSize?: number;
}): Promise<FlattenedImage> {
  if (options?.format !== "qcow2") {
    throw new SandboxConfigError(`flatten supports format "qcow2" only, got ${JSON.stringify(options?.format)}`);
  }
  const { source, dest } = options;
  if (!dest || typeof dest.write !== "function" || typeof dest.read !== "function") {
    throw new SandboxConfigError("flatten needs dest: an object with read(offset, length) and write(offset, bytes)");
  }
  const base = source?.kind === "composed" ? source.base : source;
  if (!base || (base.kind !== "builtIn" && base.kind !== "image")) {
    throw new SandboxConfigError("flatten needs source: rootfs.compose({ base, overlay }), rootfs.builtIn(name) or rootfs.image({ path, digest })");
  }
  const image = await resolveImage(base);
  if (image.format !== "qcow2") {
    throw new SandboxConfigError(`flatten reads qcow2 bases; ${image.name} is ${image.format} (convert it with \`qemu-img convert -O qcow2\`)`);
  }
  const reader = await Qcow2Reader.openFile(image.path, { name: image.name });
  try {
    const virtualSize = reader.virtualSize;
    const context = { base: image.sha256 };
    const overlay = source.kind === "composed" ? source.overlay : undefined;
    const stored = new Set<number>(overlay ? (await overlay.list(context)).map(Number) : []);
    const clusterSize = options.clusterSize ?? 65536;
    const overlayBlock = blockReader(overlay, context);

    // Clusters that may hold data: the base's allocated ones and the overlay's blocks.
    const allocated = new Set<number>();
    const mark = (start: number, length: number) => {
      const end = Math.min(virtualSize, start + length);
      for (let c = Math.floor(start / clusterSize); c * clusterSize < end; c++) allocated.add(c);
    };
    for await (const c of reader.allocatedClusters()) mark(c * reader.clusterSize, reader.clusterSize);
    for (const b of stored) mark(b * OVERLAY_BLOCK, OVERLAY_BLOCK);

    const result = await writeQcow2({
      virtualSize,
      clusterSize,
      dest,
      allocated: [...allocated].sort((a, b) => a - b),
      readBlock: async (offset, length) => {
        const out = new Uint8Array(length);
        for (let pos = offset; pos < offset + length; ) {
          const block = Math.floor(pos / OVERLAY_BLOCK);
          const segEnd = Math.min(offset + length, (block + 1) * OVERLAY_BLOCK);
          if (stored.has(block)) {
            const bytes = await overlayBlock(block);
            out.set(bytes.subarray(pos - block * OVERLAY_BLOCK, segEnd - block * OVERLAY_BLOCK), pos - offset);
          } else {
            out.set(await reader.readAt(pos, segEnd - pos), pos - offset);
          }
          pos = segEnd;
        }
        return out;
      },
    });
    return Object.freeze({ kind: "flattened" as const, format: "qcow2" as const, dest, sizeBytes: result.fileSize, virtualSizeBytes: virtualSize });
  } finally {
    await reader.close();
  }
}

/** Reads overlay blocks one at a time, keeping the last one (clusters ≤ a block share it). */
function blockReader(store: SandboxBlockStore | undefined, context: { base: string }) {
  let last: { index: number; bytes: Uint8Array } | undefined;
  return async (index: number): Promise<Uint8Array> => {
    if (last?.index === index) return last.bytes;
    const chunks = store ? await store.read({ start: BigInt(index), count: 1 }, context) : [];
    const hit = chunks.find((c) => Number(c.index) === index);
    if (!hit || hit.bytes.length !== OVERLAY_BLOCK) {
      throw new SandboxConfigError(`the overlay store listed block ${index} but read() returned ${hit ? `${hit.bytes.length} bytes` : "nothing"} for it`);
    }
    last = { index, bytes: hit.bytes };
    return hit.bytes;
  };
}

/** Streams the image container's bytes (not the filesystem inside it). */
export async function* bytes(image: FlattenedImage | BaseRef, options: { chunkSize?: number } = {}): AsyncGenerator<Uint8Array> {
  const chunk = options.chunkSize ?? 1 << 20;
  if (image?.kind === "builtIn" || image?.kind === "image") {
    const entry = await resolveImage(image);
    for await (const piece of createReadStream(entry.path, { highWaterMark: chunk })) {
      yield new Uint8Array(piece as Buffer);
    }
    return;
  }
  if (image?.kind !== "flattened") throw new SandboxConfigError("bytes() takes rootfs.builtIn(name), rootfs.image(...) or the result of rootfs.flatten()");
  for (let off = 0; off < image.sizeBytes; off += chunk) {
    yield await image.dest.read(off, Math.min(chunk, image.sizeBytes - off));
  }
}

/** An ImageByteStore in memory, growing as it is written. */
export class MemoryImageStore implements ImageByteStore {
  #buf = new Uint8Array(0);
  #size = 0;

  /** Bytes written so far (the image's length). */
  get size(): number {
    return this.#size;
  }

  /** Writes `data` at `offset`, growing the buffer as needed. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    const end = offset + data.length;
    if (end > this.#buf.length) {
      const grown = new Uint8Array(Math.max(end, this.#buf.length * 2));
      grown.set(this.#buf.subarray(0, this.#size));
      this.#buf = grown;
    }
    this.#buf.set(data, offset);
    this.#size = Math.max(this.#size, end);
  }

  async truncate(size: number): Promise<void> {
    if (size < this.#size) this.#buf.fill(0, size, this.#size);
    this.#size = size;
  }

  /** The bytes at `offset` (zeros past what was written). */
  async read(offset: number, length: number): Promise<Uint8Array> {
    return this.#buf.slice(offset, Math.min(this.#size, offset + length));
  }
}
