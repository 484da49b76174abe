//! Helpers shared by the unit tests.

use std::io;
use std::sync::Arc;

use crate::base::{check_range, BaseImage};

pub(crate) struct MemBase(pub Vec<u8>);

impl BaseImage for MemBase {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size(), off, buf.len())?;
        let off = off as usize;
        buf.copy_from_slice(&self.0[off..off + buf.len()]);
        Ok(())
    }
    fn identity(&self) -> &str {
        "mem"
    }
}

/// Bytes that differ from block to block and within blocks.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

pub(crate) fn mem_base(len: usize) -> Arc<dyn BaseImage> {
    Arc::new(MemBase(pattern(len)))
}
