//! Ties the helper's life to its parent's.

use crate::error::HostError;

/// Asks the kernel to SIGKILL us when the parent dies, then closes the race
/// where the parent died before the request was made.
pub fn die_with_parent() -> Result<(), HostError> {
    // SAFETY: getppid and prctl take and return plain integers; no memory is involved.
    let original_parent = unsafe { libc::getppid() };
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(HostError::Setup(format!("PR_SET_PDEATHSIG: {}", std::io::Error::last_os_error())));
    }
    if original_parent == 1 {
        return Err(HostError::ParentGone);
    }
    Ok(())
}

/// Child-side setup run between fork and exec of the VMM: it must die when
/// the helper dies, and must not receive the terminal's signals.
pub fn vmm_pre_exec() -> std::io::Result<()> {
    // SAFETY: prctl is async-signal-safe and takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
