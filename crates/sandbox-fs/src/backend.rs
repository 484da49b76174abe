//! What a filesystem implementation answers: decoded FUSE operations in,
//! typed results out. The engine owns the wire format; a backend never sees
//! FUSE bytes, and the Node bridge serialises these types as JSON.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Attribute changes of a SETATTR; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SetAttr {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Milliseconds since the epoch (fractional), or `now`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atime: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<Time>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Time {
    Ms(f64),
    Now(NowMarker),
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum NowMarker {
    Now,
}

/// One operation, after decoding. Node ids are the backend's own
/// (1 = root); `fh` values are the backend's open handles.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Op {
    Lookup { parent: u64, name: String },
    Getattr { node: u64, #[serde(skip_serializing_if = "Option::is_none")] fh: Option<u64> },
    Setattr { node: u64, #[serde(skip_serializing_if = "Option::is_none")] fh: Option<u64>, set: SetAttr },
    Readlink { node: u64 },
    Symlink { parent: u64, name: String, target: String },
    Mknod { parent: u64, name: String, mode: u32, rdev: u32 },
    Mkdir { parent: u64, name: String, mode: u32 },
    Unlink { parent: u64, name: String },
    Rmdir { parent: u64, name: String },
    Rename { parent: u64, name: String, new_parent: u64, new_name: String, flags: u32 },
    Link { node: u64, new_parent: u64, new_name: String },
    Open { node: u64, flags: u32 },
    Create { parent: u64, name: String, mode: u32, flags: u32 },
    Read { node: u64, fh: u64, offset: u64, size: u32 },
    /// The data travels next to the header, not in the JSON.
    Write { node: u64, fh: u64, offset: u64, #[serde(skip)] data: Vec<u8> },
    Flush { node: u64, fh: u64 },
    Fsync { node: u64, fh: u64, datasync: bool },
    Release { node: u64, fh: u64 },
    Opendir { node: u64 },
    Readdir { node: u64, fh: u64, offset: u64, size: u32 },
    Releasedir { node: u64, fh: u64 },
    Statfs { node: u64 },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Lookup { .. } => "lookup",
            Op::Getattr { .. } => "getattr",
            Op::Setattr { .. } => "setattr",
            Op::Readlink { .. } => "readlink",
            Op::Symlink { .. } => "symlink",
            Op::Mknod { .. } => "mknod",
            Op::Mkdir { .. } => "mkdir",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Open { .. } => "open",
            Op::Create { .. } => "create",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Flush { .. } => "flush",
            Op::Fsync { .. } => "fsync",
            Op::Release { .. } => "release",
            Op::Opendir { .. } => "opendir",
            Op::Readdir { .. } => "readdir",
            Op::Releasedir { .. } => "releasedir",
            Op::Statfs { .. } => "statfs",
        }
    }
}

/// File attributes as a backend reports them (times in fractional ms, like `fs.Stats`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime_ms: f64,
    pub mtime_ms: f64,
    pub ctime_ms: f64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub node: u64,
    pub attr: Attr,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    /// `d_type` value (DT_REG = 8, DT_DIR = 4, DT_LNK = 10…).
    #[serde(rename = "type")]
    pub kind: u32,
    /// Offset of the *next* entry, passed back in the following READDIR.
    pub off: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
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
    /// The kernel dropped `count` references to `node`; no answer is expected.
    fn forget(&self, node: u64, count: u64);
}
