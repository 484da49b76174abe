//! Saved disk states: the `disk<i>.blocks` file of a snapshot, and the
//! read-only layer a restore puts between the base image and a fork's overlay.
//!
//! File format (big-endian): magic `SBXBLK01`, block size (u64), block count
//! (u64), then `count` records of block index (u64) and the block's full
//! contents. Records are in no particular order; an index appears once.
//!
//! A fork reads the saved blocks from the file on demand (the page cache is
//! shared by every fork of one snapshot), so a restored disk costs no memory
//! for the snapshot's changes and its whole dirty budget stays its own.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::base::BaseImage;

const MAGIC: &[u8; 8] = b"SBXBLK01";
const HEADER: u64 = 24;

/// Why a saved-blocks file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: String, why: String },
}

/// Writes a saved-blocks file record by record; the header's count is
/// filled in by [`BlocksWriter::finish`], so a file cut short is never valid.
pub struct BlocksWriter {
    out: BufWriter<File>,
    block_size: u64,
    count: u64,
}

impl BlocksWriter {
    pub fn create(path: &Path, block_size: u64) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(MAGIC)?;
        out.write_all(&block_size.to_be_bytes())?;
        // The count: written last, so a file cut short does not parse.
        out.write_all(&u64::MAX.to_be_bytes())?;
        Ok(Self { out, block_size, count: 0 })
    }

    pub fn push(&mut self, idx: u64, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 != self.block_size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("block {idx} has {} bytes, not {}", data.len(), self.block_size)));
        }
        self.out.write_all(&idx.to_be_bytes())?;
        self.out.write_all(data)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the count, syncs the file and returns the block bytes written.
    pub fn finish(self) -> io::Result<u64> {
        let mut file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.seek(SeekFrom::Start(16))?;
        file.write_all(&self.count.to_be_bytes())?;
        file.sync_all()?;
        Ok(self.count * self.block_size)
    }
}

/// A snapshot's saved blocks over the image they were saved from: block
/// `i` reads from the file when the file holds it, from `lower` otherwise.
pub struct SavedLayer {
    file: File,
    lower: Arc<dyn BaseImage>,
    block_size: u64,
    /// Block index → offset of its bytes in the file.
    index: HashMap<u64, u64>,
    identity: String,
}

impl SavedLayer {
    /// Opens and checks `path`: the header, the length against the count,
    /// every index inside `lower` and none twice. Only the indices are read.
    pub fn open(path: &Path, block_size: u64, lower: Arc<dyn BaseImage>) -> Result<Self, SavedError> {
        let name = path.display().to_string();
        let io_err = |source| SavedError::Io { path: name.clone(), source };
        let corrupt = |why: String| SavedError::Corrupt { path: name.clone(), why };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let mut head = [0u8; HEADER as usize];
        file.read_exact_at(&mut head, 0).map_err(|_| corrupt("shorter than its header".into()))?;
        if &head[..8] != MAGIC {
            return Err(corrupt("wrong magic".into()));
        }
        let field = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().unwrap_or_default());
        let (bs, count) = (field(8), field(16));
        if bs != block_size {
            return Err(corrupt(format!("block size {bs}, the disk's is {block_size}")));
        }
        let record = 8 + bs;
        if count.checked_mul(record).and_then(|b| b.checked_add(HEADER)) != Some(len) {
            return Err(corrupt(format!("{count} blocks do not match its {len} bytes (truncated?)")));
        }
        let blocks = lower.size().div_ceil(bs);
        let mut index = HashMap::with_capacity(usize::try_from(count).unwrap_or(0));
        for k in 0..count {
            let at = HEADER + k * record;
            let mut idx = [0u8; 8];
            file.read_exact_at(&mut idx, at).map_err(io_err)?;
            let idx = u64::from_be_bytes(idx);
            if idx >= blocks {
                return Err(corrupt(format!("block {idx} is beyond the disk's {blocks} blocks")));
            }
            if index.insert(idx, at + 8).is_some() {
                return Err(corrupt(format!("block {idx} is saved twice")));
            }
        }
        let identity = format!("{}+{name}", lower.identity());
        Ok(Self { file, lower, block_size, index, identity })
    }

    /// The saved blocks' indices, in no particular order.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.keys().copied()
    }

    /// A saved block's full contents (`None`: not saved here).
    pub fn read_block(&self, idx: u64) -> io::Result<Option<Box<[u8]>>> {
        let Some(&at) = self.index.get(&idx) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; self.block_size as usize].into_boxed_slice();
        self.file.read_exact_at(&mut buf, at)?;
        Ok(Some(buf))
    }
}

