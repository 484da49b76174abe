//! Writes the merged tree as one tar stream in the form `mke2fs -d -`
//! (e2fsprogs' libarchive reader) consumes: parents before children, a
//! hardlink's metadata equal to its target's (mke2fs applies every entry's
//! stat to the shared inode), security.capability as a PAX xattr (the only
//! one mke2fs copies from a tarball; the rest go to `debugfs`, see ext4.rs).

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The xattr mke2fs copies itself; everything else is applied afterwards.
pub const CAPABILITY_XATTR: &str = "security.capability";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits incl. setuid/setgid/sticky (no file type).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// What a directory we had to invent (a layer named `a/b/c` but not `a/b`) gets.
    pub fn implied_dir() -> Meta {
        Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Special {
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

pub struct Emitter<W: Write> {
    builder: tar::Builder<W>,
    entries: u64,
}

fn path(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

impl<W: Write> Emitter<W> {
    pub fn new(out: W) -> Emitter<W> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        Emitter { builder, entries: 0 }
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn header(&mut self, meta: &Meta, kind: tar::EntryType, size: u64) -> io::Result<tar::Header> {
        if let Some((_, value)) = meta.xattrs.iter().find(|(n, _)| n == CAPABILITY_XATTR) {
            let key = format!("SCHILY.xattr.{CAPABILITY_XATTR}");
            self.builder.append_pax_extensions([(key.as_str(), value.as_slice())])?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode & 0o7777);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(meta.mtime);
        h.set_size(size);
        self.entries += 1;
        Ok(h)
    }

    /// The root directory's own metadata (`./`).
    pub fn root(&mut self, meta: &Meta) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Directory, 0)?;
        h.as_old_mut().name[..2].copy_from_slice(b"./");
        h.set_cksum();
        self.builder.append(&h, io::empty())
    }

    pub fn dir(&mut self, p: &[u8], meta: &Meta) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Directory, 0)?;
        self.builder.append_data(&mut h, path(p), io::empty())
    }

    pub fn file(&mut self, p: &[u8], meta: &Meta, size: u64, data: impl Read) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Regular, size)?;
        self.builder.append_data(&mut h, path(p), data)
    }

    pub fn symlink(&mut self, p: &[u8], meta: &Meta, target: &[u8]) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Symlink, 0)?;
        self.builder.append_link(&mut h, path(p), path(target))
    }

    /// `p` becomes another name of the inode already written at `target`.
    pub fn hardlink(&mut self, p: &[u8], meta: &Meta, target: &[u8]) -> io::Result<()> {
        let meta = Meta { xattrs: Vec::new(), ..meta.clone() };
        let mut h = self.header(&meta, tar::EntryType::Link, 0)?;
        self.builder.append_link(&mut h, path(p), path(target))
    }

    pub fn special(&mut self, p: &[u8], meta: &Meta, special: &Special) -> io::Result<()> {
        let (kind, dev) = match special {
            Special::Char(a, b) => (tar::EntryType::Char, Some((*a, *b))),
            Special::Block(a, b) => (tar::EntryType::Block, Some((*a, *b))),
            Special::Fifo => (tar::EntryType::Fifo, None),
        };
        let mut h = self.header(meta, kind, 0)?;
        if let Some((major, minor)) = dev {
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
        }
        self.builder.append_data(&mut h, path(p), io::empty())
    }

    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}
