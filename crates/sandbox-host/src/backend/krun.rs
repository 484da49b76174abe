//! krun backend: libkrun (msb_krun) in a forked child of the helper.
//!
//! `Vm::enter()` takes over its process and `_exit`s at guest shutdown, so the
//! helper forks first: the child becomes the VMM, the helper stays the
//! supervisor and relay, exactly as with QEMU.

use super::{RunningVm, Services};
use crate::console::ConsoleTail;
use crate::error::HostError;
use crate::service::Router;
use sandbox_krun::{ControlPort, DiskFormat, KrunDisk, KrunLaunch};
use sandbox_protocol::{self as proto, Accel, DiagnosticSource, Launch, CONTROL_PORT_NAME};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Translates the backend-neutral launch request into libkrun's terms.
/// `net`: the VMM's end of the guest NIC's frame stream (same framing as QEMU's
/// `-netdev stream`), present exactly when the launch has a network.
pub fn to_krun(l: &Launch, control: OwnedFd, net: Option<OwnedFd>) -> Result<KrunLaunch, HostError> {
    let launch = translate(l, control, net)?;
    sandbox_krun::validate(&launch).map_err(|e| HostError::InvalidLaunch(e.to_string()))?;
    Ok(launch)
}

/// The translation alone (no checks of the files it names).
fn translate(l: &Launch, control: OwnedFd, net: Option<OwnedFd>) -> Result<KrunLaunch, HostError> {
    if l.network.is_some() != net.is_some() {
        return Err(HostError::InvalidLaunch("a network launch needs exactly one network socket".into()));
    }
    let missing = |what: &str| HostError::InvalidLaunch(format!("krun needs {what}"));
    let disks = l
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            // libkrun opens the file itself: a copy-on-write root given to it as
            // is would have the guest write straight into the base image.
            if d.cow.is_some() {
                return Err(HostError::InvalidLaunch(
                    "the krun backend cannot serve a copy-on-write root (rootfs.ephemeral / rootfs.cow) yet: use a read-only root, or backend \"qemu\"".into(),
                ));
            }
            Ok(KrunDisk {
                id: format!("disk{i}"),
                path: PathBuf::from(&d.path),
                read_only: d.read_only,
                format: match d.format {
                    proto::DiskFormat::Qcow2 => DiskFormat::Qcow2,
                    proto::DiskFormat::Raw => DiskFormat::Raw,
                },
            })
        })
        .collect::<Result<Vec<_>, HostError>>()?;
    let launch = KrunLaunch {
        libkrunfw_path: PathBuf::from(l.krunfw.as_deref().ok_or_else(|| missing("a libkrunfw path"))?),
        // 1..=64 by the launch's own type.
        cpus: u8::try_from(l.cpus.get()).unwrap_or(u8::MAX),
        memory_mib: l.memory_mib.get(),
        root_fs_dir: PathBuf::from(l.init_root.as_deref().ok_or_else(|| missing("an init root directory"))?),
        disks,
        control_port: ControlPort { name: CONTROL_PORT_NAME.to_string(), fd: control },
        net_mac: net.as_ref().map(|_| super::qemu::GUEST_MAC_BYTES),
        net_fd: net,
        init_path: "/init".to_string(),
        kernel_cmdline_extra: l.cmdline.iter().map(|a| a.to_string()).collect(),
        console_log: None,
        fs_mounts: Vec::new(),
        restore: super::krun_snap::krun_restore(l),
    };
    Ok(launch)
}

pub fn spawn(l: &Launch, services: &Services, router: &mut Router, rt: &tokio::runtime::Handle) -> Result<RunningVm, HostError> {
    let (host_end, guest_end) =
        UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair: {e}")))?;
    // Virtual filesystems: the child serves them in libkrun and asks Node through us.
    let (fs_host, fs_vmm) = if l.mounts.is_empty() {
        (None, None)
    } else {
        let (a, b) = UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair for mounts: {e}")))?;
        (Some(a), Some(b))
    };
    let (net_host, net_vmm) = match &l.network {
        Some(_) => {
            let (a, b) = UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair for the network: {e}")))?;
            (Some(a), Some(OwnedFd::from(b)))
        }
        None => (None, None),
    };
    let launch = to_krun(l, OwnedFd::from(guest_end), net_vmm)?;
    // Checkpoints: the helper asks the child, which holds libkrun's VmControl.
    let (snap_host, snap_vmm) = UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair for checkpoints: {e}")))?;
    // The child's stderr (libkrun's and our own messages) becomes console tail and diagnostics.
    let (err_rx, err_tx) = std::io::pipe().map_err(|e| HostError::Setup(format!("pipe for the VMM's stderr: {e}")))?;
    let faults = services.faults.clone();
    // SAFETY: the helper is still single-threaded here (no runtime, no console
    // threads), so the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(HostError::Setup(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if pid == 0 {
        drop(host_end);
        drop(net_host);
        drop(fs_host);
        drop(snap_host);
        drop(err_rx);
        // SAFETY: prctl and dup2 have no memory effects; err_tx is an open pipe end we own.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::dup2(err_tx.as_raw_fd(), 2);
        }
        drop(err_tx);
        let mut launch = launch;
        // Kept alive for the VM's life: its thread drives the mount socket.
        let _mount_rt = match fs_vmm.map(|sock| super::krun_fs::child_mounts(l, sock, faults)).transpose() {
            Ok(Some((rt, mounts))) => {
                launch.fs_mounts = mounts;
                Some(rt)
            }
            Ok(None) => None,
            Err(e) => {
                // Read by the parent from our stderr pipe.
                eprintln!("krun mounts: {e}");
                // SAFETY: _exit ends this forked child without running the parent's destructors.
                unsafe { libc::_exit(1) };
            }
        };
        let err = match enter_serving_checkpoints(launch, snap_vmm) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        eprintln!("krun: {err}");
        // SAFETY: as above.
        unsafe { libc::_exit(1) };
    }
    drop(launch);
    drop(snap_vmm);
    drop(fs_vmm);
    drop(err_tx);
    if let Some(sock) = fs_host {
        super::krun_fs::serve_child(sock, services.tx.clone(), services.diag.clone(), router, rt)?;
    }
    let console = ConsoleTail::default();
    let (tail, diag) = (console.clone(), services.diag.clone());
    std::thread::spawn(move || {
        let mut err_rx = err_rx;
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_rx.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.push(&buf[..n]);
            diag.warn(DiagnosticSource::Vmm, String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
        }
    });
    let capture = super::krun_snap::KrunCapture::new(snap_host, super::krun_snap::refusal(l));
    Ok(RunningVm {
        snapshot: Some(std::sync::Arc::new(capture)),
        pid,
        wait: Box::new(move || {
            let mut status = 0;
            loop {
                // SAFETY: waitpid writes only `status`; pid is our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                if r == pid {
                    return Some(ExitStatus::from_raw(status));
                }
                if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    return None;
                }
            }
        }),
        control: host_end,
        net: net_host,
        console,
        accel: if cfg!(target_os = "macos") { Accel::Hvf } else { Accel::Kvm },
    })
}

