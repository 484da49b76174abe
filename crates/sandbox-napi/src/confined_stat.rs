//! `lstat` for `fs.hostDir` without following any symbolic link on the way:
//! the directory is opened with `openat2(RESOLVE_NO_SYMLINKS)`, so the kernel
//! checks every component in the same walk that finds the file. It replaces
//! one Node `lstatSync` per directory on the path (each a `Stats` object) with
//! one call. Tested from TypeScript (tests/unit/fs.test.ts): a napi crate's own
//! test binary cannot link without Node.

use napi::bindgen_prelude::Float64Array;
use napi_derive::napi;
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

/// Opens `dir` as an `O_PATH` directory descriptor, refusing a symbolic link
/// anywhere in it (ELOOP) and anything that is not a directory (ENOTDIR).
fn open_dir_no_symlinks(dir: &CString) -> Result<OwnedFd, i32> {
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::from((libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).unsigned_abs());
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `dir` is NUL-terminated and `how` is a valid open_how whose size
    // is passed with it; the kernel only reads both.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, dir.as_ptr(), std::ptr::addr_of!(how), std::mem::size_of::<libc::open_how>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    let fd = i32::try_from(fd).map_err(|_| libc::EIO)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lstat` of `name` in directory `dir` (of `dir` itself when `name` is
/// empty). Returns `[dev, ino, mode, nlink, uid, gid, rdev, size, blocks,
/// atimeMs, mtimeMs, ctimeMs]`, or `[errno]` when it fails (ENOSYS where the
/// kernel has no `openat2`: the caller then takes Node's calls).
#[napi]
pub fn lstat_no_symlinks(dir: String, name: String) -> Float64Array {
    Float64Array::new(match stat(&dir, &name) {
        Ok(st) => {
            let ms = |s: i64, ns: i64| s as f64 * 1000.0 + ns as f64 / 1e6;
            vec![
                st.st_dev as f64,
                st.st_ino as f64,
                f64::from(st.st_mode),
                st.st_nlink as f64,
                f64::from(st.st_uid),
                f64::from(st.st_gid),
                st.st_rdev as f64,
                st.st_size as f64,
                st.st_blocks as f64,
                ms(st.st_atime, st.st_atime_nsec),
                ms(st.st_mtime, st.st_mtime_nsec),
                ms(st.st_ctime, st.st_ctime_nsec),
            ]
        }
        Err(errno) => vec![f64::from(errno)],
    })
}

fn stat(dir: &str, name: &str) -> Result<libc::stat, i32> {
    let dir = CString::new(dir).map_err(|_| libc::EINVAL)?;
    let name = CString::new(name).map_err(|_| libc::EINVAL)?;
    let fd = open_dir_no_symlinks(&dir)?;
    // SAFETY: an all-zero `stat` is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW | if name.as_bytes().is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: `fd` is open, `name` is NUL-terminated and `st` is writable memory of the right type.
    let r = unsafe { libc::fstatat(std::os::fd::AsRawFd::as_raw_fd(&fd), name.as_ptr(), &mut st, flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    Ok(st)
}
