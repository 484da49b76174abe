//! Copy-on-write root disk for sandboxes.
//!
//! * [`base`] reads the built-in, read-only base images (QCOW2 or raw).
//! * [`overlay`] layers block-granular copy-on-write state over a base, with a
//!   dirty-bytes budget and an optional asynchronous [`overlay::BlockStore`].
//! * [`saved`] is a snapshot's saved disk state, and the layer a restore reads it through.
//! * [`nbd`] serves any [`Disk`] to a VMM (QEMU) over the NBD protocol.
//!
//! See README.md for the design and its limitations.

pub mod base;
mod cache;
pub mod disk;
pub mod nbd;
pub mod overlay;
pub mod saved;
#[cfg(test)]
mod testutil;

pub use base::{BaseImage, Qcow2Base, RawBase};
pub use disk::{Disk, DiskError, ReadOnlyDisk};
pub use overlay::{BlockStore, CowConfig, CowDisk, CowMode, MemBlockStore, Pinned, SavedBlock};
pub use saved::{BlocksWriter, SavedError, SavedLayer};
