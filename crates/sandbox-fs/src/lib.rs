//! FUSE engine for guest filesystems implemented on the host.
//!
//! Layers, each usable on its own:
//! - [`abi`]: the FUSE wire format (bounded reader/writer, opcodes, flags);
//! - [`session`]: one FUSE session — decode a request, answer INIT and
//!   unsupported operations locally, forward the rest to an [`FsBackend`],
//!   encode the reply. Bytes in, bytes out: no VM needed to test it;
//! - [`device`]: a vhost-user-fs device (QEMU `vhost-user-fs-pci`) that feeds
//!   virtqueue chains through a session on its own runtime;
//! - [`host_dir`] (Linux): a host directory served by the helper itself.

pub mod abi;
pub mod backend;
pub mod device;
#[cfg(target_os = "linux")]
pub mod host_dir;
pub mod session;

pub use backend::{Attr, Caller, DirEntry, Entry, Errno, FsBackend, Op, Reply, SetAttr, Statfs, Time};
pub use session::{BackendCall, CachePolicy, Prepared, Session, MAX_WRITE};

#[cfg(test)]
mod tests;
