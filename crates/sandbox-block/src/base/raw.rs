use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{check_range, BaseImage};

/// A raw image file: byte `n` of the disk is byte `n` of the file.
pub struct RawBase {
    file: File,
    size: u64,
    identity: String,
}

impl RawBase {
    pub fn open(path: &Path, identity: impl Into<String>) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            size,
            identity: identity.into(),
        })
    }
}

impl BaseImage for RawBase {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, off, buf.len())?;
        // pread: no shared file cursor, so concurrent readers need no lock.
        self.file.read_exact_at(buf, off)
    }

    fn identity(&self) -> &str {
        &self.identity
    }
}
