//! The block device interface the NBD server exports.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;

use crate::base::BaseImage;
use crate::overlay::StoreFailure;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("range {offset}+{len} is outside the disk")]
    OutOfRange { offset: u64, len: u64 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("the dirty-bytes budget is exhausted")]
    NoSpace,
    #[error("base image: {0}")]
    Base(#[from] io::Error),
    /// A store call this request needed failed (or answered nonsense).
    #[error("block store: {0}")]
    Store(StoreFailure),
    /// A flush reporting that an earlier background write-back failed: the
    /// blocks stayed dirty, but until this flush nobody had been told.
    #[error("block store: an earlier write-back failed: {0}")]
    WriteBack(StoreFailure),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl DiskError {
    /// The errno an NBD client should see for this error.
    pub fn nbd_errno(&self) -> u32 {
        match self {
            DiskError::OutOfRange { .. } | DiskError::Config(_) => crate::nbd::EINVAL,
            DiskError::ReadOnly => crate::nbd::EPERM,
            DiskError::NoSpace => crate::nbd::ENOSPC,
            DiskError::Base(_) | DiskError::Store(_) | DiskError::WriteBack(_) => crate::nbd::EIO,
        }
    }
}

/// A byte-addressed block device. Ranges are validated by the implementation
/// too, so callers other than the NBD server cannot corrupt state either.
#[async_trait]
pub trait Disk: Send + Sync {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Discard hint; implementations may ignore it.
    async fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Make every acknowledged write durable.
    async fn flush(&self) -> Result<(), DiskError>;
}

pub(crate) fn check_range(size: u64, offset: u64, len: u64) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfRange { offset, len }),
    }
}

/// Exports a base image as-is, read-only (for `rootfs.builtIn`).
pub struct ReadOnlyDisk {
    base: Arc<dyn BaseImage>,
}

impl ReadOnlyDisk {
    pub fn new(base: Arc<dyn BaseImage>) -> Self {
        Self { base }
    }
}

#[async_trait]
impl Disk for ReadOnlyDisk {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_only(&self) -> bool {
        true
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.size(), offset, buf.len() as u64)?;
        Ok(self.base.read_at(offset, buf)?)
    }

    async fn write(&self, _: u64, _: &[u8]) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }

    async fn write_zeroes(&self, _: u64, _: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }

    async fn trim(&self, _: u64, _: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }

    async fn flush(&self) -> Result<(), DiskError> {
        Ok(())
    }
}
