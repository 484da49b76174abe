//! krun backend: libkrun (msb_krun) in a forked child of the helper.
//!
//! `Vm::enter()` takes over its process and `_exit`s at guest shutdown, so the
//! helper forks first: the child becomes the VMM, the helper stays the
//! supervisor and relay, exactly as with QEMU.

use super::RunningVm;
use crate::console::ConsoleTail;
use crate::error::HostError;
use sandbox_krun::{ControlPort, DiskFormat, KrunDisk, KrunLaunch};
use sandbox_protocol::{Launch, CONTROL_PORT_NAME};
use std::os::fd::OwnedFd;
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
            Ok(KrunDisk {
                id: format!("disk{i}"),
                path: PathBuf::from(&d.path),
                read_only: d.read_only,
                format: match d.format.as_str() {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    other => return Err(HostError::InvalidLaunch(format!("disk format {other:?}"))),
                },
            })
        })
        .collect::<Result<Vec<_>, HostError>>()?;
    let launch = KrunLaunch {
        libkrunfw_path: PathBuf::from(l.krunfw.as_deref().ok_or_else(|| missing("a libkrunfw path"))?),
        cpus: l.cpus,
        memory_mib: l.memory_mib,
        root_fs_dir: PathBuf::from(l.init_root.as_deref().ok_or_else(|| missing("an init root directory"))?),
        disks,
        control_port: ControlPort { name: CONTROL_PORT_NAME.to_string(), fd: control },
        net_mac: net.as_ref().map(|_| super::qemu::GUEST_MAC_BYTES),
        net_fd: net,
        init_path: "/init".to_string(),
        kernel_cmdline_extra: l.cmdline.clone(),
        console_log: None,
        fs_mounts: Vec::new(),
    };
    Ok(launch)
}

pub fn spawn(l: &Launch, files: &std::sync::Arc<crate::fs_bridge::FsBridge>, rt: &tokio::runtime::Handle) -> Result<RunningVm, HostError> {
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
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        let mut launch = launch;
        // Kept alive for the VM's life: its thread drives the mount socket.
        let _mount_rt = match fs_vmm.map(|sock| super::krun_fs::child_mounts(l, sock)).transpose() {
            Ok(Some((rt, mounts))) => {
                launch.fs_mounts = mounts;
                Some(rt)
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!("sandbox-host: krun mounts: {e}");
                unsafe { libc::_exit(1) };
            }
        };
        let err = match sandbox_krun::enter(launch) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        eprintln!("sandbox-host: krun: {err}");
        unsafe { libc::_exit(1) };
    }
    drop(launch);
    drop(fs_vmm);
    if let Some(sock) = fs_host {
        super::krun_fs::serve_child(sock, files, rt)?;
    }
    Ok(RunningVm {
        pid,
        wait: Box::new(move || {
            let mut status = 0;
            loop {
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
        console: ConsoleTail::default(),
        accel: if cfg!(target_os = "macos") { "hvf".into() } else { "kvm".into() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_protocol::{BackendKind, Disk};

    #[test]
    fn translation_requires_krun_inputs() {
        let (_a, b) = UnixStream::pair().unwrap();
        let l = Launch {
            backend: BackendKind::Krun,
            cpus: 1,
            memory_mib: 512,
            kernel: String::new(),
            initrd: None,
            krunfw: None,
            init_root: Some("/tmp".into()),
            cmdline: vec![],
            disks: vec![Disk { path: "/x.qcow2".into(), format: "qcow2".into(), read_only: true, cow: None }],
            qemu: None,
            accel: None,
            network: None,
            mounts: vec![],
        };
        let err = to_krun(&l, OwnedFd::from(b), None).err().unwrap().to_string();
        assert!(err.contains("libkrunfw"), "{err}");
    }

    #[test]
    fn network_socket_becomes_the_virtio_net_device() {
        let dir = std::env::temp_dir();
        let (fw, disk) = (dir.join("libkrunfw.so.5"), dir.join("root.qcow2"));
        let mut l = Launch {
            backend: BackendKind::Krun,
            cpus: 1,
            memory_mib: 512,
            kernel: String::new(),
            initrd: None,
            krunfw: Some(fw.display().to_string()),
            init_root: Some(dir.display().to_string()),
            cmdline: vec![],
            disks: vec![Disk { path: disk.display().to_string(), format: "qcow2".into(), read_only: true, cow: None }],
            qemu: None,
            accel: None,
            network: Some(sandbox_protocol::NetLaunch { policy_deadline_ms: 1000, max_flows: 4, allow_protected: vec![], intercept_socket: None }),
            mounts: vec![],
        };
        let (_c, ctl) = UnixStream::pair().unwrap();
        let (_n, net) = UnixStream::pair().unwrap();
        let k = translate(&l, OwnedFd::from(ctl), Some(OwnedFd::from(net))).unwrap();
        assert!(k.net_fd.is_some());
        assert_eq!(k.net_mac, Some(crate::backend::qemu::GUEST_MAC_BYTES));
        let (_c, ctl) = UnixStream::pair().unwrap();
        assert!(translate(&l, OwnedFd::from(ctl), None).unwrap_err().to_string().contains("network socket"));
        l.network = None;
        let (_c, ctl) = UnixStream::pair().unwrap();
        assert!(translate(&l, OwnedFd::from(ctl), None).unwrap().net_fd.is_none());
        let (_c, ctl) = UnixStream::pair().unwrap();
        let (_n, net) = UnixStream::pair().unwrap();
        assert!(translate(&l, OwnedFd::from(ctl), Some(OwnedFd::from(net))).unwrap_err().to_string().contains("network socket"));
    }
}
