//! VMM backends. Both present the same guest-visible devices (control port,
//! block disks), so the guest init and protocol do not care which one runs.

mod block;
pub mod fs;
mod kernel_stub;
mod krun_fs;
mod krun;
mod krun_snap;
mod qemu;

use crate::console::ConsoleTail;
use crate::diag::Diag;
use crate::error::HostError;
use crate::faults::Faults;
use crate::link::NodeTx;
use crate::service::{Router, Service};
use sandbox_protocol::{Accel, BackendKind, CowMode, Launch};
use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::sync::Arc;

/// Blocks until the VMM process ends.
pub type Waiter = Box<dyn FnOnce() -> Option<ExitStatus> + Send>;

/// A started VMM: its process, the host end of the guest control port and
/// the console tail used in error reports.
pub struct RunningVm {
    pub pid: i32,
    pub wait: Waiter,
    pub control: UnixStream,
    /// The helper's end of the guest NIC's frame stream, when the launch has a network.
    pub net: Option<UnixStream>,
    pub console: ConsoleTail,
    pub accel: Accel,
    /// What a checkpoint asks of the backend.
    pub snapshot: Option<Arc<dyn crate::snapshot::Capture>>,
}

/// The helper's services a backend wires its devices to.
pub struct Services {
    pub tx: NodeTx,
    pub diag: Diag,
    pub faults: Option<Arc<Faults>>,
    /// The block store of a persistent copy-on-write disk.
    pub block: Option<Arc<Service>>,
    /// The JavaScript filesystems of the mounts.
    pub files: Option<Arc<Service>>,
}

impl RunningVm {
    pub fn pid(&self) -> i32 {
        self.pid
    }
    pub fn accel(&self) -> Accel {
        self.accel
    }
}

/// QEMU's argument list for `launch` (used by benchmarks for the floor run).
pub fn qemu_args(launch: &Launch) -> Result<Vec<String>, HostError> {
    validate(launch)?;
    qemu::args(launch, &[])
}

/// Starts the VMM with its devices wired to `services`, and routes the reply
/// kinds those devices wait for (`router`). Device tasks run on `rt`.
pub fn launch(launch: &Launch, services: &Services, router: &mut Router, rt: &tokio::runtime::Handle) -> Result<RunningVm, HostError> {
    validate(launch)?;
    match launch.backend {
        BackendKind::Qemu => {
            if let Some(block) = &services.block {
                router.add_service(block.clone());
            }
            if let Some(files) = &services.files {
                router.add_service(files.clone());
            }
            qemu::spawn(launch, services, rt)
        }
        // The krun VMM child makes its filesystem calls itself; it routes their replies.
        BackendKind::Krun => krun::spawn(launch, services, router, rt),
    }
}

/// Checks every field a guest could be harmed or the host confused by.
fn validate(l: &Launch) -> Result<(), HostError> {
    for a in &l.cmdline {
        if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(HostError::InvalidLaunch(format!("kernel argument {a:?} is empty or has whitespace")));
        }
    }
    for d in &l.disks {
        if let Some(c) = &d.cow {
            if c.mode == CowMode::Persistent && l.backend != BackendKind::Qemu {
                return Err(HostError::InvalidLaunch("persistent copy-on-write disks need the qemu backend".into()));
            }
            if !c.block_size.get().is_power_of_two() {
                return Err(HostError::InvalidLaunch(format!("cow block size {} must be a power of two from 4096 to 1048576", c.block_size)));
            }
            if c.max_dirty_bytes.get() < u64::from(c.block_size.get()) {
                return Err(HostError::InvalidLaunch("cow maxDirtyBytes must hold at least one block".into()));
            }
        }
        if d.path.contains(',') {
            return Err(HostError::InvalidLaunch(format!("disk path {:?} contains a comma", d.path)));
        }
    }
    if l.mounts.len() > qemu::MAX_MOUNTS {
        return Err(HostError::InvalidLaunch(format!("at most {} virtual filesystem mounts", qemu::MAX_MOUNTS)));
    }
    if l.backend == BackendKind::Krun {
        if let Some(why) = krun_snap::restore_refusal(l) {
            return Err(HostError::InvalidLaunch(why));
        }
    }
    for m in &l.mounts {
        if m.tag.is_empty() || m.tag.len() > 36 || !m.tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(HostError::InvalidLaunch(format!("virtio-fs tag {:?} must be 1-36 characters of [A-Za-z0-9_-]", m.tag)));
        }
        if let Some(sock) = &m.external_socket {
            if l.backend != BackendKind::Qemu || l.restore.is_some() {
                return Err(HostError::InvalidLaunch("an external virtio-fs socket needs the qemu backend and a fresh boot".into()));
            }
            if sock.contains(',') {
                return Err(HostError::InvalidLaunch(format!("external virtio-fs socket {sock:?} contains a comma")));
            }
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

/// Whether a libkrun guest can run on this host (no VM is booted). The same
/// facts decide whether QEMU may use KVM: a libkrun guest and an ordinary
/// kernel under QEMU/KVM need the same thing, real hardware virtualization.
pub fn probe_krun() -> KrunProbe {
    let p = sandbox_krun::probe_host();
    KrunProbe { usable: p.usable, reason: p.reason, hardware_virtualization: p.usable }
}
