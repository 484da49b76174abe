//! VMM backends. Both present the same guest-visible devices (control port,
//! block disks), so the guest init and protocol do not care which one runs.

mod qemu;

use crate::console::ConsoleTail;
use crate::error::HostError;
use sandbox_protocol::{BackendKind, Launch};
use std::os::unix::net::UnixStream;
use std::process::Child;

/// A started VMM: its process, the host end of the guest control port and
/// the console tail used in error reports.
pub struct RunningVm {
    pub child: Child,
    pub control: UnixStream,
    pub console: ConsoleTail,
    pub accel: String,
}

impl RunningVm {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn accel(&self) -> &str {
        &self.accel
    }
}

pub fn launch(launch: &Launch) -> Result<RunningVm, HostError> {
    validate(launch)?;
    match launch.backend {
        BackendKind::Qemu => qemu::spawn(launch),
        BackendKind::Krun => Err(HostError::Launch {
            backend: "krun",
            message: probe_krun().reason,
        }),
    }
}

/// Checks every field a guest could be harmed or the host confused by.
fn validate(l: &Launch) -> Result<(), HostError> {
    if l.cpus == 0 || l.cpus > 64 {
        return Err(HostError::InvalidLaunch(format!("cpus must be 1..=64, got {}", l.cpus)));
    }
    if !(64..=1 << 20).contains(&l.memory_mib) {
        return Err(HostError::InvalidLaunch(format!("memoryMiB must be 64..=1048576, got {}", l.memory_mib)));
    }
    for a in &l.cmdline {
        if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(HostError::InvalidLaunch(format!("kernel argument {a:?} is empty or has whitespace")));
        }
    }
    for d in &l.disks {
        if !matches!(d.format.as_str(), "raw" | "qcow2") {
            return Err(HostError::InvalidLaunch(format!("disk format {:?} is not raw or qcow2", d.format)));
        }
        if d.path.contains(',') {
            return Err(HostError::InvalidLaunch(format!("disk path {:?} contains a comma", d.path)));
        }
    }
    Ok(())
}

pub struct KrunProbe {
    pub usable: bool,
    pub reason: String,
    /// KVM backed by real hardware virtualization (QEMU can use `-accel kvm`).
    pub hardware_virtualization: bool,
}

/// Whether a libkrun guest can run on this host (no VM is booted).
pub fn probe_krun() -> KrunProbe {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let hardware_virtualization = hw && kvm && !pvm;
    KrunProbe { usable: false, reason: "the krun backend is not built into this helper".into(), hardware_virtualization }
}
