//! `fs.hostDir` served by the helper itself: a passthrough [`FsBackend`] over
//! one host directory, answered on the device's own thread (no hop to Node),
//! as the C virtiofsd answers. Semantics are those of the JavaScript
//! `fs.hostDir` it replaces (see docs/decisions.md, "Issue 19: `fs.hostDir`
//! in the helper"):
//! - confinement by the kernel: every path is resolved beneath the root with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and final names are used
//!   with the no-follow form of each call, so no symbolic link is ever
//!   followed on the host and no path leaves the root; a guest symlink is
//!   stored as text and resolved by the guest kernel;
//! - names are single components ("", ".", "..", "/" and NUL refused);
//! - node ids are path-based ([`nodes`]), as the JavaScript mounts' are;
//! - files keep the host's owners (no chown); new files and directories get
//!   exactly the mode the guest asked for;
//! - read-only mounts refuse every change with EROFS;
//! - only regular files are handed to the guest: an open is made with
//!   `O_NONBLOCK` and refused (EPERM) unless it found a regular file, so a host
//!   FIFO never blocks the device thread (the guest cannot create FIFOs or
//!   devices: MKNOD makes regular files only).
//!
//! Limit (as for any path-based server, virtiofsd included): another host
//! process moving directories under the root at the same time is outside the
//! model; the kernel checks still keep every open beneath the root.

mod nodes;
mod sys;

use crate::backend::{Attr, Caller, DirEntry, Entry, Errno, FsBackend, Op, Reply, SetAttr, Statfs, Time};
use async_trait::async_trait;
use nodes::{child, Nodes};
#[cfg(test)]
use nodes::ROOT as ROOT_ID;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};
use sys::SetTime;

/// Node ids the guest may hold at once (each is a path string here).
const MAX_NODES: usize = 1 << 20;
/// Files and directories the guest may hold open at once on one mount: each
/// open file is a host descriptor, and the helper's descriptors are shared
/// with its network and disks.
const MAX_HANDLES: usize = 4096;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum HostDirError {
    #[error("host directory {path}: {errno}")]
    Open { path: String, errno: i32 },
    #[error("host directory {0}: not an absolute path")]
    Relative(String),
}

struct OpenFile {
    file: Arc<File>,
    node: u64,
}

#[derive(Default)]
struct Handles {
    files: HashMap<u64, OpenFile>,
    /// A snapshot of each open directory taken at opendir ("." and ".." first).
    dirs: HashMap<u64, Arc<Vec<DirEntry>>>,
    next: u64,
}

