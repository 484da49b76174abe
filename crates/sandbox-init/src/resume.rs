//! A restored guest is a fork of a snapshot: before it runs anything new it
//! takes fresh entropy (two forks must never share random numbers), the
//! host's clock and its own hostname.

use crate::sys;
use sandbox_protocol::{self as proto, Resume};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`; the next random bytes come from a new key.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
const ENTROPY_BYTES: usize = 64;

/// Applies what a restored guest must change; problems come back as warnings
/// (the guest still runs; the host reports them).
pub fn apply(r: &Resume) -> Vec<String> {
    let mut warnings = Vec::new();
    match decode_hex(&r.entropy) {
        Some(bytes) => {
            if let Err(e) = reseed(&bytes) {
                warnings.push(format!("the RNG could not be reseeded: {e}"));
            }
        }
        None => warnings.push(format!("the host's entropy is not {ENTROPY_BYTES} hex bytes")),
    }
    if let Err(e) = set_clock(r.realtime_us.get()) {
        warnings.push(format!("the clock could not be set: {e}"));
    }
    if let Some(h) = &r.hostname {
        if let Err(e) = sys::sethostname(h) {
            warnings.push(format!("sethostname {h:?}: {e}"));
        }
    }
    warnings
}

/// Installs the new lane's interception CA in place of the checkpointed
/// lane's (same paths, so the environment variables that name it still hold).
pub fn install_ca(pem: &str) -> Result<Vec<(String, String)>, String> {
    let run = crate::boot::run_image_tool;
    let root = std::path::Path::new("/");
    match crate::ca::setup(root, pem, root_writable(), &run) {
        // The checkpointed lane staged its CA the same way (Configure.caOptional).
        Err(crate::ca::CaError::NoInstaller) => crate::ca::setup(root, pem, false, &run),
        other => other,
    }
    .map_err(|e| e.to_string())
}

fn root_writable() -> bool {
    // SAFETY: statvfs fills the zeroed struct it is given; the path is a NUL-terminated literal.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c"/".as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY == 0
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != ENTROPY_BYTES * 2 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Credits the bytes to the input pool and forces a new CRNG key, so every
/// later read (getrandom, /dev/urandom, /proc/sys/kernel/random/uuid) differs
/// between forks of one snapshot.
fn reseed(bytes: &[u8]) -> io::Result<()> {
    #[repr(C)]
    struct PoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; ENTROPY_BYTES],
    }
    let mut info = PoolInfo { entropy_count: (ENTROPY_BYTES * 8) as libc::c_int, buf_size: ENTROPY_BYTES as libc::c_int, buf: [0; ENTROPY_BYTES] };
    info.buf.copy_from_slice(&bytes[..ENTROPY_BYTES]);
    let dev = File::options().write(true).open("/dev/urandom")?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header plus `buf_size` bytes, all inside `info`.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY, &info as *const PoolInfo) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_clock(us: u64) -> io::Result<()> {
    let ts = libc::timespec { tv_sec: (us / 1_000_000) as libc::time_t, tv_nsec: ((us % 1_000_000) * 1000) as libc::c_long };
    // SAFETY: clock_settime reads one timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `Resumed` answer.
pub fn resumed(processes: usize, warnings: Vec<String>) -> proto::Resumed {
    proto::Resumed {
        processes: u32::try_from(processes).unwrap_or(u32::MAX),
        warnings: warnings.into_iter().take(16).map(proto::Text::truncated).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_is_exactly_64_hex_bytes() {
        assert_eq!(decode_hex(&"ab".repeat(64)).unwrap(), vec![0xab; 64]);
        assert!(decode_hex(&"ab".repeat(63)).is_none());
        assert!(decode_hex(&"zz".repeat(64)).is_none());
    }
}
