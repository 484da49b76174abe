import { open } from "node:fs/promises";
import { constants as zlibConstants, inflateRawSync } from "node:zlib";
import { CONVERT_HINT, ImageFormatError, ImageOptionError, ImageUnsupportedError } from "./image-errors.js";

/**
 * QCOW2 (v2 and v3) reader for standalone images: the active L1/L2 mapping
 * only, no snapshots, no backing chain. Layout per qemu's docs/interop/qcow2.txt.
 */

/** Random-access bytes. `read` may return fewer bytes than asked only at end of file. */
export interface ByteSource {
  size(): Promise<bigint | number>;
  read(offset: number, length: number): Promise<Uint8Array>;
  close?(): Promise<void>;
}

/** A ByteSource over a host file, opened read-only. */
export async function openFileByteSource(path: string): Promise<ByteSource & { close(): Promise<void> }> {
  const fh = await open(path, "r");
  return {
    async size() {
      return (await fh.stat()).size;
    },
    async read(offset, length) {
      const buf = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break; // end of file
        done += bytesRead;
      }
      return done === length ? buf : buf.subarray(0, done);
    },
    close: () => fh.close(),
  };
}

export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterSize: number;
  virtualSize: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  refcountOrder: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  headerLength: number;
  /** 0 = zlib (the only one supported). */
  compressionType: number;
}

export interface Qcow2ReaderOptions {
  /** Name used in error messages (defaults to the file path or "qcow2 image"). */
  name?: string;
  /** How many L2 tables to keep in memory (default 64; at 64 KiB clusters that is 4 MiB covering 32 GiB). */
  l2CacheTables?: number;
}

const MAGIC = 0x514649fb; // "QFI\xfb"
const INCOMPAT_DIRTY = 1n << 0n;
const INCOMPAT_CORRUPT = 1n << 1n;
const INCOMPAT_EXTERNAL_DATA = 1n << 2n;
const INCOMPAT_COMPRESSION_TYPE = 1n << 3n;
const INCOMPAT_EXTENDED_L2 = 1n << 4n;
const TWO32 = 0x1_0000_0000;

/** Bits 9..55 of a 64-bit table entry given as its two big-endian halves. */
function offsetBits9to55(hi: number, lo: number): number {
  return (hi & 0x00ff_ffff) * TWO32 + ((lo & 0xffff_fe00) >>> 0);
}

function u64(view: DataView, at: number): bigint {
  return view.getBigUint64(at);
}

/** Numbers above 2^53 can't be exact; no real image gets near that. */
function safe(name: string, value: bigint, image: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new ImageFormatError(image, `${name} ${value} is out of range`);
  return Number(value);
}

async function readExact(source: ByteSource, offset: number, length: number): Promise<Uint8Array> {
  const got = await source.read(offset, length);
  if (got.length === length) return got;
  // Past end of file reads as zeros, as in qemu's raw protocol layer: images
  // whose last data cluster was written partially end before the cluster does.
  const buf = new Uint8Array(length);
  buf.set(got.subarray(0, Math.min(got.length, length)));
  return buf;
}

