//! What a filesystem implementation answers: decoded FUSE operations in,
//! typed results out. The engine owns the FUSE wire format; a backend never
//! sees FUSE bytes. The operation and attribute types are the Node wire's
//! own (`sandbox-protocol`), so the helper's bridge sends them as they are.

use async_trait::async_trait;

/// A positive Linux errno value (`ENOENT` = 2…).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const EPROTO: Errno = Errno(libc::EPROTO);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);

    /// Any value outside 1..=4095 is not an errno the kernel accepts; map it to EIO.
    pub fn sanitized(self) -> Errno {
        if (1..4096).contains(&self.0) {
            self
        } else {
            Errno::EIO
        }
    }
}

/// Who asked (from the FUSE request header): new files get this owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

// The operations and results travel to Node as they are: they are wire types.
pub use sandbox_protocol::{Attr, DirEntry, NowMarker, Op, SetAttr, Statfs, Time};

/// A looked-up or created name: its node id and attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub node: u64,
    pub attr: Attr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Entry(Entry),
    Attr(Attr),
    Open { fh: u64 },
    Created { entry: Entry, fh: u64 },
    Data(Vec<u8>),
    Written(u32),
    Dir(Vec<DirEntry>),
    Statfs(Statfs),
    Empty,
}

/// A filesystem the engine serves. Calls may run concurrently; each must
/// finish (or fail) on its own — the engine applies no global lock.
#[async_trait]
pub trait FsBackend: Send + Sync + 'static {
    async fn call(&self, caller: Caller, op: Op) -> Result<Reply, Errno>;
    /// Answers at once on the caller's thread, for a backend whose calls are
    /// plain system calls (the helper's own host directory): the device then
    /// answers on its own thread, with no hop to the runtime. `Err(op)` gives
    /// the operation back for [`FsBackend::call`].
    fn call_now(&self, _caller: Caller, op: Op) -> Result<Result<Reply, Errno>, Op> {
        Err(op)
    }
    /// The kernel dropped `count` references to `node`; no answer is expected.
    fn forget(&self, node: u64, count: u64);
}
