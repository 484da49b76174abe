//! Containment of the workload with cgroup v2, so no command can take init,
//! the control port or the kernel down with it:
//!
//! ```text
//! /sys/fs/cgroup/              (root: kernel threads)
//! ├── init/                    init itself, cpu.weight 10000
//! └── workload/                cpu.weight 100, memory.max, pids.max = 4 × per command
//!     ├── c1-…/                one command's process tree: pids.max, memory.oom.group
//!     └── c2-…/
//! ```
//!
//! Each command starts in a leaf of its own (the child moves itself in
//! before exec, so nothing it forks escapes), which lets init kill the whole
//! tree at once (`cgroup.kill`: a fork bomb included), tell an OOM kill from
//! any other SIGKILL (`memory.events`), and bound the processes one command
//! may have. A leaf whose survivors outlive the command is removed once empty.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// How much of the CPU init gets against the workload when both want it (100 : 10000).
const INIT_WEIGHT: &str = "10000";
const WORKLOAD_WEIGHT: &str = "100";
/// Commands that may hit their process limit at once before the workload's own limit.
const COMMANDS_AT_LIMIT: u32 = 4;

pub struct Containment {
    workload: PathBuf,
    max_processes: u32,
    next: u64,
    /// Leaves of finished commands that still had processes.
    lingering: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

fn at(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    write(&dir.join(file), value).map_err(|e| format!("write {value:?} to {}: {e}", dir.join(file).display()))
}

impl Containment {
    /// Mounts cgroup2 and builds the tree; moves init into its own group.
    pub fn setup(max_processes: u32, workload_memory_mib: u32) -> Result<Self, String> {
        let root = Path::new(ROOT);
        if !root.join("cgroup.controllers").exists() {
            crate::sys::mount("cgroup2", root, "cgroup2", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None)
                .map_err(|e| format!("mount cgroup2 on {ROOT}: {e}"))?;
        }
        at(root, "cgroup.subtree_control", "+pids +memory +cpu")?;
        let init = root.join("init");
        let workload = root.join("workload");
        for dir in [&init, &workload] {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("create {}: {e}", dir.display())),
            }
        }
        at(&init, "cgroup.procs", "0")?;
        at(&init, "cpu.weight", INIT_WEIGHT)?;
        at(&workload, "cpu.weight", WORKLOAD_WEIGHT)?;
        at(&workload, "pids.max", &max_processes.saturating_mul(COMMANDS_AT_LIMIT).to_string())?;
        at(&workload, "memory.max", &(u64::from(workload_memory_mib) << 20).to_string())?;
        // No swap in the guest, but never let the workload's memory go to swap either.
        let _ = at(&workload, "memory.swap.max", "0");
        at(&workload, "cgroup.subtree_control", "+pids +memory")?;
        Ok(Self { workload, max_processes, next: 0, lingering: Vec::new() })
    }

    /// A new leaf for the command on `channel`.
    pub fn leaf(&mut self, channel: u32) -> Result<Leaf, String> {
        self.next += 1;
        let dir = self.workload.join(format!("c{channel}-{}", self.next));
        fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let made = (|| {
            at(&dir, "pids.max", &self.max_processes.to_string())?;
            // One command is one unit for the OOM killer: its whole tree goes.
            at(&dir, "memory.oom.group", "1")?;
            // Rust opens with O_CLOEXEC: the descriptor never reaches the workload.
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map_err(|e| format!("open {}: {e}", dir.join("cgroup.procs").display()))
        })();
        match made {
            Ok(procs) => Ok(Leaf { dir, procs }),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// A finished command's leaf: removed now if empty, else once it is.
    pub fn release(&mut self, leaf: Leaf) {
        let Leaf { dir, procs } = leaf;
        drop(procs);
        if fs::remove_dir(&dir).is_err() {
            self.lingering.push(dir);
        }
    }

    /// Whether leaves of finished commands still wait for their last process.
    pub fn has_lingering(&self) -> bool {
        !self.lingering.is_empty()
    }

    /// Removes lingering leaves whose last process has exited.
    pub fn sweep(&mut self) {
        self.lingering.retain(|dir| fs::remove_dir(dir).is_err() && dir.exists());
    }
}

/// One command's cgroup.
pub struct Leaf {
    dir: PathBuf,
    procs: File,
}

impl Leaf {
    /// The `cgroup.procs` descriptor a forked child writes "0" to, moving itself in.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// SIGKILL to every process in the leaf at once, forks in flight included.
    pub fn kill(&self) {
        let _ = write(&self.dir.join("cgroup.kill"), "1");
    }

    /// Whether the kernel's OOM killer killed anything in this leaf.
    pub fn oom_killed(&self) -> bool {
        fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok())))
            .is_some_and(|n| n > 0)
    }
}

/// Moves the calling process into the leaf behind `procs_fd`. Runs in the
/// forked child before exec: a single write(2), async-signal-safe.
pub fn enter(procs_fd: RawFd) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a descriptor the parent opened for us.
    let n = unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
