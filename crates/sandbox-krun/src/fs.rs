//! Virtual filesystems on the krun backend: msb_krun's `DynFileSystem`
//! (libkrun's in-process virtio-fs hook, `FsBuilder::custom`) answered by the
//! same [`FsBackend`] the QEMU backend's vhost-user device uses.
//!
//! libkrun calls these methods synchronously on its virtio-fs worker; each
//! one blocks on the backend's future on `rt`. Data moves through a small
//! memfd because libkrun's zero-copy reader/writer only move bytes to and
//! from files.

// stat64/Context field types differ between Linux and macOS: the casts are needed on one of them.
#![allow(clippy::unnecessary_cast)]

use msb_krun::backends::fs::{
    stat64, statvfs64, Context, DirEntry as KrunDirEntry, DynFileSystem, Entry as KrunEntry, Extensions, FsOptions,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use msb_krun_devices::virtio::fs::AddDirEntry;
use sandbox_fs::backend::NowMarker;
use sandbox_fs::{Attr, CachePolicy, Caller, Entry, Errno, FsBackend, Op, Reply, SetAttr, Time};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

/// A [`DynFileSystem`] over any [`FsBackend`].
pub struct KrunFs<B: FsBackend> {
    backend: Arc<B>,
    rt: tokio::runtime::Handle,
    cache: CachePolicy,
}

impl<B: FsBackend> KrunFs<B> {
    pub fn new(backend: Arc<B>, rt: tokio::runtime::Handle, cache: CachePolicy) -> Self {
        Self { backend, rt, cache }
    }

    fn call(&self, ctx: &Context, op: Op) -> io::Result<Reply> {
        let caller = Caller { uid: ctx.uid as u32, gid: ctx.gid as u32, pid: ctx.pid as u32 };
        let result = match self.backend.call_now(caller, op) {
            Ok(now) => now,
            Err(op) => self.rt.block_on(self.backend.call(caller, op)),
        };
        result.map_err(|e| io::Error::from_raw_os_error(e.sanitized().0))
    }

    fn entry(&self, ctx: &Context, op: Op) -> io::Result<KrunEntry> {
        match self.call(ctx, op)? {
            Reply::Entry(e) => Ok(self.krun_entry(&e)),
            _ => Err(eio()),
        }
    }

    fn krun_entry(&self, e: &Entry) -> KrunEntry {
        KrunEntry {
            inode: e.node,
            generation: 0,
            attr: to_stat(&e.attr),
            attr_flags: 0,
            attr_timeout: self.attr_timeout(&e.attr),
            entry_timeout: self.cache.entry_timeout,
        }
    }

    fn attr_timeout(&self, a: &Attr) -> Duration {
        if a.mode & 0o170000 == 0o040000 {
            self.cache.dir_attr_timeout
        } else {
            self.cache.attr_timeout
        }
    }

    fn attr(&self, ctx: &Context, op: Op) -> io::Result<(stat64, Duration)> {
        match self.call(ctx, op)? {
            Reply::Attr(a) => Ok((to_stat(&a), self.attr_timeout(&a))),
            _ => Err(eio()),
        }
    }

    fn empty(&self, ctx: &Context, op: Op) -> io::Result<()> {
        self.call(ctx, op).map(drop)
    }

    fn handle(&self, ctx: &Context, op: Op) -> io::Result<(Option<u64>, OpenOptions)> {
        match self.call(ctx, op)? {
            Reply::Open { fh } => Ok((Some(fh), OpenOptions::empty())),
            _ => Err(eio()),
        }
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(Errno::EIO.0)
}

fn name(s: &CStr) -> io::Result<String> {
    let n = s.to_str().map_err(|_| io::Error::from_raw_os_error(Errno::EINVAL.0))?;
    if n.is_empty() || n == "." || n == ".." || n.contains('/') {
        return Err(io::Error::from_raw_os_error(Errno::EINVAL.0));
    }
    Ok(n.to_string())
}

/// Fractional milliseconds → (seconds, nanoseconds), clamped at the epoch.
fn split_ms(v: f64) -> (i64, i64) {
    if !v.is_finite() || v <= 0.0 {
        return (0, 0);
    }
    let s = (v / 1000.0).floor();
    (s as i64, ((v - s * 1000.0) * 1e6).round().clamp(0.0, 999_999_999.0) as i64)
}

fn to_stat(a: &Attr) -> stat64 {
    // SAFETY: stat64 is plain old data; all-zero is a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = a.ino as _;
    st.st_size = a.size as _;
    st.st_blocks = a.blocks as _;
    st.st_mode = a.mode as _;
    st.st_nlink = a.nlink as _;
    st.st_uid = a.uid as _;
    st.st_gid = a.gid as _;
    st.st_rdev = a.rdev as _;
    st.st_blksize = 4096 as _;
    let (s, ns) = split_ms(a.atime_ms);
    st.st_atime = s as _;
    st.st_atime_nsec = ns as _;
    let (s, ns) = split_ms(a.mtime_ms);
    st.st_mtime = s as _;
    st.st_mtime_nsec = ns as _;
    let (s, ns) = split_ms(a.ctime_ms);
    st.st_ctime = s as _;
    st.st_ctime_nsec = ns as _;
    st
}

fn time(now: bool, set: bool, secs: i64, nsecs: i64) -> Option<Time> {
    if now {
        Some(Time::Now(NowMarker::Now))
    } else if set {
        Some(Time::Ms(secs as f64 * 1000.0 + nsecs.clamp(0, 999_999_999) as f64 / 1e6))
    } else {
        None
    }
}

/// An anonymous in-memory file: the staging area libkrun's zero-copy I/O needs.
fn scratch() -> io::Result<File> {
    // SAFETY: a valid NUL-terminated name; the returned descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"sandbox-fs-io".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl<B: FsBackend> DynFileSystem for KrunFs<B> {
    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn lookup(&self, ctx: Context, parent: u64, n: &CStr) -> io::Result<KrunEntry> {
        self.entry(&ctx, Op::Lookup { parent, name: name(n)? })
    }

    fn forget(&self, _ctx: Context, inode: u64, count: u64) {
        self.backend.forget(inode, count);
    }

    fn getattr(&self, ctx: Context, inode: u64, handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.attr(&ctx, Op::Getattr { node: inode, fh: handle })
    }

    fn setattr(&self, ctx: Context, inode: u64, attr: stat64, handle: Option<u64>, valid: SetattrValid) -> io::Result<(stat64, Duration)> {
        let set = SetAttr {
            mode: valid.contains(SetattrValid::MODE).then_some(attr.st_mode as u32 & 0o7777),
            uid: valid.contains(SetattrValid::UID).then_some(attr.st_uid as u32),
            gid: valid.contains(SetattrValid::GID).then_some(attr.st_gid as u32),
            size: valid.contains(SetattrValid::SIZE).then_some(attr.st_size.max(0) as u64),
            atime: time(valid.contains(SetattrValid::ATIME_NOW), valid.contains(SetattrValid::ATIME), attr.st_atime as i64, attr.st_atime_nsec as i64),
            mtime: time(valid.contains(SetattrValid::MTIME_NOW), valid.contains(SetattrValid::MTIME), attr.st_mtime as i64, attr.st_mtime_nsec as i64),
        };
        self.attr(&ctx, Op::Setattr { node: inode, fh: handle, set })
    }

    fn readlink(&self, ctx: Context, inode: u64) -> io::Result<Vec<u8>> {
        match self.call(&ctx, Op::Readlink { node: inode })? {
            Reply::Data(d) => Ok(d),
            _ => Err(eio()),
        }
    }

    fn symlink(&self, ctx: Context, linkname: &CStr, parent: u64, n: &CStr, _ext: Extensions) -> io::Result<KrunEntry> {
        let target = linkname.to_str().map_err(|_| io::Error::from_raw_os_error(Errno::EINVAL.0))?.to_string();
        self.entry(&ctx, Op::Symlink { parent, name: name(n)?, target })
    }

    fn mknod(&self, ctx: Context, parent: u64, n: &CStr, mode: u32, rdev: u32, umask: u32, _ext: Extensions) -> io::Result<KrunEntry> {
        self.entry(&ctx, Op::Mknod { parent, name: name(n)?, mode: mode & !umask, rdev })
    }

    fn mkdir(&self, ctx: Context, parent: u64, n: &CStr, mode: u32, umask: u32, _ext: Extensions) -> io::Result<KrunEntry> {
        self.entry(&ctx, Op::Mkdir { parent, name: name(n)?, mode: mode & !umask })
    }

    fn unlink(&self, ctx: Context, parent: u64, n: &CStr) -> io::Result<()> {
        self.empty(&ctx, Op::Unlink { parent, name: name(n)? })
    }

    fn rmdir(&self, ctx: Context, parent: u64, n: &CStr) -> io::Result<()> {
        self.empty(&ctx, Op::Rmdir { parent, name: name(n)? })
    }

    fn rename(&self, ctx: Context, olddir: u64, oldname: &CStr, newdir: u64, newname: &CStr, flags: u32) -> io::Result<()> {
        if flags & !1 != 0 {
            return Err(io::Error::from_raw_os_error(Errno::EINVAL.0)); // only RENAME_NOREPLACE
        }
        self.empty(&ctx, Op::Rename { parent: olddir, name: name(oldname)?, new_parent: newdir, new_name: name(newname)?, flags })
    }

    fn link(&self, ctx: Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<KrunEntry> {
        self.entry(&ctx, Op::Link { node: inode, new_parent: newparent, new_name: name(newname)? })
    }

    fn open(&self, ctx: Context, inode: u64, _kill_priv: bool, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        self.handle(&ctx, Op::Open { node: inode, flags })
    }

    fn create(
        &self,
        ctx: Context,
        parent: u64,
        n: &CStr,
        mode: u32,
        _kill_priv: bool,
        flags: u32,
        umask: u32,
        _ext: Extensions,
    ) -> io::Result<(KrunEntry, Option<u64>, OpenOptions)> {
        match self.call(&ctx, Op::Create { parent, name: name(n)?, mode: mode & !umask, flags })? {
            Reply::Created { entry, fh } => Ok((self.krun_entry(&entry), Some(fh), OpenOptions::empty())),
            _ => Err(eio()),
        }
    }

    fn read(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let size = size.min(sandbox_fs::MAX_WRITE);
        let Reply::Data(data) = self.call(&ctx, Op::Read { node: inode, fh: handle, offset, size })? else {
            return Err(eio());
        };
        if data.len() > size as usize {
            return Err(eio());
        }
        let mut f = scratch()?;
        f.write_all_at(&data, 0)?;
        w.write_all_from(&mut f, data.len(), 0)?;
        Ok(data.len())
    }

    fn write(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _kill_priv: bool,
        _flags: u32,
    ) -> io::Result<usize> {
        if size > sandbox_fs::MAX_WRITE {
            return Err(io::Error::from_raw_os_error(Errno::EINVAL.0));
        }
        let mut f = scratch()?;
        r.read_exact_to(&mut f, size as usize, 0)?;
        let mut data = vec![0u8; size as usize];
        f.read_exact_at(&mut data, 0)?;
        match self.call(&ctx, Op::Write { node: inode, fh: handle, offset, data })? {
            Reply::Written(n) => Ok(n as usize),
            _ => Err(eio()),
        }
    }

    fn flush(&self, _ctx: Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        // Writes reach the backend before write() returns: nothing to flush.
        Ok(())
    }

    fn fsync(&self, ctx: Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.empty(&ctx, Op::Fsync { node: inode, fh: handle, datasync })
    }

    fn release(
        &self,
        ctx: Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.empty(&ctx, Op::Release { node: inode, fh: handle })
    }

    fn statfs(&self, ctx: Context, inode: u64) -> io::Result<statvfs64> {
        let Reply::Statfs(s) = self.call(&ctx, Op::Statfs { node: inode })? else {
            return Err(eio());
        };
        // SAFETY: statvfs64 is plain old data; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        let bsize = if s.bsize == 0 { 4096 } else { s.bsize };
        st.f_bsize = bsize as _;
        st.f_frsize = bsize as _;
        st.f_blocks = s.blocks as _;
        st.f_bfree = s.bfree as _;
        st.f_bavail = s.bavail as _;
        st.f_files = s.files as _;
        st.f_ffree = s.ffree as _;
        st.f_namemax = s.namelen.max(1) as _;
        Ok(st)
    }

    fn opendir(&self, ctx: Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        self.handle(&ctx, Op::Opendir { node: inode })
    }

    fn readdir_for_each(&self, ctx: Context, inode: u64, handle: u64, size: u32, offset: u64, add_entry: &mut AddDirEntry<'_>) -> io::Result<()> {
        let Reply::Dir(entries) = self.call(&ctx, Op::Readdir { node: inode, fh: handle, offset, size: size.min(sandbox_fs::MAX_WRITE) })? else {
            return Err(eio());
        };
        for e in &entries {
            if e.name.is_empty() || e.name.contains('/') || e.name.contains('\0') {
                continue;
            }
            if add_entry(KrunDirEntry { ino: e.ino as _, offset: e.off, type_: e.kind, name: e.name.as_bytes() })? == 0 {
                break; // the guest's buffer is full
            }
        }
        Ok(())
    }

    fn releasedir(&self, ctx: Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.empty(&ctx, Op::Releasedir { node: inode, fh: handle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use sandbox_fs::DirEntry;
    use std::sync::Mutex;

    /// A one-file filesystem recording what it was asked.
    #[derive(Default)]
    struct Mock {
        data: Mutex<Vec<u8>>,
        seen: Mutex<Vec<Op>>,
    }

    #[async_trait]
    impl FsBackend for Mock {
        async fn call(&self, _caller: Caller, op: Op) -> Result<Reply, Errno> {
            self.seen.lock().unwrap().push(op.clone());
            let file = |size: usize| Attr { ino: 9, size: size as u64, mode: 0o100644, nlink: 1, mtime_ms: 2500.5, ..Attr::default() };
            match op {
                Op::Lookup { name, .. } if name == "f" => Ok(Reply::Entry(Entry { node: 5, attr: file(self.data.lock().unwrap().len()) })),
                Op::Lookup { .. } => Err(Errno::ENOENT),
                Op::Getattr { node: 1, .. } => Ok(Reply::Attr(Attr { ino: 1, mode: 0o040755, nlink: 2, ..Attr::default() })),
                Op::Open { .. } => Ok(Reply::Open { fh: 3 }),
                Op::Write { offset, data, .. } => {
                    let mut d = self.data.lock().unwrap();
                    let end = offset as usize + data.len();
                    if d.len() < end {
                        d.resize(end, 0);
                    }
                    d[offset as usize..end].copy_from_slice(&data);
                    Ok(Reply::Written(data.len() as u32))
                }
                Op::Read { offset, size, .. } => {
                    let d = self.data.lock().unwrap();
                    let start = (offset as usize).min(d.len());
                    Ok(Reply::Data(d[start..(start + size as usize).min(d.len())].to_vec()))
                }
                Op::Readdir { offset, .. } => Ok(Reply::Dir(
                    ["a", "b", "c"].iter().enumerate().skip(offset as usize).map(|(i, n)| DirEntry { ino: i as u64 + 10, name: n.to_string(), kind: 8, off: i as u64 + 1 }).collect(),
                )),
                _ => Ok(Reply::Empty),
            }
        }
        fn forget(&self, _node: u64, _count: u64) {}
    }

    /// Guest-side buffers as libkrun's transport would present them.
    struct GuestIn(Vec<u8>);
    impl ZeroCopyReader for GuestIn {
        fn read_to(&mut self, f: &File, count: usize, off: u64) -> io::Result<usize> {
            let n = count.min(self.0.len());
            f.write_all_at(&self.0[..n], off)?;
            self.0.drain(..n);
            Ok(n)
        }
    }
    struct GuestOut(Vec<u8>);
    impl ZeroCopyWriter for GuestOut {
        fn write_from(&mut self, f: &File, count: usize, off: u64) -> io::Result<usize> {
            let mut buf = vec![0u8; count];
            let n = f.read_at(&mut buf, off)?;
            if n == 0 && count > 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    fn setup() -> (tokio::runtime::Runtime, KrunFs<Mock>, Arc<Mock>) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mock = Arc::new(Mock::default());
        let fs = KrunFs::new(mock.clone(), rt.handle().clone(), CachePolicy::default());
        (rt, fs, mock)
    }

    fn ctx() -> Context {
        Context { uid: 1000, gid: 1000, pid: 7 }
    }

    #[test]
    fn lookups_attributes_and_errors_map_to_libkrun_types() {
        let (_rt, fs, _) = setup();
        let e = fs.lookup(ctx(), 1, c"f").unwrap();
        assert_eq!((e.inode, e.attr.st_ino, e.attr.st_mode), (5, 9, 0o100644));
        assert_eq!((e.attr.st_mtime, e.attr.st_mtime_nsec), (2, 500_500_000));
        assert_eq!((e.entry_timeout, e.attr_timeout), (Duration::from_secs(1), Duration::ZERO));
        assert_eq!(fs.lookup(ctx(), 1, c"missing").err().and_then(|e| e.raw_os_error()), Some(libc::ENOENT));
        assert_eq!(fs.lookup(ctx(), 1, c"..").err().and_then(|e| e.raw_os_error()), Some(libc::EINVAL));
        let (st, valid) = fs.getattr(ctx(), 1, None).unwrap();
        assert_eq!((st.st_mode, valid), (0o040755, Duration::from_secs(1)));
        assert_eq!(fs.rename(ctx(), 1, c"a", 1, c"b", 2).unwrap_err().raw_os_error(), Some(libc::EINVAL), "no RENAME_EXCHANGE");
    }

    #[test]
    fn writes_and_reads_move_bytes_through_the_backend() {
        let (_rt, fs, mock) = setup();
        let (fh, _) = fs.open(ctx(), 5, false, libc::O_RDWR as u32).unwrap();
        let fh = fh.unwrap();
        let n = fs.write(ctx(), 5, fh, &mut GuestIn(b"hello world".to_vec()), 11, 2, None, false, false, 0).unwrap();
        assert_eq!(n, 11);
        assert_eq!(&mock.data.lock().unwrap()[..], b"\0\0hello world");
        let mut out = GuestOut(Vec::new());
        assert_eq!(fs.read(ctx(), 5, fh, &mut out, 5, 4, None, 0).unwrap(), 5);
        assert_eq!(out.0, b"llo w");
        assert_eq!(fs.read(ctx(), 5, fh, &mut GuestOut(Vec::new()), 100, 1000, None, 0).unwrap(), 0, "EOF");
        let big = sandbox_fs::MAX_WRITE + 1;
        assert_eq!(fs.write(ctx(), 5, fh, &mut GuestIn(vec![0; big as usize]), big, 0, None, false, false, 0).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn readdir_stops_when_the_guest_buffer_is_full_and_setattr_decodes_valid_fields() {
        let (_rt, fs, mock) = setup();
        let mut names = Vec::new();
        fs.readdir_for_each(ctx(), 1, 1, 4096, 0, &mut |e: KrunDirEntry<'_>| {
            names.push(String::from_utf8(e.name.to_vec()).unwrap());
            Ok(if names.len() == 2 { 0 } else { 32 })
        })
        .unwrap();
        assert_eq!(names, ["a", "b"]);
        // SAFETY: plain old data.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_mode = 0o104755 as _;
        st.st_size = 42;
        let _ = fs.setattr(ctx(), 5, st, Some(3), SetattrValid::MODE | SetattrValid::SIZE | SetattrValid::MTIME_NOW);
        let last = mock.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            last,
            Op::Setattr { node: 5, fh: Some(3), set: SetAttr { mode: Some(0o4755), size: Some(42), mtime: Some(Time::Now(NowMarker::Now)), ..SetAttr::default() } }
        );
    }
}
