//! The system calls the host-directory backend makes, as safe functions over
//! owned descriptors. Every path the guest influences is resolved relative to
//! the mount's root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so
//! the kernel itself refuses `..` above the root and any symbolic link on the
//! way, in the same walk that finds the file; a final name is then used with
//! the `*at` call's own no-follow rule.

use crate::Errno;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn last() -> Errno {
    Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

fn check(r: libc::c_int) -> Result<(), Errno> {
    if r < 0 {
        Err(last())
    } else {
        Ok(())
    }
}

/// A guest name or path as a C string; an embedded NUL is EINVAL.
pub fn cstr(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

fn own(fd: libc::c_long) -> Result<OwnedFd, Errno> {
    if fd < 0 {
        return Err(last());
    }
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EIO)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, path, flags, mode)` confined beneath `dir`, following no
/// symbolic link anywhere (a final one is returned as itself only with
/// `O_PATH | O_NOFOLLOW`, else ELOOP). `path` "." is `dir` itself.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: libc::c_int, mode: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // openat2 refuses O_PATH with any flag beyond O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC.
    let extra = if flags & libc::O_PATH != 0 { libc::O_CLOEXEC } else { libc::O_CLOEXEC | libc::O_NOCTTY };
    how.flags = u64::from((flags | extra).unsigned_abs());
    how.mode = if flags & libc::O_CREAT != 0 { u64::from(mode & 0o7777) } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated, `how` is a valid open_how whose size is
    // passed with it, and `dir` is an open descriptor; the kernel only reads them.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), path.as_ptr(), std::ptr::addr_of!(how), std::mem::size_of::<libc::open_how>()) };
    own(fd)
}

/// Opens the directory `path` itself (unconfined: the mount's root, given by the host).
pub fn open_root(path: &CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is NUL-terminated; open only reads it.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    own(libc::c_long::from(fd))
}

pub fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    stat_at(fd, c"", libc::AT_EMPTY_PATH)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: a final symbolic link is reported as itself.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<libc::stat, Errno> {
    stat_at(dir, name, 0)
}

fn stat_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Result<libc::stat, Errno> {
    // SAFETY: an all-zero `stat` is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `name` is NUL-terminated and `st` is writable memory of the right type.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, flags | libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `dir` is open and `name` NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> Result<(), Errno> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `dir` is open and `name` NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: both strings are NUL-terminated and `dir` is open.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// `linkat` without following a final symbolic link at the source.
pub fn link_at(from_dir: BorrowedFd<'_>, from: &CStr, to_dir: BorrowedFd<'_>, to: &CStr) -> Result<(), Errno> {
    // SAFETY: both descriptors are open and both names NUL-terminated.
    check(unsafe { libc::linkat(from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr(), 0) })
}

pub fn rename_at(from_dir: BorrowedFd<'_>, from: &CStr, to_dir: BorrowedFd<'_>, to: &CStr, flags: u32) -> Result<(), Errno> {
    // SAFETY: both descriptors are open and both names NUL-terminated; renameat2 only reads them.
    let r = unsafe { libc::syscall(libc::SYS_renameat2, from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr(), flags) };
    if r < 0 {
        Err(last())
    } else {
        Ok(())
    }
}

/// `readlinkat(dir, name)`: at most `PATH_MAX` bytes.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `dir` is open, `name` NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last());
    }
    buf.truncate(n.unsigned_abs());
    Ok(buf)
}

/// `chmod` of `name` in `dir`, never through a symbolic link (glibc's
/// `AT_SYMLINK_NOFOLLOW` emulation: EOPNOTSUPP for a link).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `dir` is open and `name` NUL-terminated.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), (mode & 0o7777) as libc::mode_t, libc::AT_SYMLINK_NOFOLLOW) })
}

pub fn fchmod(file: &File, mode: u32) -> Result<(), Errno> {
    // SAFETY: `file` is an open descriptor.
    check(unsafe { libc::fchmod(file.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })
}

/// A time to set: seconds and nanoseconds, now, or unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SetTime {
    At(i64, i64),
    Now,
    Keep,
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::At(sec, nsec) => libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ },
        SetTime::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        SetTime::Keep => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
    }
}

/// `utimensat(dir, name, AT_SYMLINK_NOFOLLOW)`: a link's own times.
pub fn utimes_at(dir: BorrowedFd<'_>, name: &CStr, atime: SetTime, mtime: SetTime) -> Result<(), Errno> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `dir` is open, `name` NUL-terminated and `times` two valid timespecs.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

pub fn futimens(file: &File, atime: SetTime, mtime: SetTime) -> Result<(), Errno> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `file` is open and `times` two valid timespecs.
    check(unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) })
}

pub fn statfs(fd: BorrowedFd<'_>) -> Result<libc::statvfs, Errno> {
    // SAFETY: an all-zero statvfs is a valid value for the call to overwrite.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `s` writable memory of the right type.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) })?;
    Ok(s)
}

/// One directory entry as the host reports it.
pub struct Listed {
    pub ino: u64,
    pub kind: u8,
    pub name: String,
}

/// Every entry of the directory `dir` (an open, readable directory
/// descriptor, consumed), "." and ".." left out; names that are not UTF-8
/// cannot travel in the guest's wire types and are left out too.
pub fn list(dir: OwnedFd) -> Result<Vec<Listed>, Errno> {
    let raw = dir.as_raw_fd();
    // SAFETY: `raw` is an open directory descriptor; on success fdopendir owns it
    // (released below by closedir), so `dir` must not close it again.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        return Err(last()); // `dir` still owns the descriptor and closes it
    }
    std::mem::forget(dir);
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it tells end-of-stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a live DIR* only this function uses.
        let ent = unsafe { libc::readdir64(stream) };
        if ent.is_null() {
            // SAFETY: reading this thread's errno.
            let e = unsafe { *libc::__errno_location() };
            break if e == 0 { Ok(()) } else { Err(Errno(e)) };
        }
        // SAFETY: readdir64 returned a valid entry, alive until the next call on `stream`;
        // d_name is NUL-terminated within it.
        let (ino, kind, name) = unsafe { ((*ent).d_ino, (*ent).d_type, CStr::from_ptr((*ent).d_name.as_ptr())) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if let Ok(name) = std::str::from_utf8(bytes) {
            out.push(Listed { ino, kind, name: name.to_owned() });
        }
    };
    // SAFETY: `stream` came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(stream) };
    result.map(|()| out)
}

/// An owned descriptor as a `File` (for positioned reads and writes).
pub fn file(fd: OwnedFd) -> File {
    File::from(fd)
}
