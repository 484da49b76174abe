//! Read-only base images.

mod qcow2;
mod raw;

pub use qcow2::{Qcow2Base, Qcow2Error};
pub use raw::RawBase;

use std::io;

/// A read-only disk image the overlay is layered on.
///
/// Implementations must be usable from several threads at once (`&self`), since
/// one base image may back several disks or connections.
pub trait BaseImage: Send + Sync {
    /// Virtual disk size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` with the bytes at `off`. Ranges beyond [`BaseImage::size`]
    /// are an error (`InvalidInput`), never silently zero-filled.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Caller-supplied identity of the image (e.g. sha256 of the file), so
    /// block stores can namespace or reject overlays of a different base.
    fn identity(&self) -> &str;
}

/// Reject a read that does not lie within `size`.
pub(crate) fn check_range(size: u64, off: u64, len: usize) -> io::Result<()> {
    match off.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("read of {len} bytes at {off} is beyond the image size {size}"),
        )),
    }
}
