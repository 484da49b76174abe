//! Thin, checked wrappers over the few syscalls init needs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn cstr(s: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = cstr(source)?;
    let tgt = cstr(target.as_os_str())?;
    let fst = cstr(fstype)?;
    let dat = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a NUL-terminated CString (or null for no data) that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            flags,
            dat.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(rc)
}

pub fn move_mount(from: &Path, to: &Path) -> io::Result<()> {
    let f = cstr(from.as_os_str())?;
    let t = cstr(to.as_os_str())?;
    // SAFETY: both paths are NUL-terminated CStrings alive for the call; MS_MOVE takes no fstype or data.
    check(unsafe {
        libc::mount(f.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null())
    })
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: `p` is a NUL-terminated CString alive for the call.
    check(unsafe { libc::chroot(p.as_ptr()) })
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the kernel reads exactly `name.len()` bytes from the string's buffer.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, sig) })
}

/// Loads a kernel module from an open file (finit_module). EEXIST counts as loaded.
pub fn finit_module(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let empty = c"";
    // SAFETY: the descriptor is open for the call (`file` lives on) and the parameter string is a static C string.
    let rc = unsafe {
        libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), empty.as_ptr(), 0) as libc::c_int
    };
    match check(rc) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOEXEC => "ENOEXEC",
        libc::E2BIG => "E2BIG",
        libc::ENOMEM => "ENOMEM",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ETXTBSY => "ETXTBSY",
        libc::EMFILE => "EMFILE",
        libc::EAGAIN => "EAGAIN",
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EROFS => "EROFS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EXDEV => "EXDEV",
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EBUSY => "EBUSY",
        libc::EBADF => "EBADF",
        libc::EFBIG => "EFBIG",
        libc::EMLINK => "EMLINK",
        libc::ENXIO => "ENXIO",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESPIPE => "ESPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINTR => "EINTR",
        libc::ENODEV => "ENODEV",
        _ => "EIO",
    }
}

/// Marks a descriptor non-blocking.
pub fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL read and set descriptor flags; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check(flags)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

/// `f_type` of the filesystem holding `path` (statfs(2)).
pub fn statfs_type(path: &Path) -> io::Result<i64> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs we own.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Flushes every filesystem and block device (sync(2)).
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target.as_os_str())?;
    // SAFETY: `t` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::umount2(t.as_ptr(), flags) })
}

/// Makes the filesystem mounted at `target` read-only (MS_REMOUNT), keeping
/// its other per-mount flags.
pub fn remount_read_only(target: &Path, keep: libc::c_ulong) -> io::Result<()> {
    let t = cstr(target.as_os_str())?;
    // SAFETY: `t` outlives the call; a remount reads no source, type or data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | keep,
            std::ptr::null(),
        )
    })
}

/// Reaps one exited child without blocking: `Ok(Some(pid))`, `Ok(None)` when
/// children remain but none has exited, `Err(ECHILD)` when there are none.
pub fn reap_any() -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the duration of the call.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        p => Ok(Some(p)),
    }
}

/// Powers the machine off; returns only if the kernel refused.
pub fn power_off() -> io::Error {
    // SAFETY: reboot with RB_POWER_OFF takes no pointers; PID 1 may call it.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}