/// In the VMM child: builds the VM (restoring it when asked), serves the
/// helper's checkpoint requests on `snap` from a thread, and enters the VM.
fn enter_serving_checkpoints(launch: KrunLaunch, snap: UnixStream) -> Result<std::convert::Infallible, sandbox_krun::KrunError> {
    let built = sandbox_krun::prepare(launch)?.build()?;
    let control = built.control();
    std::thread::Builder::new()
        .name("krun-checkpoint".into())
        .spawn(move || {
            super::krun_snap::serve(snap, |dir| {
                let stats = sandbox_krun::checkpoint(&control, dir).map_err(|e| e.to_string())?;
                Ok((u64::try_from(stats.paused.as_millis()).unwrap_or(u64::MAX), stats.ram_bytes))
            })
        })
        .map_err(|e| sandbox_krun::KrunError::Snapshot(format!("starting the checkpoint thread: {e}")))?;
    built.enter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn launch(krunfw: Option<String>, disk: &str, network: bool) -> Launch {
        let mut l = json!({
            "backend": "krun", "cpus": 1, "memoryMib": 512, "kernel": "", "initRoot": std::env::temp_dir(),
            "cmdline": [], "mounts": [], "disks": [{ "path": disk, "format": "qcow2", "readOnly": true }],
        });
        if let Some(fw) = krunfw {
            l["krunfw"] = json!(fw);
        }
        if network {
            l["network"] = json!({ "policyDeadlineMs": 1000, "maxFlows": 4, "allowProtected": [] });
        }
        serde_json::from_value(l).unwrap()
    }

    #[test]
    fn translation_requires_krun_inputs() {
        let (_a, b) = UnixStream::pair().unwrap();
        let err = to_krun(&launch(None, "/x.qcow2", false), OwnedFd::from(b), None).err().unwrap().to_string();
        assert!(err.contains("libkrunfw"), "{err}");
    }

    #[test]
    fn copy_on_write_roots_are_refused_not_opened_writable() {
        let dir = std::env::temp_dir();
        let fw = dir.join("libkrunfw.so.5").display().to_string();
        let mut l = launch(Some(fw), &dir.join("root.qcow2").display().to_string(), false);
        l.disks[0].read_only = false;
        l.disks[0].cow = Some(serde_json::from_value(json!({ "mode": "ephemeral", "blockSize": 65536, "maxDirtyBytes": 1048576 })).unwrap());
        let (_c, ctl) = UnixStream::pair().unwrap();
        let err = translate(&l, OwnedFd::from(ctl), None).unwrap_err().to_string();
        assert!(err.contains("copy-on-write"), "{err}");
    }

    #[test]
    fn network_socket_becomes_the_virtio_net_device() {
        let dir = std::env::temp_dir();
        let fw = dir.join("libkrunfw.so.5").display().to_string();
        let disk = dir.join("root.qcow2").display().to_string();
        let l = launch(Some(fw.clone()), &disk, true);
        let (_c, ctl) = UnixStream::pair().unwrap();
        let (_n, net) = UnixStream::pair().unwrap();
        let k = translate(&l, OwnedFd::from(ctl), Some(OwnedFd::from(net))).unwrap();
        assert!(k.net_fd.is_some());
        assert_eq!(k.net_mac, Some(crate::backend::qemu::GUEST_MAC_BYTES));
        let (_c, ctl) = UnixStream::pair().unwrap();
        assert!(translate(&l, OwnedFd::from(ctl), None).unwrap_err().to_string().contains("network socket"));
        let l = launch(Some(fw), &disk, false);
        let (_c, ctl) = UnixStream::pair().unwrap();
        assert!(translate(&l, OwnedFd::from(ctl), None).unwrap().net_fd.is_none());
        let (_c, ctl) = UnixStream::pair().unwrap();
        let (_n, net) = UnixStream::pair().unwrap();
        assert!(translate(&l, OwnedFd::from(ctl), Some(OwnedFd::from(net))).unwrap_err().to_string().contains("network socket"));
    }
}
