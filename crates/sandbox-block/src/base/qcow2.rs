//! Read-only QCOW2 (v2/v3) reader for the built-in base images.
//!
//! Supports what `qemu-img convert -O qcow2 [-c]` produces: standard and
//! zlib-compressed clusters, zero clusters and unallocated clusters (read as
//! zeros, since backing files are rejected). Anything that would change the
//! meaning of the bytes (backing files, encryption, external data files,
//! extended L2, non-zlib compression) is refused at open with a typed error.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use flate2::{Decompress, FlushDecompress};

use super::{check_range, BaseImage};
use crate::cache::Fifo;

const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
/// Bits 9..=55 of L1/L2 entries hold a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Refuse L1 tables larger than this (a 64 KiB-cluster image of 2 PiB needs 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// A hostile or broken header must not make us allocate arbitrary amounts.
const MAX_VIRTUAL_SIZE: u64 = 1 << 50;
const L2_CACHE_TABLES: usize = 64;
const CLUSTER_CACHE_ENTRIES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("reading the qcow2 image: {0}")]
    Io(#[from] io::Error),
    #[error("not a qcow2 image (bad magic)")]
    BadMagic,
    #[error("unsupported qcow2 version {0}")]
    Version(u32),
    #[error("qcow2 images with a backing file are not supported")]
    BackingFile,
    #[error("encrypted qcow2 images are not supported")]
    Encrypted,
    #[error("qcow2 extended L2 entries are not supported")]
    ExtendedL2,
    #[error("qcow2 external data files are not supported")]
    ExternalDataFile,
    #[error("qcow2 compression type {0} is not supported (only zlib)")]
    CompressionType(u8),
    #[error("the qcow2 image is marked corrupt")]
    Corrupt,
    #[error("unknown incompatible qcow2 features {0:#x}")]
    IncompatibleFeatures(u64),
    #[error("invalid qcow2 header: {0}")]
    InvalidHeader(&'static str),
}

/// Caches shared by all readers of one image.
struct Caches {
    l2: Fifo<Arc<[u64]>>,
    /// Decompressed clusters, keyed by their descriptor, so that small
    /// sequential reads do not inflate the same cluster again and again.
    clusters: Fifo<Arc<[u8]>>,
}

pub struct Qcow2Base {
    file: File,
    file_size: u64,
    size: u64,
    cluster_bits: u32,
    l1: Vec<u64>,
    caches: Mutex<Caches>,
    identity: String,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Qcow2Base {
    pub fn open(path: &Path, identity: impl Into<String>) -> Result<Self, Qcow2Error> {
        let file = File::open(path)?;
        let file_size = file.metadata()?.len();
        let mut hdr = [0u8; 112];
        let hdr_len = hdr.len().min(file_size as usize);
        if hdr_len < 72 {
            return Err(Qcow2Error::BadMagic);
        }
        file.read_exact_at(&mut hdr[..hdr_len], 0)?;
        if be32(&hdr, 0) != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let version = be32(&hdr, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Version(version));
        }
        if be64(&hdr, 8) != 0 {
            return Err(Qcow2Error::BackingFile);
        }
        let cluster_bits = be32(&hdr, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2Error::InvalidHeader("cluster_bits out of range"));
        }
        let size = be64(&hdr, 24);
        if size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::InvalidHeader("virtual size too large"));
        }
        if be32(&hdr, 32) != 0 {
            return Err(Qcow2Error::Encrypted);
        }
        let l1_size = u64::from(be32(&hdr, 36));
        let l1_offset = be64(&hdr, 40);

        if version == 3 {
            if hdr_len < 104 {
                return Err(Qcow2Error::InvalidHeader("v3 header truncated"));
            }
            let header_length = be32(&hdr, 100);
            if header_length < 104 {
                return Err(Qcow2Error::InvalidHeader("v3 header_length < 104"));
            }
            let incompat = be64(&hdr, 72);
            let known = INCOMPAT_DIRTY
                | INCOMPAT_CORRUPT
                | INCOMPAT_DATA_FILE
                | INCOMPAT_COMPRESSION
                | INCOMPAT_EXTL2;
            if incompat & !known != 0 {
                return Err(Qcow2Error::IncompatibleFeatures(incompat & !known));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(Qcow2Error::Corrupt);
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(Qcow2Error::ExternalDataFile);
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(Qcow2Error::ExtendedL2);
            }
            // The dirty bit only means refcounts may be stale; reading is fine.
            if incompat & INCOMPAT_COMPRESSION != 0 {
                if header_length <= 104 || hdr_len <= 104 {
                    return Err(Qcow2Error::InvalidHeader("compression type missing"));
                }
                if hdr[104] != 0 {
                    return Err(Qcow2Error::CompressionType(hdr[104]));
                }
            }
        }

        let cluster_size = 1u64 << cluster_bits;
        let bytes_per_l2 = cluster_size * (cluster_size / 8);
        let needed_l1 = size.div_ceil(bytes_per_l2);
        if l1_size < needed_l1 {
            return Err(Qcow2Error::InvalidHeader(
                "L1 table too small for the virtual size",
            ));
        }
        // Only the entries that can be addressed are loaded.
        let l1_bytes = needed_l1 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::InvalidHeader("L1 table too large"));
        }
        if !l1_offset.is_multiple_of(cluster_size) {
            return Err(Qcow2Error::InvalidHeader(
                "L1 table offset not cluster aligned",
            ));
        }
        if l1_offset
            .checked_add(l1_bytes)
            .is_none_or(|end| end > file_size)
        {
            return Err(Qcow2Error::InvalidHeader(
                "L1 table beyond the end of the file",
            ));
        }
        let mut raw = vec![0u8; l1_bytes as usize];
        file.read_exact_at(&mut raw, l1_offset)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();

        Ok(Self {
            file,
            file_size,
            size,
            cluster_bits,
            l1,
            caches: Mutex::new(Caches {
                l2: Fifo::new(L2_CACHE_TABLES),
                clusters: Fifo::new(CLUSTER_CACHE_ENTRIES),
            }),
            identity: identity.into(),
        })
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn caches(&self) -> MutexGuard<'_, Caches> {
        // A panic elsewhere cannot leave the caches inconsistent in a way
        // that matters: entries are inserted whole.
        self.caches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn l2_table(&self, l2_offset: u64) -> io::Result<Arc<[u64]>> {
        if let Some(t) = self.caches().l2.get(l2_offset) {
            return Ok(t.clone());
        }
        let cs = self.cluster_size();
        if !l2_offset.is_multiple_of(cs)
            || l2_offset.checked_add(cs).is_none_or(|e| e > self.file_size)
        {
            return Err(corrupt(format!("invalid L2 table offset {l2_offset:#x}")));
        }
        // I/O happens outside the lock; a racing loader just inserts twice.
        let mut raw = vec![0u8; cs as usize];
        self.file.read_exact_at(&mut raw, l2_offset)?;
        let table: Arc<[u64]> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        self.caches().l2.insert(l2_offset, table.clone());
        Ok(table)
    }

    fn compressed_cluster(&self, entry: u64) -> io::Result<Arc<[u8]>> {
        if let Some(c) = self.caches().clusters.get(entry) {
            return Ok(c.clone());
        }
        let cs = self.cluster_size();
        // Descriptor layout: host offset in bits 0..x, (sectors - 1) in x..62.
        let x = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let extra_sectors = (entry & !L2_COMPRESSED & ((1u64 << 62) - 1)) >> x;
        let span = (extra_sectors + 1) * 512 - (host & 511);
        // Compressed data is never legitimately much larger than a cluster.
        let len = span
            .min(self.file_size.saturating_sub(host))
            .min(2 * cs + 512);
        if len == 0 {
            return Err(corrupt(format!(
                "compressed cluster at {host:#x} beyond the file"
            )));
        }
        let mut input = vec![0u8; len as usize];
        self.file.read_exact_at(&mut input, host)?;
        let mut out = vec![0u8; cs as usize];
        // QCOW2 stores raw deflate streams (no zlib header).
        let mut inflater = Decompress::new(false);
        let status = inflater.decompress(&input, &mut out, FlushDecompress::Finish);
        if status.is_err() || inflater.total_out() != cs {
            return Err(corrupt(format!(
                "compressed cluster at {host:#x} does not inflate"
            )));
        }
        let out: Arc<[u8]> = out.into();
        self.caches().clusters.insert(entry, out.clone());
        Ok(out)
    }

    /// Read `buf.len()` bytes at `off`, all within one cluster.
    fn read_in_cluster(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let cs = self.cluster_size();
        let in_cluster = off & (cs - 1);
        let l2_bits = self.cluster_bits - 3;
        let l1_idx = (off >> (self.cluster_bits + l2_bits)) as usize;
        let l2_idx = ((off >> self.cluster_bits) & ((1 << l2_bits) - 1)) as usize;
        let l2_offset = self.l1.get(l1_idx).copied().unwrap_or(0) & OFFSET_MASK;
        if l2_offset == 0 {
            buf.fill(0);
            return Ok(());
        }
        let table = self.l2_table(l2_offset)?;
        let entry = table.get(l2_idx).copied().unwrap_or(0);
        if entry & L2_COMPRESSED != 0 {
            let data = self.compressed_cluster(entry)?;
            let start = in_cluster as usize;
            buf.copy_from_slice(&data[start..start + buf.len()]);
            return Ok(());
        }
        let host = entry & OFFSET_MASK;
        if entry & L2_ZERO != 0 || host == 0 {
            buf.fill(0);
            return Ok(());
        }
        if !host.is_multiple_of(cs) {
            return Err(corrupt(format!(
                "data cluster offset {host:#x} not aligned"
            )));
        }
        self.file.read_exact_at(buf, host + in_cluster)
    }
}

impl BaseImage for Qcow2Base {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, mut off: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, off, buf.len())?;
        let cs = self.cluster_size();
        let mut rest = buf;
        while !rest.is_empty() {
            let n = ((cs - (off & (cs - 1))) as usize).min(rest.len());
            let (now, later) = rest.split_at_mut(n);
            self.read_in_cluster(off, now)?;
            off += n as u64;
            rest = later;
        }
        Ok(())
    }

    fn identity(&self) -> &str {
        &self.identity
    }
}