export function parseQcow2Header(bytes: Uint8Array, image: string): Qcow2Header {
  if (bytes.length < 72) throw new ImageFormatError(image, `file is ${bytes.length} bytes, too short for a QCOW2 header`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0) !== MAGIC) throw new ImageFormatError(image, "missing QCOW2 magic \"QFI\\xfb\" at offset 0");
  const version = v.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw new ImageUnsupportedError(image, `version ${version}`, "only QCOW2 versions 2 and 3 are readable; " + CONVERT_HINT);
  }
  const clusterBits = v.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) {
    throw new ImageFormatError(image, `cluster_bits ${clusterBits} is outside 9..21 (512 B..2 MiB clusters)`);
  }
  let h: Qcow2Header = {
    version,
    clusterBits,
    clusterSize: 1 << clusterBits,
    virtualSize: safe("virtual size", u64(v, 24), image),
    cryptMethod: v.getUint32(32),
    l1Size: v.getUint32(36),
    l1TableOffset: safe("l1_table_offset", u64(v, 40), image),
    refcountTableOffset: safe("refcount_table_offset", u64(v, 48), image),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: safe("snapshots_offset", u64(v, 64), image),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: 72,
    compressionType: 0,
  };
  if (version === 3) {
    if (bytes.length < 104) throw new ImageFormatError(image, "file too short for a version 3 header");
    h = {
      ...h,
      incompatibleFeatures: u64(v, 72),
      compatibleFeatures: u64(v, 80),
      autoclearFeatures: u64(v, 88),
      refcountOrder: v.getUint32(96),
      headerLength: v.getUint32(100),
    };
    if (h.headerLength < 104 || h.headerLength > h.clusterSize) {
      throw new ImageFormatError(image, `header_length ${h.headerLength} is invalid`);
    }
    if (h.headerLength > 104 && bytes.length > 104) h.compressionType = v.getUint8(104);
    if (h.refcountOrder > 6) throw new ImageFormatError(image, `refcount_order ${h.refcountOrder} exceeds 6`);
  }
  if (u64(v, 8) !== 0n) {
    throw new ImageUnsupportedError(image, "backing file", "only standalone images are readable; " + CONVERT_HINT);
  }
  if (h.cryptMethod !== 0) {
    throw new ImageUnsupportedError(
      image,
      `encryption (crypt_method ${h.cryptMethod})`,
      "decrypt it first with `qemu-img convert --object secret,... --image-opts ... -O qcow2 out.qcow2`",
    );
  }
  const f = h.incompatibleFeatures;
  if (f & INCOMPAT_EXTERNAL_DATA) throw new ImageUnsupportedError(image, "external data file", CONVERT_HINT);
  if (f & INCOMPAT_EXTENDED_L2) throw new ImageUnsupportedError(image, "extended L2 entries (subclusters)", CONVERT_HINT);
  if (f & INCOMPAT_COMPRESSION_TYPE || h.compressionType !== 0) {
    const name = h.compressionType === 1 ? "zstd" : `type ${h.compressionType}`;
    throw new ImageUnsupportedError(image, `${name} compression (only zlib is supported)`, CONVERT_HINT);
  }
  if (f & INCOMPAT_CORRUPT) {
    throw new ImageFormatError(image, "the image is marked corrupt (incompatible feature bit 1)");
  }
  // Dirty (bit 0) only means refcounts may be stale; the mapping we read is still valid.
  const unknown = f & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_EXTERNAL_DATA | INCOMPAT_COMPRESSION_TYPE | INCOMPAT_EXTENDED_L2);
  if (unknown !== 0n) {
    throw new ImageUnsupportedError(image, `unknown incompatible feature bits 0x${unknown.toString(16)}`, CONVERT_HINT);
  }
  if (h.l1TableOffset % h.clusterSize !== 0) throw new ImageFormatError(image, "L1 table offset is not cluster-aligned");
  const l2Entries = h.clusterSize / 8;
  const needed = Math.ceil(Math.ceil(h.virtualSize / h.clusterSize) / l2Entries);
  if (h.l1Size < needed) {
    throw new ImageFormatError(image, `L1 table has ${h.l1Size} entries but ${needed} are needed for the virtual size`);
  }
  return h;
}

/** Decoded L2 entry kinds. */
type Mapping =
  | { kind: "zero" } // unallocated or zero-flag: reads as zeros
  | { kind: "data"; host: number }
  | { kind: "compressed"; host: number; length: number };

const ZERO: Mapping = { kind: "zero" };

export class Qcow2Reader {
  readonly header: Qcow2Header;
  readonly virtualSize: number;
  readonly clusterSize: number;
  /** Guest clusters covering virtualSize (the last one may be partial). */
  readonly clusterCount: number;
  readonly name: string;

  readonly #source: ByteSource;
  readonly #fileSize: number;
  readonly #ownsSource: boolean;
  readonly #l1: DataView;
  readonly #l2Entries: number;
  readonly #l2Cache = new Map<number, Promise<DataView>>();
  readonly #l2CacheMax: number;
  // One decompressed cluster: sequential small reads of a compressed cluster hit it.
  #lastCompressed: { host: number; data: Uint8Array } | undefined;

