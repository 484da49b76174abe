import { open } from "node:fs/promises";
import { ImageOptionError } from "./image-errors.js";

/**
 * Writes a standalone, uncompressed QCOW2 v3 image (16-bit refcounts) in one
 * sequential pass. File layout, in host clusters:
 *
 *   header | L1 table | (data clusters of one L2 range, then that L2 table)* | refcount table | refcount blocks
 *
 * Each L2 table is written after its data, so only one L2 table is held in
 * memory; refcounts are trivially 1 for every cluster up to the end, so they
 * are computed once the cluster count is known. The header is written last,
 * so an interrupted write never leaves a file that opens as a valid image.
 */

/** Random-access image-byte storage. */
export interface ByteSink {
  write(offset: number, bytes: Uint8Array): Promise<void>;
  /** Called with the final size so a reused destination loses stale trailing bytes. */
  truncate?(size: number): Promise<void>;
}

export interface WriteQcow2Options {
  virtualSize: number | bigint;
  /** Power of two in 512..2 MiB; default 64 KiB (qemu's default). */
  clusterSize?: number;
  /** Guest bytes of one cluster (`length` is short only for a partial last cluster); null = reads as zeros. */
  readBlock(guestOffset: number, length: number): Promise<Uint8Array | null>;
  /** Guest cluster indexes that may hold data, strictly ascending. Others are left unallocated. */
  allocated: AsyncIterable<number | bigint> | Iterable<number | bigint>;
  dest: ByteSink;
}

export interface WriteQcow2Result {
  fileSize: number;
  /** Data clusters written (all-zero clusters are left unallocated and not counted). */
  allocatedClusters: number;
}

/** qemu refuses L1 tables above 32 MiB. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
/** Appends are batched into writes of about this size. */
const BATCH_BYTES = 1024 * 1024;
const TWO32 = 0x1_0000_0000;
const COPIED_HI = 0x8000_0000; // bit 63: refcount is exactly one

/** A ByteSink over a host file, created or truncated. */
export async function openFileByteSink(path: string): Promise<ByteSink & { close(): Promise<void> }> {
  const fh = await open(path, "w");
  return {
    async write(offset, bytes) {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, offset + done);
        done += bytesWritten;
      }
    },
    truncate: (size) => fh.truncate(size),
    close: () => fh.close(),
  };
}

export function validateClusterSize(clusterSize: number): number {
  if (!Number.isInteger(clusterSize) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0) {
    throw new ImageOptionError(
      `clusterSize ${clusterSize} is invalid: QCOW2 cluster sizes are powers of two from 512 to 2097152 bytes; 65536 is the usual choice`,
    );
  }
  return Math.log2(clusterSize);
}

