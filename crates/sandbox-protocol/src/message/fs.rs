//! helper ⇄ Node: operations on a mount's JavaScript filesystem. These are
//! the FUSE engine's own typed operations (`sandbox-fs` decodes the FUSE
//! bytes), serialised as JSON; write and read data travel after the header.
//!
//! The engine builds these values itself, so they use plain Rust types; the
//! schema states the bounds Node checks (names ≤ 255 bytes, and like every
//! `u64` on the wire, numbers ≤ 2^53 − 1, the largest a JavaScript number
//! holds exactly: a guest asking beyond that gets EIO from Node).

use crate::bounded::I32In;
use serde::{Deserialize, Serialize};

/// Directory entries one READDIR answer may carry.
pub const MAX_DIR_ENTRIES: usize = 16 * 1024;

/// Attribute changes of a SETATTR; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetAttr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Milliseconds since the epoch (fractional), or `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<Time>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Time {
    Ms(f64),
    Now(NowMarker),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NowMarker {
    Now,
}

/// One operation, after decoding. Node ids are the backend's own
/// (1 = root); `fh` values are the backend's open handles.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum Op {
    Lookup { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String },
    Getattr {
        node: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fh: Option<u64>,
    },
    Setattr {
        node: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fh: Option<u64>,
        set: SetAttr,
    },
    Readlink { node: u64 },
    Symlink { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String, #[cfg_attr(feature = "schema", schemars(length(max = 4096)))] target: String },
    Mknod { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String, mode: u32, rdev: u32 },
    Mkdir { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String, mode: u32 },
    Unlink { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String },
    Rmdir { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String },
    Rename { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String, new_parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] new_name: String, flags: u32 },
    Link { node: u64, new_parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] new_name: String },
    Open { node: u64, flags: u32 },
    Create { parent: u64, #[cfg_attr(feature = "schema", schemars(length(max = 255)))] name: String, mode: u32, flags: u32 },
    Read { node: u64, fh: u64, offset: u64, size: u32 },
    /// The data travels next to the header, not in the JSON.
    Write {
        node: u64,
        fh: u64,
        offset: u64,
        #[serde(skip)]
        data: Vec<u8>,
    },
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirEntry {
    pub ino: u64,
    #[cfg_attr(feature = "schema", schemars(length(max = 255)))]
    pub name: String,
    /// `d_type` value (DT_REG = 8, DT_DIR = 4, DT_LNK = 10…).
    #[serde(rename = "type")]
    pub kind: u32,
    /// Offset of the *next* entry, passed back in the following READDIR.
    pub off: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// helper → Node (framed; write data follows the header): one operation on
/// mount number `mount`, asked by guest process `pid` as `uid`/`gid`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FsRequest {
    pub mount: u32,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub call: Op,
}

/// helper → Node, no answer: the guest kernel dropped `count` references to `node`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FsForget {
    pub mount: u32,
    pub node: u64,
    pub count: u64,
}

/// Node → helper (framed; read and readlink data follow the header): the
/// answer to one `FsRequest`, on its channel. Which result is valid depends on
/// the operation; the helper refuses any other (EIO for that operation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "result", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum FsReply {
    /// lookup, mknod, mkdir, symlink, link.
    Entry { node: u64, attr: Attr },
    /// getattr, setattr.
    Attr { attr: Attr },
    /// open, opendir.
    Open { fh: u64 },
    /// create.
    Created { node: u64, attr: Attr, fh: u64 },
    /// read, readlink: the bytes follow the header.
    Data,
    /// write: how many bytes were written.
    Written { size: u32 },
    /// readdir.
    Dir {
        #[cfg_attr(feature = "schema", schemars(length(max = 16384)))]
        entries: Vec<DirEntry>,
    },
    Statfs { statfs: Statfs },
    /// unlink, rmdir, rename, flush, fsync, release, releasedir.
    Done,
    /// The operation failed with this Linux errno.
    Error { errno: I32In<1, 4095> },
}
