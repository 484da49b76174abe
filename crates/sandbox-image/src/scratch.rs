//! Where the raw ext4 is built before it becomes a qcow2.
//!
//! The raw file is written once by mke2fs and read once by qemu-img; on disk
//! that costs its whole size in writeback twice over (measured: a 300 MiB
//! import spends more than half its time waiting on the page cache), so when
//! memory allows it lives in an unnamed tmpfs file (`O_TMPFILE` on /dev/shm).
//! Unnamed means it can never leak: when this process dies, however, the
//! kernel frees it. The tools reach it through `/proc/<pid>/fd/<n>`.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

const TMPFS: &str = "/dev/shm";
/// tmpfs' magic number in `statfs.f_type`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The raw image's location; the unnamed file lives as long as this value.
pub struct RawImage {
    path: PathBuf,
    _memory: Option<File>,
}

impl RawImage {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn in_memory(&self) -> bool {
        self._memory.is_some()
    }

    /// A file under `work_dir`.
    pub fn on_disk(work_dir: &Path) -> RawImage {
        RawImage { path: work_dir.join("rootfs.ext4"), _memory: None }
    }

    /// An unnamed tmpfs file when `expected_bytes` fits comfortably (a
    /// quarter of available memory and half of the tmpfs' free space), else
    /// a file under `work_dir`. `SANDBOX_IMPORT_SCRATCH=disk` forces the disk.
    pub fn choose(work_dir: &Path, expected_bytes: u64) -> RawImage {
        if std::env::var_os("SANDBOX_IMPORT_SCRATCH").is_some_and(|v| v == "disk") {
            return RawImage::on_disk(work_dir);
        }
        let fits = mem_available().is_some_and(|m| expected_bytes <= m / 4)
            && tmpfs_free(Path::new(TMPFS)).is_some_and(|f| expected_bytes <= f / 2);
        if !fits {
            return RawImage::on_disk(work_dir);
        }
        match unnamed_tmpfs_file(Path::new(TMPFS)) {
            Some(file) => RawImage {
                path: PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd())),
                _memory: Some(file),
            },
            None => RawImage::on_disk(work_dir),
        }
    }

    /// Removes the on-disk file (an unnamed one goes when `self` is dropped).
    pub fn remove(self) {
        if self._memory.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How much a filesystem built from `compressed` layer bytes will occupy, roughly:
/// layers decompress to about 3–4× their size, plus inode tables and journal.
pub fn expected_raw_bytes(compressed: u64) -> u64 {
    compressed.saturating_mul(5).saturating_add(256 << 20)
}

fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn tmpfs_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointers outlive the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // f_type is i64 here but narrower on other architectures.
    #[allow(clippy::useless_conversion)]
    let kind = i64::from(st.f_type);
    if kind != TMPFS_MAGIC {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_bsize as u64))
}

fn unnamed_tmpfs_file(dir: &Path) -> Option<File> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: open with a valid C string; O_TMPFILE needs O_RDWR and a mode.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Some(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_disk_and_huge_images_use_the_work_dir() {
        let work = Path::new("/nonexistent-work");
        let raw = RawImage::choose(work, u64::MAX / 2);
        assert_eq!(raw.path(), work.join("rootfs.ext4"));
        assert!(!raw.in_memory());
    }

    #[test]
    fn a_small_image_is_an_unnamed_file_reachable_through_proc() {
        let raw = RawImage::choose(Path::new("/nonexistent-work"), 1 << 20);
        if !raw.in_memory() {
            // No tmpfs at /dev/shm on this machine: the disk path is the documented fallback.
            assert!(raw.path().ends_with("rootfs.ext4"));
            return;
        }
        std::fs::write(raw.path(), b"reopened by path").unwrap();
        assert_eq!(std::fs::read(raw.path()).unwrap(), b"reopened by path");
        assert!(std::fs::read_dir(TMPFS).unwrap().all(|e| !e.unwrap().path().ends_with("rootfs.ext4")));
    }
}