impl BaseImage for SavedLayer {
    fn size(&self) -> u64 {
        self.lower.size()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        crate::base::check_range(self.size(), off, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let pos = off + done as u64;
            let (idx, within) = (pos / self.block_size, pos % self.block_size);
            let n = ((self.block_size - within) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            match self.index.get(&idx) {
                Some(&at) => self.file.read_exact_at(piece, at + within)?,
                None => self.lower.read_at(pos, piece)?,
            }
            done += n;
        }
        Ok(())
    }

    fn identity(&self) -> &str {
        &self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::MemBase;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sbx-saved-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("d.blocks")
    }

    fn lower() -> Arc<dyn BaseImage> {
        Arc::new(MemBase((0..4 * 4096u32).map(|i| (i % 251) as u8).collect()))
    }

    #[test]
    fn saved_blocks_shadow_the_lower_image_across_block_boundaries() {
        let p = tmp("layer");
        let mut w = BlocksWriter::create(&p, 4096).unwrap();
        w.push(2, &[7u8; 4096]).unwrap();
        w.push(0, &[1u8; 4096]).unwrap();
        assert_eq!(w.finish().unwrap(), 8192);
        let layer = SavedLayer::open(&p, 4096, lower()).unwrap();
        let mut blocks: Vec<u64> = layer.blocks().collect();
        blocks.sort_unstable();
        assert_eq!(blocks, [0, 2]);
        let mut buf = vec![0u8; 3 * 4096];
        layer.read_at(4000, &mut buf).unwrap();
        assert!(buf[..96].iter().all(|&b| b == 1), "block 0 from the file");
        let expect: Vec<u8> = (4096..8192u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(&buf[96..96 + 4096], &expect[..], "block 1 from the lower image");
        assert!(buf[96 + 4096..96 + 8192].iter().all(|&b| b == 7), "block 2 from the file");
        assert!(layer.read_at(4 * 4096 - 1, &mut [0u8; 2]).is_err(), "beyond the end");
        assert_eq!(layer.read_block(1).unwrap(), None);
        assert_eq!(&layer.read_block(2).unwrap().unwrap()[..], &[7u8; 4096][..]);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let p = tmp("bad");
        let mut w = BlocksWriter::create(&p, 4096).unwrap();
        w.push(1, &[0u8; 4096]).unwrap();
        w.finish().unwrap();
        let err = |p: &Path, bs| SavedLayer::open(p, bs, lower()).err().unwrap().to_string();
        assert!(err(&p, 8192).contains("block size"));
        let f = File::options().write(true).open(&p).unwrap();
        f.set_len(HEADER + 100).unwrap();
        assert!(err(&p, 4096).contains("truncated"));
        // A writer that never finished leaves a count that cannot match.
        let mut w = BlocksWriter::create(&p, 4096).unwrap();
        w.push(1, &[0u8; 4096]).unwrap();
        drop(w);
        assert!(err(&p, 4096).contains("truncated"));
        let mut w = BlocksWriter::create(&p, 4096).unwrap();
        w.push(9, &[0u8; 4096]).unwrap();
        w.finish().unwrap();
        assert!(err(&p, 4096).contains("beyond"));
        let mut w = BlocksWriter::create(&p, 4096).unwrap();
        w.push(1, &[0u8; 4096]).unwrap();
        w.push(1, &[0u8; 4096]).unwrap();
        w.finish().unwrap();
        assert!(err(&p, 4096).contains("twice"));
        assert!(BlocksWriter::create(&p, 4096).unwrap().push(0, &[0u8; 10]).is_err());
    }
}
