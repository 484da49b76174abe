//! QEMU backend: Debian's qemu-system-x86_64 as a child of the helper,
//! KVM when the host really has hardware virtualization, TCG otherwise.

use super::{RunningVm, Services};
use crate::console::ConsoleTail;
use crate::error::HostError;
use crate::lifeline;
use sandbox_protocol::{Accel, Launch, CONTROL_PORT_NAME};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The control-port socket's descriptor number inside the QEMU process.
const QEMU_CONTROL_FD: i32 = 3;
/// NBD sockets of copy-on-write disks follow, in disk order.
const FIRST_NBD_FD: i32 = 4;
const MAX_COW_DISKS: usize = 8;
/// The guest NIC's MAC; `sandbox_net::NetConfig::default().guest_mac` expects it.
pub const GUEST_MAC: &str = "02:53:42:00:00:0f";
pub const GUEST_MAC_BYTES: [u8; 6] = [0x02, 0x53, 0x42, 0x00, 0x00, 0x0f];

/// The network socket follows the NBD sockets.
fn net_fd(l: &Launch) -> i32 {
    // At most MAX_COW_DISKS: no truncation.
    FIRST_NBD_FD + i32::try_from(l.disks.iter().filter(|d| d.cow.is_some()).count()).unwrap_or(i32::MAX)
}

/// QEMU's private monitor (QMP) follows the network socket, then the guest RAM memfd.
fn qmp_fd(l: &Launch) -> i32 {
    net_fd(l) + i32::from(l.network.is_some())
}

fn ram_fd(l: &Launch) -> i32 {
    qmp_fd(l) + 1
}

/// Whether QEMU gets the helper's RAM memfd: always, except for a restore
/// without mounts (that maps the snapshot's RAM file itself).
fn has_ram_memfd(l: &Launch) -> bool {
    !(l.restore.is_some() && l.mounts.is_empty())
}

/// A restore's stub kernel follows the RAM memfd (see `kernel_stub`).
fn kernel_stub_fd(l: &Launch) -> i32 {
    ram_fd(l) + i32::from(has_ram_memfd(l))
}

/// virtio-fs devices per VM.
pub const MAX_MOUNTS: usize = 16;

/// The TCG guest CPU. Without ERMS/FSRM the guest kernel copies and clears
/// with `rep movsq`/`rep stosq` instead of `rep movsb`/`stosb`, which TCG runs
/// one byte per iteration: measured 2.8x more stdout throughput and 11% faster
/// boots (docs/decisions.md).
const TCG_CPU: &str = "max,erms=off,fsrm=off";

/// TCG translation cache, MiB. QEMU's default (1 GiB) fills as guest processes
/// come and go: a thousand fork+execs took one VM from 235 to 1,385 MiB RSS.
/// 128 MiB bounds that with no measured slowdown (python, node, git, exec loops).
const TCG_TB_MIB: u32 = 128;