/// One host directory as a guest filesystem.
pub struct HostDir {
    root: OwnedFd,
    read_only: bool,
    nodes: Mutex<Nodes>,
    handles: Mutex<Handles>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A name the guest asks for in a directory: one component, never "." or "..".
fn name(n: &str) -> Result<CString, Errno> {
    if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.len() > 255 {
        return Err(Errno::EINVAL);
    }
    sys::cstr(n)
}

/// A path relative to the root, for openat2 ("" is the root itself).
fn rel(path: &str) -> Result<CString, Errno> {
    sys::cstr(if path.is_empty() { "." } else { path })
}

fn ms(sec: i64, nsec: i64) -> f64 {
    sec as f64 * 1000.0 + nsec as f64 / 1e6
}

fn attr_of(st: &libc::stat) -> Attr {
    Attr {
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime_ms: ms(st.st_atime, st.st_atime_nsec),
        mtime_ms: ms(st.st_mtime, st.st_mtime_nsec),
        ctime_ms: ms(st.st_ctime, st.st_ctime_nsec),
        mode: st.st_mode,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: u32::try_from(st.st_rdev).unwrap_or(0),
    }
}

fn set_time(t: Option<Time>) -> SetTime {
    match t {
        None => SetTime::Keep,
        Some(Time::Now(_)) => SetTime::Now,
        Some(Time::Ms(v)) if v.is_finite() && v >= 0.0 => {
            let sec = (v / 1000.0).floor();
            let nsec = ((v - sec * 1000.0) * 1e6).round().clamp(0.0, 999_999_999.0);
            SetTime::At(sec as i64, nsec as i64)
        }
        Some(Time::Ms(_)) => SetTime::At(0, 0),
    }
}

impl HostDir {
    /// Serves the directory at `path` (absolute; the host resolved it).
    pub fn open(path: &str, read_only: bool) -> Result<Self, HostDirError> {
        if !path.starts_with('/') {
            return Err(HostDirError::Relative(path.to_owned()));
        }
        let c = sys::cstr(path).map_err(|e| HostDirError::Open { path: path.to_owned(), errno: e.0 })?;
        let root = sys::open_root(&c).map_err(|e| HostDirError::Open { path: path.to_owned(), errno: e.0 })?;
        // The kernel must have openat2 (5.6+): without it nothing could be confined.
        sys::open_beneath(root.as_fd(), c".", libc::O_PATH, 0).map_err(|e| HostDirError::Open { path: path.to_owned(), errno: e.0 })?;
        Ok(Self { root, read_only, nodes: Mutex::new(Nodes::new(MAX_NODES)), handles: Mutex::new(Handles { next: 1, ..Handles::default() }) })
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn path(&self, node: u64) -> Result<String, Errno> {
        lock(&self.nodes).path(node).map(str::to_owned)
    }

    /// Opens `path` (relative to the root) with `flags`, confined.
    fn open_path(&self, path: &str, flags: libc::c_int) -> Result<OwnedFd, Errno> {
        sys::open_beneath(self.root.as_fd(), &rel(path)?, flags, 0)
    }

    /// The directory `node` as an `O_PATH` descriptor and the path of `name` in it.
    fn dir_of(&self, node: u64, n: &str) -> Result<(OwnedFd, CString, String), Errno> {
        let c = name(n)?;
        let parent = self.path(node)?;
        let fd = self.open_path(&parent, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok((fd, c, child(&parent, n)))
    }

    /// The parent directory of `path` and its last component.
    fn split(&self, path: &str) -> Result<(OwnedFd, CString), Errno> {
        let (dir, last) = path.rsplit_once('/').unwrap_or(("", path));
        if last.is_empty() {
            return Err(Errno::EINVAL); // the root has no parent here
        }
        Ok((self.open_path(dir, libc::O_PATH | libc::O_DIRECTORY)?, name(last)?))
    }

    fn lstat(&self, path: &str) -> Result<libc::stat, Errno> {
        if path.is_empty() {
            return sys::fstat(self.root.as_fd());
        }
        let (dir, last) = self.split(path)?;
        sys::lstat_at(dir.as_fd(), &last)
    }

    fn entry(&self, path: &str) -> Result<Reply, Errno> {
        let st = self.lstat(path)?;
        let node = lock(&self.nodes).lookup(path)?;
        Ok(Reply::Entry(Entry { node, attr: attr_of(&st) }))
    }

    fn open_file_of(&self, node: u64) -> Option<Arc<File>> {
        lock(&self.handles).files.values().find(|f| f.node == node).map(|f| f.file.clone())
    }

    fn file(&self, fh: u64) -> Result<Arc<File>, Errno> {
        lock(&self.handles).files.get(&fh).map(|f| f.file.clone()).ok_or(Errno::EBADF)
    }

    fn add_handle(&self, h: &mut Handles) -> Result<u64, Errno> {
        if h.files.len() + h.dirs.len() >= MAX_HANDLES {
            return Err(Errno(libc::ENFILE));
        }
        let fh = h.next;
        h.next += 1;
        Ok(fh)
    }

    fn add_file(&self, file: File, node: u64) -> Result<u64, Errno> {
        let mut h = lock(&self.handles);
        let fh = self.add_handle(&mut h)?;
        h.files.insert(fh, OpenFile { file: Arc::new(file), node });
        Ok(fh)
    }

    /// Attributes of `node`: by path, or through an open handle once the path is gone.
    fn stat_node(&self, node: u64, fh: Option<u64>) -> Result<libc::stat, Errno> {
        if let Some(file) = fh.and_then(|fh| self.file(fh).ok()) {
            return sys::fstat(file.as_fd());
        }
        let by_path = match self.path(node) {
            Ok(path) => self.lstat(&path),
            Err(e) => Err(e),
        };
        match by_path {
            Err(e) if e == Errno::ENOENT => match self.open_file_of(node) {
                Some(file) => sys::fstat(file.as_fd()),
                None => Err(e),
            },
            other => other,
        }
    }

    /// Opens a regular file (only), non-blocking so a FIFO cannot stall the device thread.
    fn open_regular(&self, path: &str, access: libc::c_int) -> Result<File, Errno> {
        let fd = self.open_path(path, access | libc::O_NONBLOCK | libc::O_NOFOLLOW)?;
        let file = sys::file(fd);
        let st = sys::fstat(file.as_fd())?;
        match st.st_mode & S_IFMT {
            S_IFREG => Ok(file),
            S_IFDIR => Err(Errno(libc::EISDIR)),
            _ => Err(Errno::EPERM),
        }
    }

    /// Gives a new file or directory exactly `mode` (the helper's umask may have cut bits).
    fn exact_mode(&self, dir: &OwnedFd, n: &CString, st: &libc::stat, mode: u32) -> Result<(), Errno> {
        if st.st_mode & 0o7777 != mode & 0o7777 && st.st_mode & S_IFMT != S_IFLNK {
            sys::chmod_at(dir.as_fd(), n, mode)?;
        }
        Ok(())
    }

    fn setattr(&self, node: u64, fh: Option<u64>, set: SetAttr) -> Result<Reply, Errno> {
        self.writable()?;
        if set.uid.is_some() || set.gid.is_some() {
            return Err(Errno::EPERM); // a host directory keeps the host's owners
        }
        // A node removed while open is reached through its handle.
        let open = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(f) => Some(f),
            None if lock(&self.nodes).is_detached(node) => self.open_file_of(node),
            None => None,
        };
        let path = if open.is_some() && lock(&self.nodes).is_detached(node) { None } else { Some(self.path(node)?) };
        let at = |path: &str| -> Result<(OwnedFd, CString), Errno> {
            if path.is_empty() {
                Ok((self.open_path("", libc::O_PATH | libc::O_DIRECTORY)?, CString::from(c".")))
            } else {
                self.split(path)
            }
        };
        if let Some(mode) = set.mode {
            match (&path, &open) {
                (Some(p), _) => {
                    let (dir, n) = at(p)?;
                    sys::chmod_at(dir.as_fd(), &n, mode)?;
                }
                (None, Some(f)) => sys::fchmod(f, mode)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        if let Some(size) = set.size {
            match &open {
                Some(f) => f.set_len(size).map_err(io_errno)?,
                None => {
                    let p = path.as_deref().ok_or(Errno::ENOENT)?;
                    self.open_regular(p, libc::O_WRONLY)?.set_len(size).map_err(io_errno)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let (a, m) = (set_time(set.atime), set_time(set.mtime));
            match (&path, &open) {
                (Some(p), _) => {
                    let (dir, n) = at(p)?;
                    sys::utimes_at(dir.as_fd(), &n, a, m)?;
                }
                (None, Some(f)) => sys::futimens(f, a, m)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        let st = match (&path, &open) {
            (None, Some(f)) => sys::fstat(f.as_fd())?,
            _ => self.stat_node(node, fh)?,
        };
        Ok(Reply::Attr(attr_of(&st)))
    }

    fn rename(&self, parent: u64, n: &str, new_parent: u64, new_name: &str, flags: u32) -> Result<Reply, Errno> {
        self.writable()?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 || flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(Errno::EINVAL);
        }
        let (from_dir, from_c, from) = self.dir_of(parent, n)?;
        let (to_dir, to_c, to) = self.dir_of(new_parent, new_name)?;
        // The kernel applies every POSIX rule (into itself, non-empty, dir over file…).
        sys::rename_at(from_dir.as_fd(), &from_c, to_dir.as_fd(), &to_c, flags)?;
        let mut nodes = lock(&self.nodes);
        if flags & RENAME_EXCHANGE != 0 {
            nodes.exchange(&from, &to);
        } else {
            nodes.rename(&from, &to);
        }
        Ok(Reply::Empty)
    }

    fn remove(&self, parent: u64, n: &str, dir: bool) -> Result<Reply, Errno> {
        self.writable()?;
        let (at, c, path) = self.dir_of(parent, n)?;
        sys::unlink_at(at.as_fd(), &c, dir)?;
        lock(&self.nodes).detach(&path);
        Ok(Reply::Empty)
    }

    fn opendir(&self, node: u64) -> Result<Reply, Errno> {
        let path = self.path(node)?;
        let fd = self.open_path(&path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        let here = sys::fstat(fd.as_fd())?;
        // ".." of the root is the root itself: nothing above it is shown.
        let up = if path.is_empty() { here.st_ino } else { sys::lstat_at(fd.as_fd(), c"..").map(|s| s.st_ino).unwrap_or(here.st_ino) };
        let listed = sys::list(fd)?;
        let mut entries = Vec::with_capacity(listed.len() + 2);
        entries.push(DirEntry { ino: here.st_ino, name: ".".into(), kind: 4, off: 1 });
        entries.push(DirEntry { ino: up, name: "..".into(), kind: 4, off: 2 });
        for l in listed {
            let off = entries.len() as u64 + 1;
            entries.push(DirEntry { ino: l.ino, name: l.name, kind: u32::from(l.kind), off });
        }
        let mut h = lock(&self.handles);
        let fh = self.add_handle(&mut h)?;
        h.dirs.insert(fh, Arc::new(entries));
        Ok(Reply::Open { fh })
    }

    fn readdir(&self, fh: u64, offset: u64, size: u32) -> Result<Reply, Errno> {
        let dir = lock(&self.handles).dirs.get(&fh).cloned().ok_or(Errno::EBADF)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(dir.len());
        // Each entry takes at least 32 bytes of the guest's buffer; the engine packs to `size`.
        let max = (size as usize / 32).clamp(1, sandbox_protocol::MAX_DIR_ENTRIES);
        let end = start.saturating_add(max).min(dir.len());
        Ok(Reply::Dir(dir[start..end].to_vec()))
    }

    fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Reply, Errno> {
        let file = self.file(fh)?;
        let size = size.min(crate::MAX_WRITE) as usize;
        let mut buf = vec![0u8; size];
        let mut got = 0;
        while got < size {
            match file.read_at(&mut buf[got..], offset.saturating_add(got as u64)) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_errno(e)),
            }
        }
        buf.truncate(got);
        Ok(Reply::Data(buf))
    }

    fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<Reply, Errno> {
        self.writable()?;
        let file = self.file(fh)?;
        let mut done = 0;
        while done < data.len() {
            match file.write_at(&data[done..], offset.saturating_add(done as u64)) {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_errno(e)),
            }
        }
        Ok(Reply::Written(u32::try_from(done).map_err(|_| Errno::EIO)?))
    }

    /// Answers one operation (synchronous system calls only).
    pub fn answer(&self, op: Op) -> Result<Reply, Errno> {
        match op {
            Op::Lookup { parent, name: n } => {
                let (dir, c, path) = self.dir_of(parent, &n)?;
                let st = sys::lstat_at(dir.as_fd(), &c)?;
                let node = lock(&self.nodes).lookup(&path)?;
                Ok(Reply::Entry(Entry { node, attr: attr_of(&st) }))
            }
            Op::Getattr { node, fh } => Ok(Reply::Attr(attr_of(&self.stat_node(node, fh)?))),
            Op::Setattr { node, fh, set } => self.setattr(node, fh, set),
            Op::Readlink { node } => {
                let path = self.path(node)?;
                let (dir, n) = self.split(&path)?;
                Ok(Reply::Data(sys::readlink_at(dir.as_fd(), &n)?))
            }
            Op::Symlink { parent, name: n, target } => {
                self.writable()?;
                let (dir, c, path) = self.dir_of(parent, &n)?;
                if target.is_empty() || target.len() >= libc::PATH_MAX as usize {
                    return Err(Errno(libc::ENAMETOOLONG));
                }
                sys::symlink_at(&sys::cstr(&target)?, dir.as_fd(), &c)?;
                self.entry(&path)
            }
            Op::Mknod { parent, name: n, mode, .. } => {
                self.writable()?;
                if mode & S_IFMT != S_IFREG {
                    return Err(Errno::EPERM); // only regular files: no FIFOs or devices on the host
                }
                let (dir, c, path) = self.dir_of(parent, &n)?;
                let fd = sys::open_beneath(dir.as_fd(), &c, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW, mode)?;
                let st = sys::fstat(fd.as_fd())?;
                drop(fd);
                self.exact_mode(&dir, &c, &st, mode)?;
                self.entry(&path)
            }
            Op::Mkdir { parent, name: n, mode } => {
                self.writable()?;
                let (dir, c, path) = self.dir_of(parent, &n)?;
                sys::mkdir_at(dir.as_fd(), &c, mode & 0o7777)?;
                let st = sys::lstat_at(dir.as_fd(), &c)?;
                self.exact_mode(&dir, &c, &st, mode)?;
                self.entry(&path)
            }
            Op::Unlink { parent, name: n } => self.remove(parent, &n, false),
            Op::Rmdir { parent, name: n } => self.remove(parent, &n, true),
            Op::Rename { parent, name: n, new_parent, new_name, flags } => self.rename(parent, &n, new_parent, &new_name, flags),
            Op::Link { node, new_parent, new_name } => {
                self.writable()?;
                let existing = self.path(node)?;
                let (from_dir, from) = self.split(&existing)?;
                let (to_dir, to_c, path) = self.dir_of(new_parent, &new_name)?;
                sys::link_at(from_dir.as_fd(), &from, to_dir.as_fd(), &to_c)?;
                self.entry(&path)
            }
            Op::Open { node, flags } => {
                // Writes carry explicit offsets (the guest kernel resolves O_APPEND) and
                // truncation arrives as a setattr: only the access mode matters.
                let access = (flags & 3) as libc::c_int;
                if access != libc::O_RDONLY {
                    self.writable()?;
                }
                let path = self.path(node)?;
                let file = self.open_regular(&path, access)?;
                Ok(Reply::Open { fh: self.add_file(file, node)? })
            }
            Op::Create { parent, name: n, mode, flags } => {
                self.writable()?;
                let (dir, c, path) = self.dir_of(parent, &n)?;
                let access = (flags & 3) as libc::c_int;
                let excl = if flags & libc::O_EXCL.unsigned_abs() != 0 { libc::O_EXCL } else { 0 };
                let fd = sys::open_beneath(dir.as_fd(), &c, libc::O_CREAT | excl | access | libc::O_NOFOLLOW | libc::O_NONBLOCK, mode)?;
                let file = sys::file(fd);
                let mut st = sys::fstat(file.as_fd())?;
                if st.st_mode & S_IFMT != S_IFREG {
                    return Err(Errno::EPERM);
                }
                if st.st_mode & 0o7777 != mode & 0o7777 {
                    sys::fchmod(&file, mode)?;
                    st = sys::fstat(file.as_fd())?;
                }
                let node = lock(&self.nodes).lookup(&path)?;
                let fh = self.add_file(file, node)?;
                Ok(Reply::Created { entry: Entry { node, attr: attr_of(&st) }, fh })
            }
            Op::Read { fh, offset, size, .. } => self.read(fh, offset, size),
            Op::Write { fh, offset, data, .. } => self.write(fh, offset, &data),
            Op::Flush { fh, .. } => self.file(fh).map(|_| Reply::Empty),
            Op::Fsync { fh, datasync, .. } => {
                let file = self.file(fh)?;
                if datasync { file.sync_data() } else { file.sync_all() }.map_err(io_errno)?;
                Ok(Reply::Empty)
            }
            Op::Release { fh, .. } => {
                let closed = lock(&self.handles).files.remove(&fh);
                drop(closed); // closes the descriptor (last holder), outside the lock
                Ok(Reply::Empty)
            }
            Op::Opendir { node } => self.opendir(node),
            Op::Readdir { fh, offset, size, .. } => self.readdir(fh, offset, size),
            Op::Releasedir { fh, .. } => {
                lock(&self.handles).dirs.remove(&fh);
                Ok(Reply::Empty)
            }
            Op::Statfs { .. } => {
                let s = sys::statfs(self.root.as_fd())?;
                Ok(Reply::Statfs(Statfs {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: u32::try_from(s.f_bsize).unwrap_or(4096),
                    namelen: u32::try_from(s.f_namemax).unwrap_or(255),
                }))
            }
        }
    }

    /// Node ids held now (for tests and diagnostics).
    pub fn nodes_held(&self) -> usize {
        lock(&self.nodes).len()
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

#[async_trait]
impl FsBackend for HostDir {
    async fn call(&self, _caller: Caller, op: Op) -> Result<Reply, Errno> {
        self.answer(op)
    }

    fn call_now(&self, _caller: Caller, op: Op) -> Result<Result<Reply, Errno>, Op> {
        Ok(self.answer(op))
    }

    fn forget(&self, node: u64, count: u64) {
        lock(&self.nodes).forget(node, count);
    }
}

#[cfg(test)]
mod tests;
