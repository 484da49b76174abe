//! Node addon: starts `sandbox-host` helpers and owns their lifetime.
//!
//! The helper gets one end of a socketpair as fd 3; JavaScript gets the other
//! end as a plain descriptor it wraps in a `net.Socket`. The helper asks for
//! SIGKILL when this process dies (PR_SET_PDEATHSIG, armed here between fork
//! and exec on the main thread, so it fires only when the process exits) and
//! also exits on EOF of the socket, so no VM outlives Node. It also lists
//! directories (`dir_listing`) and stats paths without following any symbolic
//! link on the way (`confined_stat`, Linux) for `fs.hostDir` mounts.

#[cfg(target_os = "linux")]
mod confined_stat;
mod dir_listing;

#[cfg(target_os = "linux")]
pub use confined_stat::lstat_no_symlinks;
pub use dir_listing::{list_directory, DirListing};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

#[napi(object)]
pub struct HelperHandle {
    pub pid: i32,
    /// Node's end of the control socket (close-on-exec).
    pub fd: i32,
}

/// Spawns `helper` with the control socket as fd 3 and returns its pid and
/// Node's end of the socket. The helper's stderr goes to `stderr_fd` when
/// given (>= 0), otherwise to /dev/null.
#[napi]
pub fn spawn_helper(helper: String, args: Vec<String>, stderr_fd: i32) -> Result<HelperHandle> {
    let (ours, theirs) = UnixStream::pair()
        .map_err(|e| Error::from_reason(format!("socketpair for the helper: {e}")))?;
    let child_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&helper);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null());
    if stderr_fd >= 0 {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor; no memory is involved.
        let dup = unsafe { libc::fcntl(stderr_fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(Error::from_reason(format!("stderr fd {stderr_fd} is not open")));
        }
        // SAFETY: `dup` was just created above and nothing else owns it.
        cmd.stderr(unsafe { <Stdio as std::os::fd::FromRawFd>::from_raw_fd(dup) });
    } else {
        cmd.stderr(Stdio::null());
    }
    // SAFETY: the hook runs in the forked child before exec and calls only
    // async-signal-safe functions (setpgid, prctl, dup2) on plain integers.
    unsafe {
        cmd.pre_exec(move || {
            // Own process group: a terminal's ^C goes to Node, which decides.
            libc::setpgid(0, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(child_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::from_reason(format!("cannot start the sandbox helper {helper}: {e}")))?;
    drop(theirs);
    let pid = child.id() as i32;
    // Reap the helper when it ends so it never lingers as a zombie.
    std::thread::Builder::new()
        .name(format!("sandbox-helper-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        })
        .map_err(|e| Error::from_reason(format!("reaper thread: {e}")))?;
    Ok(HelperHandle { pid, fd: ours.into_raw_fd() })
}