/// Builds QEMU's argument list; pure so it can be unit-tested. `fs_sockets`
/// holds the vhost-user socket of each mount, in mount order.
pub fn args(l: &Launch, fs_sockets: &[PathBuf]) -> Result<Vec<String>, HostError> {
    // A restore plugs the mounts' devices in once the VM runs (see `snapshot::plug_mounts`).
    let fs_expected = if l.restore.is_some() { 0 } else { l.mounts.len() };
    if fs_sockets.len() != fs_expected {
        return Err(HostError::InvalidLaunch(format!("{} mounts but {} virtio-fs sockets", l.mounts.len(), fs_sockets.len())));
    }
    let accel = l.accel.unwrap_or(Accel::Tcg);
    if accel == Accel::Hvf {
        return Err(HostError::InvalidLaunch("qemu runs guests with kvm or tcg, not hvf".into()));
    }
    let initrd = l.initrd.as_deref().ok_or_else(|| HostError::InvalidLaunch("qemu needs an initrd".into()))?;
    // Boot-time trims: no legacy keyboard/mouse probing, one UART, trusted TSC,
    // no crypto self-tests, no speculative-execution mitigations (the VM
    // boundary, not the guest kernel, isolates the sandbox from the host).
    let mut cmdline = vec![
        "console=ttyS0", "quiet", "panic=-1", "rdinit=/init",
        "mitigations=off", "i8042.noaux", "i8042.nokbd", "i8042.nopnp", "8250.nr_uarts=1",
        "tsc=reliable", "no_timer_check", "cryptomgr.notests",
    ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    cmdline.extend(l.cmdline.iter().map(|a| a.to_string()));
    let mut a: Vec<String> = vec![
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // Guest RAM is the helper's memfd, shared: vhost-user devices map it, and a
    // checkpoint copies it while migration skips it (x-ignore-shared). A
    // restored VM maps the snapshot's RAM file privately: forks share its
    // pages copy-on-write.
    a.extend(["-M".into(), "q35,memory-backend=mem".into()]);
    match &l.restore {
        None => a.extend(["-object".into(), format!("memory-backend-file,id=mem,size={}M,mem-path=/proc/self/fd/{},share=on", l.memory_mib, ram_fd(l))]),
        Some(r) => {
            let ram = crate::snapshot::ram_path(std::path::Path::new(r.dir.as_str()), l.memory_mib.get()).map_err(HostError::InvalidLaunch)?;
            let ram = ram.to_str().filter(|p| !p.contains(',')).ok_or_else(|| HostError::InvalidLaunch(format!("unusable snapshot path {}", ram.display())))?.to_string();
            if l.mounts.is_empty() {
                a.extend(["-object".into(), format!("memory-backend-file,id=mem,size={}M,mem-path={ram},share=off", l.memory_mib)]);
            } else {
                // vhost-user devices map guest RAM themselves: it must be shared,
                // so a restore with mounts gets a memfd filled from the snapshot.
                a.extend(["-object".into(), format!("memory-backend-file,id=mem,size={}M,mem-path=/proc/self/fd/{},share=on", l.memory_mib, ram_fd(l))]);
            }
            a.extend(["-incoming".into(), "defer".into()]);
        }
    }
    a.extend(["-chardev".into(), format!("socket,id=qmp,fd={}", qmp_fd(l))]);
    a.extend(["-mon".into(), "chardev=qmp,mode=control".into()]);
    a.push("-accel".into());
    a.push(if accel == Accel::Tcg { format!("tcg,thread=multi,tb-size={TCG_TB_MIB}") } else { "kvm".into() });
    a.extend(["-cpu".into(), if accel == Accel::Kvm { "host".into() } else { TCG_CPU.into() }]);
    a.extend(["-smp".into(), l.cpus.to_string(), "-m".into(), l.memory_mib.to_string()]);
    // A restore needs the same devices and ROMs, not the kernel's bytes (see kernel_stub).
    let kernel = if l.restore.is_some() { format!("/proc/self/fd/{}", kernel_stub_fd(l)) } else { l.kernel.clone() };
    a.extend(["-kernel".into(), kernel, "-initrd".into(), initrd.to_string()]);
    a.extend(["-append".into(), cmdline.join(" ")]);
    a.extend(["-serial".into(), "stdio".into()]);
    a.extend(["-device".into(), "virtio-serial-pci,max_ports=2".into()]);
    a.extend(["-chardev".into(), format!("socket,id=ctl,fd={QEMU_CONTROL_FD}")]);
    a.extend(["-device".into(), format!("virtserialport,chardev=ctl,name={CONTROL_PORT_NAME}")]);
    let mut nbd_fd = FIRST_NBD_FD;
    for (i, d) in l.disks.iter().enumerate() {
        let ro = if d.read_only { "on" } else { "off" };
        if d.cow.is_some() {
            // The helper's copy-on-write engine serves this disk over NBD on an
            // inherited socket; errors are reported to the guest, never pause the VM.
            a.extend([
                "-blockdev".into(),
                format!("driver=nbd,node-name=disk{i},server.type=fd,server.str={nbd_fd},read-only={ro},cache.direct=off,cache.no-flush=off"),
                "-device".into(),
                format!("virtio-blk-pci,drive=disk{i},werror=report,rerror=report"),
            ]);
            nbd_fd += 1;
            continue;
        }
        a.extend([
            "-drive".into(),
            format!("file={},if=none,id=disk{i},format={},readonly={ro},cache=unsafe,aio=threads", d.path, d.format.as_str()),
            "-device".into(),
            format!("virtio-blk-pci,drive=disk{i}"),
        ]);
    }
    if l.network.is_some() {
        // Length-prefixed Ethernet frames on an inherited socket, served by the helper's
        // userspace stack; no option ROM (the kernel is booted directly).
        a.extend([
            "-netdev".into(),
            format!("stream,id=net0,server=off,addr.type=fd,addr.str={}", net_fd(l)),
            "-device".into(),
            format!("virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile="),
        ]);
    }
    // Each mount's device sits on a root port of its own, so a checkpoint can
    // unplug it (QEMU 7.2 cannot migrate vhost-user-fs) and plug it back.
    for i in 0..l.mounts.len() {
        a.extend(["-device".into(), format!("pcie-root-port,id={},chassis={}", crate::snapshot::mount_port_id(i), i + 1)]);
    }
    for (i, (m, sock)) in l.mounts.iter().zip(fs_sockets).enumerate() {
        let path = sock.to_str().filter(|p| !p.contains(',')).ok_or_else(|| HostError::Setup(format!("unusable socket path {}", sock.display())))?;
        a.extend([
            "-chardev".into(),
            format!("socket,id={},path={path}", crate::snapshot::mount_chardev_id(i)),
            "-device".into(),
            format!(
                "vhost-user-fs-pci,id={},bus={},chardev={},tag={},queue-size={}",
                crate::snapshot::mount_device_id(i),
                crate::snapshot::mount_port_id(i),
                crate::snapshot::mount_chardev_id(i),
                m.tag,
                sandbox_fs::device::QUEUE_SIZE
            ),
        ]);
    }
    Ok(a)
}

pub fn spawn(l: &Launch, services: &Services, rt: &tokio::runtime::Handle) -> Result<RunningVm, HostError> {
    let mounts = services.files.as_ref().filter(|_| !l.mounts.is_empty()).map(|files| super::fs::MountServer::new(l, files, &services.diag, rt));
    let fs_sockets = match (&mounts, &l.restore) {
        (Some(m), None) => l
            .mounts
            .iter()
            .enumerate()
            .map(|(i, mount)| match &mount.external_socket {
                // Bench-only reference (e.g. the C virtiofsd): QEMU connects to it directly.
                Some(path) => Ok(PathBuf::from(path)),
                None => m.serve(i).map_err(HostError::Setup),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    if mounts.is_none() && !l.mounts.is_empty() {
        return Err(HostError::InvalidLaunch("mounts without a filesystem service".into()));
    }
    let argv = args(l, &fs_sockets)?;
    let qemu = l.qemu.clone().unwrap_or_else(|| "qemu-system-x86_64".into());
    let (host_end, guest_end) =
        UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair: {e}")))?;
    let guest_fd = guest_end.as_raw_fd();
    let restore_dir = l.restore.as_ref().map(|r| PathBuf::from(r.dir.as_str()));
    let mut nbd_ends = Vec::new();
    let mut disk_handles = Vec::new();
    for (i, d) in l.disks.iter().enumerate() {
        if d.cow.is_none() {
            continue;
        }
        let saved = restore_dir.as_ref().map(|dir| dir.join(crate::snapshot::blocks_file(i))).filter(|f| f.exists());
        let (end, handle, layer) = super::block::serve_cow(d, services, saved.as_deref())?;
        nbd_ends.push(end);
        disk_handles.push(crate::disk_capture::CaptureDisk { index: i, handle, layer });
    }
    let (qmp_ours, qmp_theirs) = UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair for QMP: {e}")))?;
    let kernel_stub = match &l.restore {
        Some(_) => Some(super::kernel_stub::restore_kernel(std::path::Path::new(&l.kernel))?),
        None => None,
    };
    let ram = match &l.restore {
        Some(_) if !has_ram_memfd(l) => None,
        Some(r) => {
            let file = ram_memfd(u64::from(l.memory_mib.get()) << 20)?;
            let src = crate::snapshot::ram_path(std::path::Path::new(r.dir.as_str()), l.memory_mib.get()).map_err(HostError::InvalidLaunch)?;
            crate::snapshot::fill_ram(&src, &file).map_err(|e| HostError::Setup(format!("loading snapshot RAM {}: {e}", src.display())))?;
            Some(file)
        }
        None => Some(ram_memfd(u64::from(l.memory_mib.get()) << 20)?),
    };
    if nbd_ends.len() > MAX_COW_DISKS {
        return Err(HostError::InvalidLaunch(format!("at most {MAX_COW_DISKS} copy-on-write disks")));
    }
    let mut nbd_fds: Vec<i32> = nbd_ends.iter().map(|s| s.as_raw_fd()).collect();
    let net = match &l.network {
        Some(_) => Some(UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair for the network: {e}")))?),
        None => None,
    };
    // The network socket is placed right after the NBD sockets (see `net_fd`).
    if let Some((_, vmm_end)) = &net {
        nbd_fds.push(vmm_end.as_raw_fd());
    }
    // Then QMP, the RAM memfd and a restore's kernel stub (see `qmp_fd`, `ram_fd`, `kernel_stub_fd`).
    nbd_fds.push(qmp_theirs.as_raw_fd());
    if let Some(ram) = &ram {
        nbd_fds.push(ram.as_raw_fd());
    }
    if let Some(stub) = &kernel_stub {
        nbd_fds.push(stub.as_raw_fd());
    }
    let mut cmd = Command::new(&qemu);
    cmd.args(&argv).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the hook runs in the forked child before exec and does only
    // async-signal-safe work on plain integers (prctl, fcntl, dup2), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            lifeline::vmm_pre_exec()?;
            // dup2 clears close-on-exec on the new descriptor.
            // Move sources out of the target range first so a dup2 never
            // clobbers a descriptor that is still to be moved.
            // No allocation here: other helper threads (NBD servers) exist, so
            // after fork only async-signal-safe work is allowed.
            let mut sources = [-1i32; 5 + MAX_COW_DISKS];
            sources[0] = guest_fd;
            sources[1..=nbd_fds.len()].copy_from_slice(&nbd_fds);
            let sources = &mut sources[..=nbd_fds.len()];
            for s in sources.iter_mut() {
                let moved = libc::fcntl(*s, libc::F_DUPFD, 64);
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *s = moved;
            }
            for (target, s) in (QEMU_CONTROL_FD..).zip(sources.iter()) {
                if libc::dup2(*s, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| HostError::Launch {
        backend: "qemu",
        message: format!("{qemu}: {e} (install Debian's qemu-system-x86 package)"),
    })?;
    drop(guest_end);
    drop(nbd_ends);
    drop(qmp_theirs);
    let net = net.map(|(ours, vmm_end)| {
        drop(vmm_end);
        ours
    });
    let console = ConsoleTail::default();
    for pipe in [child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)].into_iter().flatten() {
        let tail = console.clone();
        std::thread::spawn(move || pump_console(pipe, tail));
    }
    let pid = child.id() as i32;
    let kill_vmm = |e: String| {
        // SAFETY: kill(2) has no memory effects; pid is our own VMM child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        HostError::Launch { backend: "qemu", message: e }
    };
    // A restore needs the monitor now (restored roots are ephemeral: no NBD
    // round trip through Node); any other VM connects it at its first checkpoint.
    let qmp = match &restore_dir {
        Some(dir) => {
            let mut qmp = crate::qmp::Qmp::connect(qmp_ours).map_err(|e| kill_vmm(format!("{e}; console: {}", console.text())))?;
            crate::snapshot::restore(&mut qmp, dir).map_err(|e| kill_vmm(format!("restoring {}: {e}; console: {}", dir.display(), console.text())))?;
            if let Some(m) = &mounts {
                crate::snapshot::plug_mounts(&mut qmp, m).map_err(|e| kill_vmm(format!("plugging the mounts into the restored VM: {e}")))?;
            }
            crate::qmp::LazyQmp::Ready(qmp)
        }
        None => crate::qmp::LazyQmp::Pending(qmp_ours),
    };
    let refuse = l.mounts.iter().any(|m| m.external_socket.is_some()).then(|| "a lane with an external virtio-fs socket cannot be checkpointed".to_string());
    let capture = crate::snapshot::Capturable { qmp: std::sync::Mutex::new(qmp), ram, disks: disk_handles, pinned: std::sync::Mutex::default(), refuse, mounts };
    Ok(RunningVm {
        snapshot: Some(std::sync::Arc::new(capture)),
        pid,
        wait: Box::new(move || child.wait().ok()),
        control: host_end,
        net,
        console,
        accel: l.accel.unwrap_or(Accel::Tcg),
    })
}

/// Guest RAM: a memfd of the helper's, so a checkpoint can read it.
fn ram_memfd(size: u64) -> Result<std::fs::File, HostError> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated literal; the new descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c"sandbox-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(HostError::Setup(format!("memfd_create for guest RAM: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| HostError::Setup(format!("sizing guest RAM: {e}")))?;
    Ok(file)
}

fn pump_console(mut pipe: Box<dyn Read + Send>, tail: ConsoleTail) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        tail.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn launch() -> Launch {
        from(json!({
            "backend": "qemu", "cpus": 2, "memoryMib": 512, "kernel": "/k/vmlinuz", "initrd": "/k/initrd",
            "cmdline": ["sandbox.x=1"], "accel": "tcg", "mounts": [],
            "disks": [{ "path": "/img/root.qcow2", "format": "qcow2", "readOnly": true }],
        }))
    }

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn cow() -> Option<sandbox_protocol::CowSpec> {
        Some(from(json!({ "mode": "ephemeral", "maxDirtyBytes": 1 << 26, "blockSize": 65536 })))
    }

    #[test]
    fn network_is_a_stream_netdev_after_the_nbd_sockets() {
        let mut l = launch();
        assert!(!args(&l, &[]).unwrap().join(" ").contains("netdev"), "no network option, no NIC");
        l.network = Some(from(json!({ "policyDeadlineMs": 1000, "maxFlows": 4, "allowProtected": [] })));
        let a = args(&l, &[]).unwrap().join(" ");
        assert!(a.contains("-netdev stream,id=net0,server=off,addr.type=fd,addr.str=4"), "{a}");
        assert!(a.contains(&format!("virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile=")), "{a}");
        l.disks[0].cow = cow();
        assert!(args(&l, &[]).unwrap().join(" ").contains("addr.str=5"));
    }

    #[test]
    fn builds_tcg_command_line() {
        let a = args(&launch(), &[]).unwrap().join(" ");
        assert!(a.contains("-accel tcg,thread=multi,tb-size=128 -cpu max,erms=off,fsrm=off -smp 2 -m 512"));
        assert!(a.contains("-chardev socket,id=ctl,fd=3"));
        assert!(a.contains("virtserialport,chardev=ctl,name=sandbox.control"));
        assert!(a.contains("file=/img/root.qcow2,if=none,id=disk0,format=qcow2,readonly=on"));
        assert!(a.contains("panic=-1 rdinit=/init"));
        assert!(a.contains("cryptomgr.notests sandbox.x=1"), "extra arguments come last: {a}");
    }

    #[test]
    fn cow_disks_go_through_nbd_on_inherited_fds() {
        let mut l = launch();
        l.disks[0].read_only = false;
        l.disks[0].cow = cow();
        let a = args(&l, &[]).unwrap().join(" ");
        assert!(a.contains("-blockdev driver=nbd,node-name=disk0,server.type=fd,server.str=4,read-only=off"), "{a}");
        assert!(a.contains("virtio-blk-pci,drive=disk0,werror=report,rerror=report"), "{a}");
        assert!(!a.contains("file=/img/root.qcow2"), "the VMM must not open the base image itself: {a}");
    }

    #[test]
    fn mounts_get_shared_memory_and_a_vhost_user_fs_device_each() {
        let mut l = launch();
        l.mounts = from(json!([{ "tag": "sbxfs0" }, { "tag": "sbxfs1" }]));
        let socks = [PathBuf::from("/run/x/fs0.sock"), PathBuf::from("/run/x/fs1.sock")];
        let a = args(&l, &socks).unwrap().join(" ");
        assert!(a.contains("-M q35,memory-backend=mem -object memory-backend-file,id=mem,size=512M,mem-path=/proc/self/fd/5,share=on"), "{a}");
        assert!(a.contains("-chardev socket,id=vfs1,path=/run/x/fs1.sock -device vhost-user-fs-pci,id=sbxfs1,bus=sbxrp1,chardev=vfs1,tag=sbxfs1,queue-size=1024"), "{a}");
        assert!(a.contains("-device pcie-root-port,id=sbxrp0,chassis=1 -device pcie-root-port,id=sbxrp1,chassis=2"), "each device on an unpluggable port: {a}");
        assert!(args(&l, &socks[..1]).is_err(), "one socket per mount");
        assert!(args(&launch(), &[]).unwrap().join(" ").contains("share=on"), "guest RAM is always the helper's shared memfd");
    }

    #[test]
    fn qmp_and_ram_follow_the_network_socket() {
        let mut l = launch();
        let a = args(&l, &[]).unwrap().join(" ");
        assert!(a.contains("-chardev socket,id=qmp,fd=4 -mon chardev=qmp,mode=control"), "{a}");
        assert!(a.contains("mem-path=/proc/self/fd/5,share=on"), "{a}");
        l.network = Some(from(json!({ "policyDeadlineMs": 1000, "maxFlows": 4, "allowProtected": [] })));
        l.disks[0].cow = cow();
        let a = args(&l, &[]).unwrap().join(" ");
        assert!(a.contains("id=qmp,fd=6") && a.contains("/proc/self/fd/7"), "{a}");
        assert!(!a.contains("-incoming"), "{a}");
    }

    #[test]
    fn a_restore_maps_the_snapshot_ram_privately_and_waits_for_its_state() {
        let dir = std::env::temp_dir().join(format!("sbx-restore-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut l = launch();
        l.restore = Some(from(json!({ "dir": dir.to_str().unwrap(), "hostname": "h" })));
        assert!(matches!(args(&l, &[]), Err(HostError::InvalidLaunch(_))), "no RAM file");
        std::fs::File::create(dir.join("ram")).unwrap().set_len(256 << 20).unwrap();
        let e = args(&l, &[]).unwrap_err().to_string();
        assert!(e.contains("512 MiB"), "RAM size must match: {e}");
        std::fs::File::create(dir.join("ram")).unwrap().set_len(512 << 20).unwrap();
        let a = args(&l, &[]).unwrap().join(" ");
        assert!(a.contains(&format!("mem-path={}/ram,share=off", dir.display())), "{a}");
        assert!(a.contains("-incoming defer"), "{a}");
        // QMP is fd 4 and there is no RAM memfd: the kernel stub comes right after QMP.
        assert!(a.contains("-kernel /proc/self/fd/5 -initrd /k/initrd"), "a restore gets the kernel stub: {a}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_restore_with_mounts_gets_shared_ram_and_empty_ports_for_the_devices_it_plugs_later() {
        let dir = std::env::temp_dir().join(format!("sbx-restore-mounts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(dir.join("ram")).unwrap().set_len(512 << 20).unwrap();
        let mut l = launch();
        l.mounts = from(json!([{ "tag": "sbxfs0" }]));
        l.restore = Some(from(json!({ "dir": dir.to_str().unwrap(), "hostname": "h" })));
        assert!(args(&l, &[PathBuf::from("/run/x/fs0.sock")]).is_err(), "a restore serves no socket at launch");
        let a = args(&l, &[]).unwrap().join(" ");
        assert!(a.contains("mem-path=/proc/self/fd/5,share=on"), "vhost-user needs shared RAM: {a}");
        assert!(a.contains("-kernel /proc/self/fd/6 "), "the kernel stub follows the RAM memfd: {a}");
        assert!(a.contains("-device pcie-root-port,id=sbxrp0,chassis=1"), "{a}");
        assert!(!a.contains("vhost-user-fs-pci") && !a.contains("id=vfs0"), "{a}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mounts_are_validated_on_both_backends() {
        let mut l = launch();
        l.mounts = from(json!([{ "tag": "bad tag" }]));
        assert!(super::super::validate(&l).is_err(), "tags are [A-Za-z0-9_-]");
        l.mounts = from(json!([{ "tag": "sandbox-fs-0" }]));
        assert!(super::super::validate(&l).is_ok());
        l.backend = sandbox_protocol::BackendKind::Krun;
        assert!(super::super::validate(&l).is_ok(), "krun serves mounts through its child bridge");
        l.backend = sandbox_protocol::BackendKind::Qemu;
        l.mounts = (0..=MAX_MOUNTS).map(|i| from(json!({ "tag": format!("t{i}") }))).collect();
        assert!(super::super::validate(&l).is_err());
    }

    #[test]
    fn an_external_virtio_fs_socket_is_qemu_only_and_on_fresh_boots() {
        let mut l = launch();
        l.mounts = from(json!([{ "tag": "sandbox-fs-0", "externalSocket": "/run/vfsd.sock" }]));
        assert!(super::super::validate(&l).is_ok());
        l.backend = sandbox_protocol::BackendKind::Krun;
        assert!(super::super::validate(&l).is_err(), "krun has no vhost-user");
        l.backend = sandbox_protocol::BackendKind::Qemu;
        l.mounts = from(json!([{ "tag": "sandbox-fs-0", "externalSocket": "/run/a,b.sock" }]));
        assert!(super::super::validate(&l).is_err(), "a comma would end QEMU's chardev option");
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let mut l = launch();
        l.accel = Some(Accel::Kvm);
        let a = args(&l, &[]).unwrap().join(" ");
        assert!(a.contains("-accel kvm -cpu host"));
    }

    #[test]
    fn rejects_hvf_and_missing_initrd() {
        let mut l = launch();
        l.accel = Some(Accel::Hvf);
        assert!(matches!(args(&l, &[]), Err(HostError::InvalidLaunch(_))));
        let mut l = launch();
        l.initrd = None;
        assert!(matches!(args(&l, &[]), Err(HostError::InvalidLaunch(_))));
    }

    #[test]
    fn the_launch_type_refuses_what_the_helper_cannot_do() {
        let mut bad = serde_json::to_value(launch()).unwrap();
        bad["cpus"] = json!(0);
        assert!(serde_json::from_value::<Launch>(bad).is_err());
        let mut bad = serde_json::to_value(launch()).unwrap();
        bad["disks"][0]["format"] = json!("vmdk");
        assert!(serde_json::from_value::<Launch>(bad).is_err(), "disk formats are an enum");
        let mut bad = serde_json::to_value(launch()).unwrap();
        bad["disks"][0]["cow"] = json!({ "mode": "persistant", "maxDirtyBytes": 1 << 26, "blockSize": 65536 });
        assert!(serde_json::from_value::<Launch>(bad).is_err(), "a misspelt cow mode fails, it never becomes ephemeral");
        let mut l = launch();
        l.disks[0].path = "/a,b".into();
        assert!(super::super::validate(&l).is_err());
        let mut l = launch();
        l.cmdline = from(json!(["a b"]));
        assert!(super::super::validate(&l).is_err());
    }
}