function isAllZero(b: Uint8Array): boolean {
  if (b.byteOffset % 4 === 0 && b.length % 4 === 0) {
    const words = new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function setEntry(view: DataView, at: number, hostOffset: number): void {
  view.setUint32(at, (COPIED_HI | Math.floor(hostOffset / TWO32)) >>> 0);
  view.setUint32(at + 4, hostOffset % TWO32);
}

/** Hands out host clusters in order and coalesces their bytes into large writes. */
class ClusterAppender {
  next: number;
  readonly #dest: ByteSink;
  readonly #cs: number;
  readonly #buf: Uint8Array;
  #used = 0;
  #start: number; // host offset of #buf[0]

  constructor(dest: ByteSink, clusterSize: number, firstCluster: number) {
    this.#dest = dest;
    this.#cs = clusterSize;
    this.next = firstCluster;
    this.#start = firstCluster * clusterSize;
    this.#buf = new Uint8Array(Math.max(BATCH_BYTES, clusterSize));
  }

  /** Copies one cluster (zero-padded if short) and returns its host offset. */
  async append(bytes: Uint8Array): Promise<number> {
    if (this.#used + this.#cs > this.#buf.length) await this.flush();
    this.#buf.set(bytes, this.#used);
    this.#buf.fill(0, this.#used + bytes.length, this.#used + this.#cs);
    this.#used += this.#cs;
    return this.next++ * this.#cs;
  }

  async flush(): Promise<void> {
    if (this.#used === 0) return;
    // Copy: the sink may keep the array, and #buf is reused.
    await this.#dest.write(this.#start, this.#buf.slice(0, this.#used));
    this.#start += this.#used;
    this.#used = 0;
  }
}

export async function writeQcow2(options: WriteQcow2Options): Promise<WriteQcow2Result> {
  const clusterSize = options.clusterSize ?? 65536;
  const clusterBits = validateClusterSize(clusterSize);
  const virtualSize = Number(options.virtualSize);
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0 || virtualSize % 512 !== 0) {
    throw new ImageOptionError(
      `virtualSize ${String(options.virtualSize)} is invalid: it must be a non-negative multiple of 512 bytes (QCOW2 disks are sector-sized)`,
    );
  }
  const { dest, readBlock } = options;
  const clusterCount = Math.ceil(virtualSize / clusterSize);
  const l2Entries = clusterSize / 8;
  const l1Size = Math.ceil(clusterCount / l2Entries);
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw new ImageOptionError(
      `virtualSize ${virtualSize} needs an L1 table of ${l1Size * 8} bytes at clusterSize ${clusterSize}, above qemu's 32 MiB limit; use a larger clusterSize`,
    );
  }
  // An empty disk has no L1 table at all (offset 0), as qemu-img creates it;
  // an allocated but unreferenced L1 cluster would show up as a leak.
  const l1Clusters = Math.ceil((l1Size * 8) / clusterSize);
  const l1 = new Uint8Array(l1Clusters * clusterSize);
  const l1View = new DataView(l1.buffer);
  const out = new ClusterAppender(dest, clusterSize, 1 + l1Clusters);

  let l2: { index: number; bytes: Uint8Array; view: DataView; used: number } | undefined;
  const finishL2 = async () => {
    if (l2 && l2.used > 0) setEntry(l1View, l2.index * 8, await out.append(l2.bytes));
    l2 = undefined;
  };

  let dataClusters = 0;
  let previous = -1;
  for await (const raw of options.allocated) {
    const cluster = Number(raw);
    if (!Number.isSafeInteger(cluster) || cluster < 0 || cluster >= clusterCount || cluster <= previous) {
      throw new ImageOptionError(
        `allocated yielded cluster ${String(raw)} after ${previous}: indexes must be integers in 0..${clusterCount - 1}, strictly ascending`,
      );
    }
    previous = cluster;
    const guestOffset = cluster * clusterSize;
    const length = Math.min(clusterSize, virtualSize - guestOffset);
    const data = await readBlock(guestOffset, length);
    if (data === null) continue;
    if (!(data instanceof Uint8Array) || data.length !== length) {
      throw new ImageOptionError(
        `readBlock(${guestOffset}, ${length}) returned ${data instanceof Uint8Array ? `${data.length} bytes` : typeof data}; return exactly ${length} bytes or null`,
      );
    }
    if (isAllZero(data)) continue; // unallocated clusters read as zeros
    const l1Index = Math.floor(cluster / l2Entries);
    if (l2?.index !== l1Index) {
      await finishL2();
      const bytes = new Uint8Array(clusterSize);
      l2 = { index: l1Index, bytes, view: new DataView(bytes.buffer), used: 0 };
    }
    setEntry(l2.view, (cluster % l2Entries) * 8, await out.append(data));
    l2.used++;
    dataClusters++;
  }
  await finishL2();

  // Refcount table and blocks cover every cluster including themselves: iterate to a fixed point.
  const used = out.next;
  const perBlock = clusterSize / 2; // 16-bit entries
  let blocks = 0;
  let tableClusters = 0;
  for (;;) {
    const total = used + blocks + tableClusters;
    const b = Math.ceil(total / perBlock);
    const t = Math.ceil((b * 8) / clusterSize);
    if (b === blocks && t === tableClusters) break;
    blocks = b;
    tableClusters = t;
  }
  const totalClusters = used + tableClusters + blocks;
  const tableStart = used;
  const blocksStart = used + tableClusters;

  const table = new Uint8Array(clusterSize);
  const tableView = new DataView(table.buffer);
  for (let t = 0; t < tableClusters; t++) {
    table.fill(0);
    for (let i = 0; i < clusterSize / 8; i++) {
      const block = t * (clusterSize / 8) + i;
      if (block >= blocks) break;
      const host = (blocksStart + block) * clusterSize;
      tableView.setUint32(i * 8, Math.floor(host / TWO32));
      tableView.setUint32(i * 8 + 4, host % TWO32);
    }
    await out.append(table);
  }
  const block = new Uint8Array(clusterSize);
  const blockView = new DataView(block.buffer);
  for (let b = 0; b < blocks; b++) {
    block.fill(0);
    const first = b * perBlock;
    const count = Math.min(perBlock, totalClusters - first);
    for (let i = 0; i < count; i++) blockView.setUint16(i * 2, 1);
    await out.append(block);
  }
  await out.flush();

  if (l1Clusters > 0) await dest.write(clusterSize, l1);
  const header = new Uint8Array(clusterSize); // zeros after the header end the extension area
  const h = new DataView(header.buffer);
  h.setUint32(0, 0x514649fb); // "QFI\xfb"
  h.setUint32(4, 3);
  h.setUint32(20, clusterBits);
  h.setBigUint64(24, BigInt(virtualSize));
  h.setUint32(36, l1Size);
  h.setBigUint64(40, BigInt(l1Clusters > 0 ? clusterSize : 0));
  h.setBigUint64(48, BigInt(tableStart * clusterSize));
  h.setUint32(56, tableClusters);
  h.setUint32(96, 4); // refcount_order: 16-bit refcounts
  h.setUint32(100, 112); // header_length, including compression_type (0 = zlib) and padding
  await dest.write(0, header);
  const fileSize = totalClusters * clusterSize;
  await dest.truncate?.(fileSize);
  return { fileSize, allocatedClusters: dataClusters };
}
