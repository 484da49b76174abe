//! Power-off: stop every process, then leave the filesystems clean, so a
//! writable root (`rootfs.cow`) mounts at the next boot without replaying
//! its journal.
//!
//! init runs chrooted into the block root (see `boot::switch_root`), whose
//! mount sits on top of the initramfs: it cannot be unmounted from inside,
//! so it is remounted read-only, which makes ext4 commit its journal and
//! mark itself clean. Everything mounted below it (virtual filesystems,
//! tmpfs, /dev, /proc, /sys) is unmounted first. Each step is best effort:
//! a failure is printed and the power-off goes on.

use crate::sys;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long killed processes get to exit (a process blocked in the kernel
/// on a slow device may take a moment).
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Remount attempts while a dying process still holds a file open for writing.
const REMOUNT_ATTEMPTS: u32 = 20;

pub fn power_off() -> ! {
    stop_processes();
    sys::sync();
    unmount_below_root();
    remount_root_read_only();
    sys::sync();
    let e = sys::power_off();
    eprintln!("sandbox-init: power off: {e}");
    // PID 1 must never exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// SIGKILL to every process but init, then reap until none is left (every
/// orphan is init's child) or the grace ran out.
fn stop_processes() {
    let _ = sys::kill(-1, libc::SIGKILL);
    let deadline = Instant::now() + EXIT_GRACE;
    loop {
        match sys::reap_any() {
            Ok(Some(_)) => continue,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return eprintln!("sandbox-init: power off: processes still exiting after {EXIT_GRACE:?}"),
            Err(_) => return, // ECHILD: none left
        }
    }
}

/// Every mount point but `/`, deepest (most recently mounted) first.
fn mounts_below_root() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p != Path::new("/"))
        .collect();
    points.reverse();
    points
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn unmount_below_root() {
    for point in mounts_below_root() {
        // Busy (init's own control port lives on /dev): detach instead.
        if sys::umount(&point, 0).is_err() {
            if let Err(e) = sys::umount(&point, libc::MNT_DETACH) {
                eprintln!("sandbox-init: power off: unmount {}: {e}", point.display());
            }
        }
    }
}

fn remount_root_read_only() {
    let root = Path::new("/");
    for attempt in 1..=REMOUNT_ATTEMPTS {
        match sys::remount_read_only(root, libc::MS_NOATIME) {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < REMOUNT_ATTEMPTS => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return eprintln!("sandbox-init: power off: remount / read-only: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape;
    use std::path::Path;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/mnt/a\\040b"), Path::new("/mnt/a b"));
        assert_eq!(unescape("/x\\134y"), Path::new("/x\\y"));
        assert_eq!(unescape("/plain"), Path::new("/plain"));
        assert_eq!(unescape("/bad\\9"), Path::new("/bad\\9"));
    }
}
