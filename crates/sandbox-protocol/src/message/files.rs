//! host → guest: `lane.fs`, file operations served by init itself (no guest
//! tools), one request per frame; the frame's channel is the request id and
//! the reply carries it back. Write data follows the request header, read
//! data the reply header. Paths are absolute guest paths.

use crate::bounded::{I32In, JsU64, Text, U32In};
use serde::{Deserialize, Serialize};

/// Largest data one Read may ask for or one Write may carry: large files
/// cross as a sequence of ranges, so no frame nears `MAX_PAYLOAD`.
pub const MAX_FILE_CHUNK: u32 = 512 * 1024;
/// Directory entries one Readdir reply may carry; the host asks for the next page.
pub const MAX_DIR_PAGE: usize = 1024;
/// Longest guest path (PATH_MAX).
pub const MAX_GUEST_PATH: usize = 4096;
/// Entries one Put may carry (their data together at most `MAX_FILE_CHUNK`).
pub const MAX_PUT_ENTRIES: usize = 1024;

/// An absolute guest path.
pub type GuestPath = Text<MAX_GUEST_PATH>;
/// Permission bits (`0o7777` at most).
pub type FileMode = U32In<0, 0o7777>;

/// host → guest: one file operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum FileRequest {
    /// Up to `length` bytes from `offset`; the reply is `data` (shorter at end of file).
    Read { path: GuestPath, offset: JsU64, length: U32In<0, MAX_FILE_CHUNK> },
    /// The bytes after the header at `offset`. `create` makes a missing file (with
    /// `mode`, exactly, when given), `truncate` empties it first, `createParents`
    /// makes missing parent directories (0755).
    Write {
        path: GuestPath,
        offset: JsU64,
        create: bool,
        truncate: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<FileMode>,
        create_parents: bool,
        /// Apply `mode` to an existing file too (uploads keep the source's mode).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force_mode: bool,
        /// After writing, set the file's access and modification time (ms since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ms: Option<JsU64>,
    },
    /// `stat` (`follow`) or `lstat`.
    Stat { path: GuestPath, follow: bool },
    /// Entries of a directory, sorted by name, from index `skip`.
    Readdir { path: GuestPath, skip: U32In<0, 0x7fff_ffff> },
    Mkdir {
        path: GuestPath,
        recursive: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<FileMode>,
    },
    /// Removes a file, link or empty directory; `recursive` removes a tree
    /// (never following links); `force` makes a missing path a success.
    Rm { path: GuestPath, recursive: bool, force: bool },
    Rename { from: GuestPath, to: GuestPath },
    /// chmod(2); follows links like the syscall.
    Chmod { path: GuestPath, mode: FileMode },
    /// A symbolic link at `path` pointing to `target` (any text, not checked).
    Symlink { target: GuestPath, path: GuestPath },
    Readlink { path: GuestPath },
    /// Sets access and modification time (ms since the epoch) of `path` itself, never following a link.
    Utimes { path: GuestPath, mtime_ms: JsU64 },
    /// Many small entries of an upload in one request, made in order; the data
    /// of the `file` entries follows the header, one after the other (their
    /// sizes add up to the data's length). Stops at the first failure.
    Put {
        #[cfg_attr(feature = "schema", schemars(length(max = 1024)))]
        entries: Vec<PutEntry>,
    },
}

/// One entry of a Put. `mode` is applied exactly (no umask), to an existing
/// file or directory too; `mtimeMs` is set last (on a link itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum PutEntry {
    /// Created or truncated, then its `size` bytes of the data written.
    File {
        path: GuestPath,
        mode: FileMode,
        size: U32In<0, MAX_FILE_CHUNK>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ms: Option<JsU64>,
    },
    /// mkdir -p (an existing directory is fine).
    Directory {
        path: GuestPath,
        mode: FileMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ms: Option<JsU64>,
    },
    /// A symbolic link to `target` (any text, not checked).
    Symlink {
        path: GuestPath,
        target: GuestPath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ms: Option<JsU64>,
    },
}

impl PutEntry {
    pub fn path(&self) -> &str {
        match self {
            PutEntry::File { path, .. } | PutEntry::Directory { path, .. } | PutEntry::Symlink { path, .. } => path,
        }
    }
}

/// What a directory entry, or a stat, is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum FileType {
    File,
    Directory,
    Symlink,
    BlockDevice,
    CharacterDevice,
    Fifo,
    Socket,
    Unknown,
}

/// What stat(2) said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileStat {
    #[serde(rename = "type")]
    pub kind: FileType,
    /// Permission bits.
    pub mode: FileMode,
    pub size: JsU64,
    pub uid: u32,
    pub gid: u32,
    pub nlink: JsU64,
    pub ino: JsU64,
    /// Milliseconds since the epoch (whole), and the nanoseconds within that millisecond.
    pub mtime_ms: JsU64,
    pub mtime_ns: U32In<0, 999_999>,
    pub atime_ms: JsU64,
    pub ctime_ms: JsU64,
}

/// One directory entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileDirEntry {
    /// One path component (never `.`, `..`, empty or containing `/`). A name that
    /// is not UTF-8 is sent with U+FFFD in place of the bad bytes.
    pub name: Text<255>,
    #[serde(rename = "type")]
    pub kind: FileType,
}

/// guest → host: the answer to one FileRequest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "result", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum FileReply {
    /// The operation failed with this errno (`code` is its name, e.g. `ENOENT`);
    /// for a Put, `entry` is the index of the entry that failed.
    Error {
        code: Text<32>,
        errno: I32In<1, 4095>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry: Option<U32In<0, 1023>>,
    },
    /// Read data follows; `eof` when the file ends within the range.
    Data { eof: bool },
    /// Write, mkdir, rm, rename, chmod, symlink succeeded.
    Done {},
    Stat { stat: FileStat },
    /// At most `MAX_DIR_PAGE` entries; `more` when the directory has entries after them.
    Dir {
        #[cfg_attr(feature = "schema", schemars(length(max = 1024)))]
        entries: Vec<FileDirEntry>,
        more: bool,
    },
    Link { target: GuestPath },
}

impl FileRequest {
    /// The reply results this request may get (besides `error`), and the most data it may carry.
    pub fn expects(&self) -> (&'static str, u32) {
        match self {
            FileRequest::Read { length, .. } => ("data", length.get()),
            FileRequest::Stat { .. } => ("stat", 0),
            FileRequest::Readdir { .. } => ("dir", 0),
            FileRequest::Readlink { .. } => ("link", 0),
            _ => ("done", 0),
        }
    }
}

impl FileReply {
    /// The `result` tag of this reply.
    pub fn result(&self) -> &'static str {
        match self {
            FileReply::Error { .. } => "error",
            FileReply::Data { .. } => "data",
            FileReply::Done {} => "done",
            FileReply::Stat { .. } => "stat",
            FileReply::Dir { .. } => "dir",
            FileReply::Link { .. } => "link",
        }
    }
}

/// Whether `name` can be one component of a path.
pub fn is_entry_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}
