//! One supervised guest process: its pipes (or pty), output credit, deadline
//! and pending stdin.

use crate::cgroups::{self, Leaf};
use crate::sys;
use sandbox_protocol::{GuestUser, I32In, Resize, Start, StartFailed, Text};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The identity every process runs as (the image's `User`), set once at boot.
static DEFAULT_USER: OnceLock<GuestUser> = OnceLock::new();

/// Called once, after boot, with `Configure.user`; absent keeps processes root.
pub fn set_default_user(user: Option<GuestUser>) {
    if let Some(u) = user {
        let _ = DEFAULT_USER.set(u);
    }
}

/// Registers the switch to the image's user, if there is one. Registered
/// last: the cgroup move and the new session happen while still root.
fn drop_privileges(cmd: &mut Command) {
    if let Some(user) = DEFAULT_USER.get() {
        run_as(cmd, user);
    }
}

/// Drops to `user` in the child between fork and exec: supplementary groups
/// first, then gid, then uid (after setuid the others are no longer allowed).
fn run_as(cmd: &mut Command, user: &GuestUser) {
    let (uid, gid) = (user.uid, user.gid);
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: the closure only makes async-signal-safe syscalls (setgroups,
    // setgid, setuid) on data moved into it; nothing allocates after fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One output stream (stdout, stderr, or a pty master) and its flow-control state.
pub struct Output {
    pub file: Option<File>,
    /// Bytes the host still accepts on this stream.
    pub credit: u64,
    /// Set once a read after the process' exit found the stream empty (or closed).
    pub drained: bool,
}

impl Output {
    fn new(file: Option<File>, window: u32) -> Self {
        let drained = file.is_none();
        Output { file, credit: window as u64, drained }
    }

    /// Whether the control loop should poll this stream for input.
    pub fn wants_read(&self) -> bool {
        self.file.is_some() && self.credit > 0
    }
}

pub struct Process {
    pub pid: i32,
    pub stdin: Option<File>,
    /// Bytes the host sent that the process has not read yet (bounded by the host's stdin window).
    pub stdin_queue: VecDeque<Vec<u8>>,
    /// Close stdin once the queue drains.
    pub stdin_eof: bool,
    /// Bytes written into the process since the last acknowledgement.
    pub stdin_unacked: u64,
    /// [stdout, stderr]; a pty process has its master in stdout and no stderr.
    pub out: [Output; 2],
    pub pty_master: Option<File>,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
    /// Raw wait status once reaped; the Exit frame waits until output is drained.
    pub status: Option<i32>,
    /// The command's cgroup (absent only when this kernel has no cgroup v2).
    pub leaf: Option<Leaf>,
    /// Its host-side handle is gone (the guest was restored from a snapshot):
    /// output is read and dropped, and its exit is reported to nobody.
    pub detached: bool,
}

impl Process {
    /// Starts the command; it moves itself into `leaf` before exec, so every
    /// process it forks is in there too.
    pub fn spawn(
        start: &Start,
        base_env: &BTreeMap<String, String>,
        default_cwd: &str,
        leaf: Option<Leaf>,
    ) -> Result<Process, StartFailed> {
        let Some(program) = start.argv.first() else {
            return Err(start_failed(libc::EINVAL, "argv is empty: give at least the program name".into()));
        };
        let cwd = start.cwd.as_deref().unwrap_or(default_cwd);
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(start_failed(libc::ENOTDIR, format!("working directory {cwd} is not a directory"))),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                return Err(start_failed(errno, format!("working directory {cwd}: {e}")));
            }
        }
        let mut cmd = Command::new(program);
        cmd.args(&start.argv[1..]).env_clear().envs(base_env).envs(&start.env).current_dir(cwd);
        let window = start.initial_window();
        let spawn_err = |e: io::Error| start_failed(e.raw_os_error().unwrap_or(libc::EIO), format!("{program}: {e}"));
        let leaf_fd = leaf.as_ref().map(Leaf::procs_fd);

        if let Some(size) = start.pty {
            let (master, slave) = open_pty(size).map_err(|e| start_failed(e.raw_os_error().unwrap_or(libc::EIO), format!("openpty: {e}")))?;
            let slave_fd = slave.as_raw_fd();
            let dup = |f: &File| f.try_clone().map(Stdio::from);
            cmd.stdin(dup(&slave).map_err(spawn_err)?).stdout(dup(&slave).map_err(spawn_err)?).stderr(Stdio::from(slave));
            // SAFETY: the hook runs in the forked child before exec and calls only
            // async-signal-safe functions (setsid, ioctl); init is single-threaded.
            unsafe {
                // A new session whose controlling terminal is the pty: job
                // control, ^C → SIGINT and SIGWINCH on resize then just work.
                cmd.pre_exec(move || {
                    if let Some(fd) = leaf_fd {
                        cgroups::enter(fd)?;
                    }
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let _ = slave_fd;
                    Ok(())
                });
            }
            drop_privileges(&mut cmd);
            let child = cmd.spawn().map_err(spawn_err)?;
            let pid = child.id() as i32;
            drop(child);
            let writer = master.try_clone().map_err(spawn_err)?;
            let _ = sys::set_nonblocking(master.as_raw_fd());
            let reader = master.try_clone().map_err(spawn_err)?;
            return Ok(Process {
                pid,
                stdin: Some(writer),
                stdin_queue: VecDeque::new(),
                stdin_eof: false,
                stdin_unacked: 0,
                out: [Output::new(Some(reader), window), Output::new(None, window)],
                pty_master: Some(master),
                deadline: start.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(u64::from(ms.get()))),
                timed_out: false,
                status: None,
                leaf,
                detached: false,
            });
        }

        // Own process group and cgroup, so timeouts and aborts can take the whole tree.
        if let Some(fd) = leaf_fd {
            // SAFETY: the hook runs in the forked child before exec and makes one
            // write(2) (async-signal-safe) to a descriptor opened by the parent.
            unsafe {
                cmd.pre_exec(move || cgroups::enter(fd));
            }
        }
        cmd.process_group(0)
            .stdin(if start.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        drop_privileges(&mut cmd);
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id() as i32;
        let stdin = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
        let stdout = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
        let stderr = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
        for f in [&stdin, &stdout, &stderr].into_iter().flatten() {
            let _ = sys::set_nonblocking(f.as_raw_fd());
        }
        // Bigger pipes mean fewer wakeups per megabyte under emulation.
        for f in [&stdout, &stderr].into_iter().flatten() {
            // SAFETY: F_SETPIPE_SZ on a pipe we own; no memory is involved.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        }
        // `child` is dropped without waiting: init reaps every pid itself.
        Ok(Process {
            pid,
            stdin,
            stdin_queue: VecDeque::new(),
            stdin_eof: false,
            stdin_unacked: 0,
            out: [Output::new(stdout, window), Output::new(stderr, window)],
            pty_master: None,
            deadline: start.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(u64::from(ms.get()))),
            timed_out: false,
            status: None,
            leaf,
            detached: false,
        })
    }

    /// Signals the whole process group (a pty process leads its own session
    /// and group); SIGKILL takes the command's whole cgroup, so processes that
    /// left the group (setsid, a fork bomb's children) go too.
    pub fn kill_group(&self, signal: i32) {
        if signal == libc::SIGKILL {
            if let Some(leaf) = &self.leaf {
                leaf.kill();
            }
        }
        let _ = sys::kill(-self.pid, signal);
    }

    /// Whether the kernel's OOM killer ended (part of) this command.
    pub fn oom_killed(&self) -> bool {
        self.leaf.as_ref().is_some_and(Leaf::oom_killed)
    }

    pub fn resize(&self, size: Resize) {
        if let Some(m) = &self.pty_master {
            let ws = libc::winsize { ws_row: size.rows.get(), ws_col: size.cols.get(), ws_xpixel: 0, ws_ypixel: 0 };
            // The kernel sends SIGWINCH to the terminal's foreground process group.
            // SAFETY: TIOCSWINSZ reads one winsize from `ws`; `m` is our pty master.
            unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
    }

    /// Writes queued stdin until the pipe is full; closes it after EOF was asked for.
    pub fn pump_stdin(&mut self) {
        while let Some(front) = self.stdin_queue.front_mut() {
            let Some(pipe) = self.stdin.as_mut() else {
                self.stdin_queue.clear();
                break;
            };
            match pipe.write(front) {
                Ok(n) => {
                    self.stdin_unacked += n as u64;
                    if n == front.len() {
                        self.stdin_queue.pop_front();
                    } else {
                        front.drain(..n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The reader went away (EPIPE): what is left can never be delivered,
                    // but acknowledge it so the host's writer does not wait forever.
                    self.stdin_unacked += self.stdin_queue.iter().map(|b| b.len() as u64).sum::<u64>();
                    self.stdin = None;
                    self.stdin_queue.clear();
                }
            }
        }
        if self.stdin_eof && self.pty_master.is_none() {
            self.stdin = None;
        } else if self.stdin_eof {
            // A terminal has no EOF of its own: ^D in canonical mode is what a shell expects.
            if let Some(w) = self.stdin.as_mut() {
                let _ = w.write(&[0x04]);
            }
            self.stdin_eof = false;
        }
    }

    /// Whether the Exit frame can go: reaped and every stream drained.
    pub fn finished(&self) -> bool {
        self.status.is_some() && self.out.iter().all(|o| o.drained)
    }
}

fn open_pty(size: Resize) -> io::Result<(File, File)> {
    // SAFETY: each call gets descriptors we then own (wrapped in File at once),
    // `name` is a buffer of the length ptsname_r is told, and TIOCSWINSZ reads one winsize.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = File::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) < 0 || libc::unlockpt(master.as_raw_fd()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if slave < 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = File::from_raw_fd(slave);
        let ws = libc::winsize { ws_row: size.rows.get(), ws_col: size.cols.get(), ws_xpixel: 0, ws_ypixel: 0 };
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        Ok((master, slave))
    }
}

/// The errno reported when the real one is not a valid errno value.
const EIO: I32In<1, 4095> = match I32In::new(libc::EIO) {
    Some(e) => e,
    None => panic!("EIO is an errno"),
};

pub fn start_failed(errno: i32, message: String) -> StartFailed {
    StartFailed {
        code: Text::truncated(sys::errno_name(errno)),
        errno: I32In::new(errno).unwrap_or(EIO),
        message: Text::truncated(message),
    }
}