  private constructor(
    source: ByteSource,
    header: Qcow2Header,
    l1: Uint8Array,
    fileSize: number,
    name: string,
    ownsSource: boolean,
    options: Qcow2ReaderOptions,
  ) {
    this.#source = source;
    this.header = header;
    this.virtualSize = header.virtualSize;
    this.clusterSize = header.clusterSize;
    this.clusterCount = Math.ceil(header.virtualSize / header.clusterSize);
    this.name = name;
    this.#fileSize = fileSize;
    this.#ownsSource = ownsSource;
    this.#l1 = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.#l2Entries = header.clusterSize / 8;
    this.#l2CacheMax = Math.max(1, options.l2CacheTables ?? 64);
  }

  /** Opens an image from any ByteSource. The reader does not close the source. */
  static async open(source: ByteSource, options: Qcow2ReaderOptions = {}): Promise<Qcow2Reader> {
    return Qcow2Reader.#open(source, options.name ?? "qcow2 image", false, options);
  }

  /** Opens an image file; `close()` closes the file. */
  static async openFile(path: string, options: Qcow2ReaderOptions = {}): Promise<Qcow2Reader> {
    const source = await openFileByteSource(path);
    try {
      return await Qcow2Reader.#open(source, options.name ?? path, true, options);
    } catch (err) {
      await source.close();
      throw err;
    }
  }

