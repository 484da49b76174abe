//! Directory listings for `fs.hostDir` mounts: every entry's name, inode
//! number and type from one sweep of `getdents`, so answering a guest readdir
//! costs no `lstat` per entry (Node's `readdir` cannot report inode numbers).
//! Tested from TypeScript (tests/unit/fs-host-dir-listing.test.ts): a napi
//! crate's own test binary cannot link without Node.

use napi::bindgen_prelude::{Float64Array, Uint32Array};
use napi_derive::napi;
use std::fs::{self, FileType, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, OpenOptionsExt};

#[napi(object)]
pub struct DirListing {
    /// Entry names without "." and "..", in the order the filesystem returned them.
    pub names: Vec<String>,
    /// Inode numbers, as `fs.Stats.ino` reports them (a double).
    pub inos: Float64Array,
    /// The `S_IFMT` bits of each entry, as in `fs.Stats.mode`.
    pub modes: Uint32Array,
}

/// Lists the directory `path` without following a symbolic link at its end.
/// Returns `None` on any failure: the caller then takes Node's own calls,
/// which report the errno the guest must see.
#[napi]
pub fn list_directory(path: String) -> Option<DirListing> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    // Reading through the descriptor lists exactly the directory checked
    // above, even if `path` is replaced meanwhile.
    let entries = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let mut names = Vec::new();
    let mut inos = Vec::new();
    let mut modes = Vec::new();
    for entry in entries {
        let entry = entry.ok()?;
        // Where d_type is DT_UNKNOWN, `file_type` falls back to one lstat.
        let kind = entry.file_type().ok()?;
        names.push(entry.file_name().to_string_lossy().into_owned());
        // Precision ends at 2^53, as in Node's own `Stats.ino`.
        inos.push(entry.ino() as f64);
        modes.push(type_bits(kind));
    }
    drop(dir);
    Some(DirListing { names, inos: Float64Array::new(inos), modes: Uint32Array::new(modes) })
}

fn type_bits(kind: FileType) -> u32 {
    let bits = if kind.is_dir() {
        libc::S_IFDIR
    } else if kind.is_file() {
        libc::S_IFREG
    } else if kind.is_symlink() {
        libc::S_IFLNK
    } else if kind.is_fifo() {
        libc::S_IFIFO
    } else if kind.is_socket() {
        libc::S_IFSOCK
    } else if kind.is_char_device() {
        libc::S_IFCHR
    } else if kind.is_block_device() {
        libc::S_IFBLK
    } else {
        0
    };
    // mode_t is u32 on Linux but u16 on macOS.
    #[allow(clippy::useless_conversion)]
    u32::from(bits)
}
