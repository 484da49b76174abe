//! One supervised guest process: its pipes, deadline and pending stdin.

use crate::sys;
use sandbox_protocol::{Start, StartFailed};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    pub pid: i32,
    pub stdin: Option<File>,
    /// Bytes the host sent that the process has not read yet.
    pub stdin_queue: VecDeque<Vec<u8>>,
    /// Close stdin once the queue drains.
    pub stdin_eof: bool,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
}

impl Process {
    pub fn spawn(
        start: &Start,
        base_env: &BTreeMap<String, String>,
        default_cwd: &str,
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
        cmd.args(&start.argv[1..])
            .env_clear()
            .envs(base_env)
            .envs(&start.env)
            .current_dir(cwd)
            // Own process group, so timeouts and aborts can take the whole tree.
            .process_group(0)
            .stdin(if start.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            start_failed(errno, format!("{program}: {e}"))
        })?;
        let pid = child.id() as i32;
        let stdin = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
        let stdout = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
        let stderr = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
        for f in [&stdin, &stdout, &stderr].into_iter().flatten() {
            let _ = sys::set_nonblocking(f.as_raw_fd());
        }
        // `child` is dropped without waiting: init reaps every pid itself.
        Ok(Process {
            pid,
            stdin,
            stdin_queue: VecDeque::new(),
            stdin_eof: false,
            stdout,
            stderr,
            deadline: start.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
            timed_out: false,
        })
    }

    /// Kills the whole process group.
    pub fn kill_group(&self, signal: i32) {
        let _ = sys::kill(-self.pid, signal);
    }

    /// Writes queued stdin until the pipe is full; closes it after EOF was asked for.
    pub fn pump_stdin(&mut self) {
        while let Some(front) = self.stdin_queue.front_mut() {
            let Some(pipe) = self.stdin.as_mut() else {
                self.stdin_queue.clear();
                break;
            };
            match pipe.write(front) {
                Ok(n) if n == front.len() => {
                    self.stdin_queue.pop_front();
                }
                Ok(n) => {
                    front.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The reader went away (EPIPE): nothing more can be delivered.
                    self.stdin = None;
                    self.stdin_queue.clear();
                }
            }
        }
        if self.stdin_eof {
            self.stdin = None;
        }
    }
}

fn start_failed(errno: i32, message: String) -> StartFailed {
    StartFailed { code: sys::errno_name(errno).to_string(), errno, message }
}