  static async #open(source: ByteSource, name: string, owns: boolean, options: Qcow2ReaderOptions): Promise<Qcow2Reader> {
    const fileSize = Number(await source.size());
    // 512 bytes hold the v3 header with its optional fields; the smallest cluster is 512 too.
    const head = await source.read(0, Math.min(512, fileSize));
    const header = parseQcow2Header(head, name);
    const l1Bytes = header.l1Size * 8;
    if (header.l1TableOffset + l1Bytes > fileSize) throw new ImageFormatError(name, "L1 table extends past end of file");
    const l1 = l1Bytes === 0 ? new Uint8Array(0) : await readExact(source, header.l1TableOffset, l1Bytes);
    return new Qcow2Reader(source, header, l1, fileSize, name, owns, options);
  }

  async close(): Promise<void> {
    this.#l2Cache.clear();
    if (this.#ownsSource) await this.#source.close?.();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Guest bytes [offset, offset+length); must lie within the virtual size. */
  async readAt(offset: number, length: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ImageOptionError(`readAt(${offset}, ${length}): offset and length must be non-negative integers`);
    }
    if (offset + length > this.virtualSize) {
      throw new ImageOptionError(
        `readAt(${offset}, ${length}) reaches past the virtual size ${this.virtualSize} of ${this.name}; clamp the range`,
      );
    }
    const out = new Uint8Array(length);
    const cs = this.clusterSize;
    // Contiguous host runs of plain data clusters are fetched with one read.
    let run: { host: number; dest: number; length: number } | undefined;
    const flush = async () => {
      if (!run) return;
      out.set(await readExact(this.#source, run.host, run.length), run.dest);
      run = undefined;
    };
    let pos = offset;
    while (pos < offset + length) {
      const cluster = Math.floor(pos / cs);
      const within = pos - cluster * cs;
      const n = Math.min(cs - within, offset + length - pos);
      const dest = pos - offset;
      const m = await this.#lookup(cluster);
      if (m.kind === "data") {
        const host = m.host + within;
        if (run && run.host + run.length === host) run.length += n;
        else {
          await flush();
          run = { host, dest, length: n };
        }
      } else {
        await flush();
        if (m.kind === "compressed") out.set((await this.#inflate(m)).subarray(within, within + n), dest);
        // zero: `out` is already zero-filled
      }
      pos += n;
    }
    await flush();
    return out;
  }

  /** Guest cluster indexes (ascending) whose data is stored in the image; everything else reads as zeros. */
  async *allocatedClusters(): AsyncIterableIterator<number> {
    for (let l1i = 0; l1i * this.#l2Entries < this.clusterCount; l1i++) {
      if (this.#l2Offset(l1i) === 0) continue;
      const first = l1i * this.#l2Entries;
      const last = Math.min(first + this.#l2Entries, this.clusterCount);
      for (let c = first; c < last; c++) {
        if ((await this.#lookup(c)).kind !== "zero") yield c;
      }
    }
  }

  #l2Offset(l1Index: number): number {
    if (l1Index >= this.header.l1Size) return 0;
    return offsetBits9to55(this.#l1.getUint32(l1Index * 8), this.#l1.getUint32(l1Index * 8 + 4));
  }

  async #l2Table(host: number): Promise<DataView> {
    const hit = this.#l2Cache.get(host);
    if (hit) {
      // Re-insert to mark as most recently used (Map keeps insertion order).
      this.#l2Cache.delete(host);
      this.#l2Cache.set(host, hit);
      return hit;
    }
    if (host % this.clusterSize !== 0 || host + this.clusterSize > this.#fileSize) {
      throw new ImageFormatError(this.name, `L2 table offset ${host} is unaligned or past end of file`);
    }
    const load = readExact(this.#source, host, this.clusterSize).then((b) => new DataView(b.buffer, b.byteOffset, b.byteLength));
    this.#l2Cache.set(host, load);
    load.catch(() => this.#l2Cache.delete(host));
    while (this.#l2Cache.size > this.#l2CacheMax) {
      const oldest = this.#l2Cache.keys().next().value as number;
      this.#l2Cache.delete(oldest);
    }
    return load;
  }

  async #lookup(cluster: number): Promise<Mapping> {
    const l2Host = this.#l2Offset(Math.floor(cluster / this.#l2Entries));
    if (l2Host === 0) return ZERO;
    const table = await this.#l2Table(l2Host);
    const at = (cluster % this.#l2Entries) * 8;
    const hi = table.getUint32(at);
    const lo = table.getUint32(at + 4);
    if (hi & 0x4000_0000) return this.#compressed(hi, lo);
    // Bit 0 is the zero flag in v3; in v2 it is reserved and must be ignored.
    if (this.header.version === 3 && lo & 1) return ZERO;
    const host = offsetBits9to55(hi, lo);
    if (host === 0) return ZERO; // unallocated, no backing file
    if (host % this.clusterSize !== 0) {
      throw new ImageFormatError(this.name, `data cluster ${cluster} maps to unaligned host offset ${host}`);
    }
    return { kind: "data", host };
  }

  #compressed(hi: number, lo: number): Mapping {
    // x = 62 - (cluster_bits - 8): bits 0..x-1 hold the byte offset, bits x..61
    // the count of 512-byte sectors beyond the one holding the offset.
    const entry = (BigInt(hi) << 32n) | BigInt(lo);
    const x = BigInt(62 - (this.header.clusterBits - 8));
    const host = Number(entry & ((1n << x) - 1n));
    const extraSectors = Number((entry >> x) & ((1n << (62n - x)) - 1n));
    const end = Math.min(this.#fileSize, (Math.floor(host / 512) + extraSectors + 1) * 512);
    if (host >= this.#fileSize || end <= host) {
      throw new ImageFormatError(this.name, `compressed cluster at host offset ${host} lies past end of file`);
    }
    return { kind: "compressed", host, length: end - host };
  }

  async #inflate(m: { host: number; length: number }): Promise<Uint8Array> {
    if (this.#lastCompressed?.host === m.host) return this.#lastCompressed.data;
    const packed = await readExact(this.#source, m.host, m.length);
    let data: Uint8Array;
    try {
      // SYNC_FLUSH: the byte range is sector-rounded, so the stream may be followed
      // by another cluster's bytes or lack a final end marker; stop at a full cluster.
      data = inflateRawSync(packed, { finishFlush: zlibConstants.Z_SYNC_FLUSH });
    } catch (err) {
      throw new ImageFormatError(this.name, `compressed cluster at host offset ${m.host} does not inflate: ${String(err)}`);
    }
    if (data.length < this.clusterSize) {
      throw new ImageFormatError(
        this.name,
        `compressed cluster at host offset ${m.host} inflates to ${data.length} bytes, expected ${this.clusterSize}`,
      );
    }
    data = data.subarray(0, this.clusterSize);
    this.#lastCompressed = { host: m.host, data };
    return data;
  }
}
