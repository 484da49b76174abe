//! Launch description, validation and translation into `msb_krun`.
//!
//! The flow is `KrunLaunch` → [`validate`] → [`prepare`] (a [`KrunPlan`] plus
//! the configured `msb_krun::VmBuilder`) → [`PreparedVm::build`] (libkrun's own
//! checks; opens disks and takes the network socket, no KVM involved) →
//! [`BuiltVm::enter`] (hands the process to the VMM; never returns on
//! success). [`enter`] runs the whole chain.
//!
//! What the guest gets:
//!
//! * the libkrunfw kernel (dlopened from [`KrunLaunch::libkrunfw_path`]);
//! * `root_fs_dir` as its virtio-fs root (`root=/dev/root rootfstype=virtiofs`),
//!   holding the init binary; the init mounts the block root filesystem itself;
//! * the disks as virtio-blk devices, reachable in the guest as
//!   `/dev/disk/by-id/virtio-<id>` (and `/dev/vdX` in order);
//! * one virtio-console port named [`ControlPort::name`] (guest side:
//!   `/sys/class/virtio-ports/*/name`) on a socket the host owns;
//! * optionally one virtio-net device on a Unix stream socket carrying
//!   Ethernet frames, each prefixed by its length as a 4-byte big-endian
//!   integer;
//! * the kernel console (`hvc0`) written to [`KrunLaunch::console_log`] or
//!   discarded; it never reads the helper's stdin.
//!
//! TSI (transparent socket impersonation) stays off and no vsock device is
//! attached: the guest has no network path except the virtio-net device.

use std::convert::Infallible;
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use msb_krun::{DiskImageFormat, Vm, VmBuilder};

use crate::error::KrunError;
use crate::snapshot::{KrunRestore, LoadedSnapshot};

/// Most vCPUs libkrun accepts (`MAX_SUPPORTED_VCPUS` of the pinned msb_krun_vmm).
pub const MAX_CPUS: u8 = msb_krun_vmm::vmm_config::machine_config::MAX_SUPPORTED_VCPUS;
/// Least guest memory (MiB) the backend accepts: the libkrunfw kernel plus a
/// small init need this much to boot with room to spare.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Most guest memory (MiB) the backend accepts (256 GiB).
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// Longest kernel command line in bytes (without the terminating NUL) the
/// guest kernel keeps: `COMMAND_LINE_SIZE` is 2048 including the NUL on x86_64
/// and arm64. The VMM itself would accept more and the kernel would silently
/// truncate it, so the backend refuses instead.
pub const KERNEL_CMDLINE_MAX: usize = 2047;
/// virtio-blk serial numbers (the disk id) are at most 20 bytes.
pub const DISK_ID_MAX_LEN: usize = 20;
/// Most disks per VM. The in-kernel IOAPIC leaves 11 interrupts for
/// virtio-mmio devices; the root virtio-fs, the implicit console, the control
/// console, the entropy device and the network device take five of them.
pub const MAX_DISKS: usize = 6;
/// Longest control port name.
pub const PORT_NAME_MAX_LEN: usize = 64;
/// The guest MAC address used when [`KrunLaunch::net_mac`] is `None`
/// (locally administered, unicast).
pub const DEFAULT_GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The virtio-fs tag libkrun gives the root filesystem.
const ROOT_TAG: &str = "/dev/root";

/// Format of a disk image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// One virtio-blk disk backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunDisk {
    /// Guest-visible serial: `/dev/disk/by-id/virtio-<id>`. 1 to 20 bytes of
    /// `[A-Za-z0-9_.-]`, unique per VM.
    pub id: String,
    /// Host file (or block device) holding the image.
    pub path: PathBuf,
    pub read_only: bool,
    pub format: DiskFormat,
}

/// The control channel: a named virtio-console port on a host socket.
#[derive(Debug)]
pub struct ControlPort {
    /// Port name the guest looks for under `/sys/class/virtio-ports/*/name`.
    pub name: String,
    /// Bidirectional host end (a socket; libkrun duplicates it).
    pub fd: OwnedFd,
}

/// Everything needed to start one krun VM.
#[derive(Debug)]
pub struct KrunLaunch {
    /// Path of `libkrunfw.so.5` (Linux) / `libkrunfw.5.dylib` (macOS), which
    /// carries the guest kernel.
    pub libkrunfw_path: PathBuf,
    pub cpus: u8,
    pub memory_mib: u32,
    /// Host directory served as the guest's virtio-fs root; holds the init.
    pub root_fs_dir: PathBuf,
    pub disks: Vec<KrunDisk>,
    pub control_port: ControlPort,
    /// Unix stream socket carrying Ethernet frames, each prefixed by a 4-byte
    /// big-endian length. `None`: the guest has no network device at all.
    pub net_fd: Option<OwnedFd>,
    /// Guest MAC address; [`DEFAULT_GUEST_MAC`] when `None`.
    pub net_mac: Option<[u8; 6]>,
    /// Absolute path of the init inside `root_fs_dir` (kernel `init=`).
    pub init_path: String,
    /// Extra kernel parameters, one `key` or `key=value` word each.
    pub kernel_cmdline_extra: Vec<String>,
    /// Where the guest kernel console goes; `None` discards it.
    pub console_log: Option<PathBuf>,
    /// Filesystems served in-process as virtio-fs devices (see [`crate::fs::KrunFs`]).
    pub fs_mounts: Vec<KrunFsMount>,
    /// Resume from this snapshot instead of booting: the devices above must be
    /// the ones the snapshot was taken with (see [`crate::snapshot`]).
    pub restore: Option<KrunRestore>,
}

/// One virtio-fs device answered by a custom filesystem (libkrun's `DynFileSystem` hook).
pub struct KrunFsMount {
    /// virtio-fs tag the guest mounts by (1-36 bytes of `[A-Za-z0-9_-]`).
    pub tag: String,
    pub fs: Box<dyn msb_krun::backends::fs::DynFileSystem + Send + Sync>,
}

impl std::fmt::Debug for KrunFsMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrunFsMount").field("tag", &self.tag).finish_non_exhaustive()
    }
}

/// A disk as it is handed to libkrun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDisk {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
    pub format: DiskFormat,
}

/// The exact configuration [`prepare`] applies to the `msb_krun::VmBuilder`,
/// as plain data (msb_krun's builder cannot be inspected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunPlan {
    pub vcpus: u8,
    pub memory_mib: usize,
    pub krunfw_path: PathBuf,
    pub init_path: String,
    /// What is passed to `KernelBuilder::cmdline` (the extra parameters), if any.
    pub kernel_cmdline: Option<String>,
    /// The full command line libkrun will give the kernel, with the largest
    /// possible boot timestamp (see [`kernel_cmdline_preview`]).
    pub full_cmdline_preview: String,
    /// virtio-fs tag and host directory of the root filesystem.
    pub root_tag: String,
    pub root_dir: PathBuf,
    pub disks: Vec<PlannedDisk>,
    pub control_port_name: String,
    pub control_port_fd: RawFd,
    /// `Some(mac)` when a virtio-net device is attached.
    pub net_mac: Option<[u8; 6]>,
    pub console_output: PathBuf,
    /// TSI (transparent socket impersonation). Always `false`.
    pub tsi: bool,
    pub balloon: bool,
    pub rng: bool,
    /// msb_krun's private metrics device (only useful with microsandbox's
    /// own kernels). Always `false`.
    pub msb_metrics: bool,
    /// Tags of the custom virtio-fs devices, in order.
    pub fs_tags: Vec<String>,
}

/// A validated launch, translated into an `msb_krun::VmBuilder`.
pub struct PreparedVm {
    plan: KrunPlan,
    builder: VmBuilder,
    /// The snapshot to resume from, read and checked.
    snapshot: Option<LoadedSnapshot>,
    // Kept open until the VM is built and entered: libkrun duplicates the
    // port's fd only when the VM starts.
    control_fd: OwnedFd,
}

/// A VM that libkrun accepted, ready to [`enter`](BuiltVm::enter).
pub struct BuiltVm {
    vm: Vm,
    control_fd: OwnedFd,
}

/// Checks a launch description without touching KVM. Checks the numbers, the
/// files (kernel library, root directory and init, disk images), the file
/// descriptors and the final length of the kernel command line.
pub fn validate(launch: &KrunLaunch) -> Result<(), KrunError> {
    if launch.cpus == 0 || launch.cpus > MAX_CPUS {
        return Err(KrunError::InvalidCpus {
            cpus: launch.cpus,
            max: MAX_CPUS,
        });
    }
    if launch.memory_mib < MIN_MEMORY_MIB {
        return Err(KrunError::MemoryTooSmall {
            mib: launch.memory_mib,
            min: MIN_MEMORY_MIB,
        });
    }
    if launch.memory_mib > MAX_MEMORY_MIB {
        return Err(KrunError::MemoryTooLarge {
            mib: launch.memory_mib,
            max: MAX_MEMORY_MIB,
        });
    }
    validate_kernel_library(&launch.libkrunfw_path)?;
    validate_root_and_init(&launch.root_fs_dir, &launch.init_path)?;
    validate_disks(&launch.disks)?;
    validate_control_port(&launch.control_port)?;
    if let Some(fd) = &launch.net_fd {
        validate_net_fd(fd.as_raw_fd())?;
    }
    if let Some(mac) = launch.net_mac {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(KrunError::NetFd(format!(
                "guest MAC {} must be a non-zero unicast address",
                format_mac(mac)
            )));
        }
    }
    for arg in &launch.kernel_cmdline_extra {
        validate_cmdline_arg(arg)?;
    }
    for (i, m) in launch.fs_mounts.iter().enumerate() {
        let ok = !m.tag.is_empty()
            && m.tag.len() <= 36
            && m.tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !launch.fs_mounts[..i].iter().any(|o| o.tag == m.tag);
        if !ok {
            return Err(KrunError::FsTag(m.tag.clone()));
        }
    }
    let len = kernel_cmdline_preview(launch).len();
    if len > KERNEL_CMDLINE_MAX {
        return Err(KrunError::CmdlineTooLong {
            len,
            max: KERNEL_CMDLINE_MAX,
        });
    }
    Ok(())
}

/// The complete kernel command line libkrun will build for `launch`, with the
/// boot timestamp at its widest. Mirrors msb_krun 0.1.42: the default
/// parameters, the extras, `MSB_KRUN_KERNEL_CMDLINE` from the environment (a
/// libkrun debugging hook), `root=` and `init=`, the (empty) `KRUN_*`
/// variables and the `--` separator.
pub fn kernel_cmdline_preview(launch: &KrunLaunch) -> String {
    let mut prolog = String::from(msb_krun_vmm::vmm_config::kernel_cmdline::DEFAULT_KERNEL_CMDLINE);
    if !launch.kernel_cmdline_extra.is_empty() {
        prolog.push(' ');
        prolog.push_str(&launch.kernel_cmdline_extra.join(" "));
    }
    if let Ok(debug) = std::env::var("MSB_KRUN_KERNEL_CMDLINE") {
        prolog.push(' ');
        prolog.push_str(&debug);
    }
    prolog.push_str(" root=");
    prolog.push_str(ROOT_TAG);
    prolog.push_str(" init=");
    prolog.push_str(&launch.init_path);
    // No exec path, workdir, rlimits or env are set: four empty fields.
    let krun_env = format!("     KRUN_BOOT_START_NS={}", u64::MAX);
    let epilog = " -- ";
    format!("{prolog} {krun_env} {epilog}")
}

/// Validates `launch` and translates it into an `msb_krun::VmBuilder`.
pub fn prepare(launch: KrunLaunch) -> Result<PreparedVm, KrunError> {
    validate(&launch)?;
    let plan = plan_for(&launch);
    // Read before anything is opened: a broken snapshot fails here, typed.
    let snapshot = launch
        .restore
        .as_ref()
        .map(|r| crate::snapshot::load(r, launch.memory_mib, launch.cpus))
        .transpose()?;
    let KrunLaunch {
        control_port,
        net_fd,
        fs_mounts,
        ..
    } = launch;
    let builder = apply_plan(&plan, net_fd, fs_mounts);
    Ok(PreparedVm {
        plan,
        builder,
        snapshot,
        control_fd: control_port.fd,
    })
}

/// Validates, builds and enters the VM. Never returns on success: libkrun
/// takes the process over and `_exit`s when the guest shuts down. Call it only
/// in the dedicated helper process.
pub fn enter(launch: KrunLaunch) -> Result<Infallible, KrunError> {
    prepare(launch)?.build()?.enter()
}

impl PreparedVm {
    /// What was applied to the builder.
    pub fn plan(&self) -> &KrunPlan {
        &self.plan
    }

    /// Whether the VM resumes from a snapshot instead of booting.
    pub fn restores(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Runs libkrun's own configuration checks and creates its devices (opens
    /// the disk images, takes the network socket). Does not touch KVM and does
    /// not load libkrunfw.
    pub fn build(self) -> Result<BuiltVm, KrunError> {
        let mut vm = self.builder.build()?;
        if let Some(snapshot) = self.snapshot {
            snapshot.apply(&mut vm);
        }
        Ok(BuiltVm {
            vm,
            control_fd: self.control_fd,
        })
    }
}

impl BuiltVm {
    /// The handle a checkpoint pauses and captures the VM through; take it
    /// before [`enter`](Self::enter), which never returns.
    pub fn control(&self) -> msb_krun::VmControl {
        self.vm.control_handle()
    }

    /// Loads libkrunfw, creates the KVM VM and runs it. Never returns on
    /// success; on failure before the guest starts, returns the error.
    pub fn enter(self) -> Result<Infallible, KrunError> {
        let control_fd = self.control_fd;
        let result = self.vm.enter();
        drop(control_fd);
        match result {
            Ok(never) => match never {},
            Err(e) => Err(KrunError::Vmm(e)),
        }
    }
}

/// The plan for a validated launch.
fn plan_for(launch: &KrunLaunch) -> KrunPlan {
    KrunPlan {
        vcpus: launch.cpus,
        memory_mib: launch.memory_mib as usize,
        krunfw_path: launch.libkrunfw_path.clone(),
        init_path: launch.init_path.clone(),
        kernel_cmdline: (!launch.kernel_cmdline_extra.is_empty())
            .then(|| launch.kernel_cmdline_extra.join(" ")),
        full_cmdline_preview: kernel_cmdline_preview(launch),
        root_tag: ROOT_TAG.to_string(),
        root_dir: launch.root_fs_dir.clone(),
        disks: launch
            .disks
            .iter()
            .map(|d| PlannedDisk {
                id: d.id.clone(),
                path: d.path.clone(),
                read_only: d.read_only,
                format: d.format,
            })
            .collect(),
        control_port_name: launch.control_port.name.clone(),
        control_port_fd: launch.control_port.fd.as_raw_fd(),
        net_mac: launch
            .net_fd
            .as_ref()
            .map(|_| launch.net_mac.unwrap_or(DEFAULT_GUEST_MAC)),
        console_output: launch
            .console_log
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/null")),
        tsi: false,
        balloon: false,
        rng: true,
        msb_metrics: false,
        fs_tags: launch.fs_mounts.iter().map(|m| m.tag.clone()).collect(),
    }
}

/// Applies a plan to a fresh `VmBuilder`. `net_fd` must be present exactly
/// when `plan.net_mac` is.
fn apply_plan(plan: &KrunPlan, net_fd: Option<OwnedFd>, fs_mounts: Vec<KrunFsMount>) -> VmBuilder {
    let mut b = VmBuilder::new()
        .machine(|m| {
            m.vcpus(plan.vcpus)
                .memory_mib(plan.memory_mib)
                .balloon(plan.balloon)
                .rng(plan.rng)
                .msb_metrics(plan.msb_metrics)
                .enable_inet_hijack(plan.tsi)
        })
        .vsock(|v| v.inet_hijack(plan.tsi))
        .kernel(|k| {
            let k = k.krunfw_path(&plan.krunfw_path).init_path(&plan.init_path);
            match &plan.kernel_cmdline {
                Some(c) => k.cmdline(c),
                None => k,
            }
        })
        .fs(|fs| {
            fs_mounts
                .into_iter()
                .fold(fs.root(&plan.root_dir), |fs, m| fs.tag(&m.tag).custom(m.fs))
        })
        .console(|c| {
            c.output(&plan.console_output).port(
                &plan.control_port_name,
                plan.control_port_fd,
                plan.control_port_fd,
            )
        });
    for disk in &plan.disks {
        b = b.disk(|d| {
            d.path(&disk.path)
                .id(disk.id.clone())
                .read_only(disk.read_only)
                .format(match disk.format {
                    DiskFormat::Raw => DiskImageFormat::Raw,
                    DiskFormat::Qcow2 => DiskImageFormat::Qcow2,
                })
        });
    }
    if let (Some(mac), Some(fd)) = (plan.net_mac, net_fd) {
        b = b.net(|n| n.mac(mac).unixstream(fd));
    }
    b
}

// ---------------------------------------------------------------------------
// Validation helpers
// ---------------------------------------------------------------------------

fn validate_kernel_library(path: &Path) -> Result<(), KrunError> {
    let err = |reason: String| KrunError::KernelLibrary {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| {
        err(if e.kind() == std::io::ErrorKind::NotFound {
            "not found: fetch it with scripts/fetch-libkrunfw.sh".to_string()
        } else {
            format!("cannot be read ({e})")
        })
    })?;
    if !meta.is_file() {
        return Err(err("is not a regular file".to_string()));
    }
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| err(format!("cannot be read ({e})")))?;
    let is_elf = magic == *b"\x7fELF";
    // Mach-O 64-bit (either byte order) and universal binaries.
    let is_macho = matches!(
        magic,
        [0xcf, 0xfa, 0xed, 0xfe] | [0xfe, 0xed, 0xfa, 0xcf] | [0xca, 0xfe, 0xba, 0xbe]
    );
    let ok = if cfg!(target_os = "macos") {
        is_macho
    } else {
        is_elf
    };
    if !ok {
        return Err(err("is not a shared library for this platform".to_string()));
    }
    Ok(())
}

fn validate_root_and_init(root: &Path, init: &str) -> Result<(), KrunError> {
    let root_err = |reason: String| KrunError::RootFs {
        path: root.to_path_buf(),
        reason,
    };
    if root.to_str().is_none() {
        return Err(root_err("path is not valid UTF-8".to_string()));
    }
    let meta = fs::metadata(root).map_err(|e| root_err(format!("cannot be read ({e})")))?;
    if !meta.is_dir() {
        return Err(root_err("is not a directory".to_string()));
    }

    let init_err = |reason: &str| KrunError::InitPath {
        path: init.to_string(),
        reason: reason.to_string(),
    };
    if !init.starts_with('/') {
        return Err(init_err("must be an absolute path inside the guest"));
    }
    if init.len() > 255 {
        return Err(init_err("is longer than 255 bytes"));
    }
    if !init.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return Err(init_err(
            "may contain only printable ASCII without spaces or quotes (it goes on the kernel \
             command line)",
        ));
    }
    let rel = Path::new(init.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(init_err("must name a file, without '.' or '..' components"));
    }
    let host = root.join(rel);
    let meta = fs::symlink_metadata(&host).map_err(|e| {
        init_err(&format!(
            "not found in the root directory as {} ({e})",
            host.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(init_err("is not a regular file in the root directory"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(init_err("is not executable"));
    }
    Ok(())
}

fn validate_disks(disks: &[KrunDisk]) -> Result<(), KrunError> {
    if disks.len() > MAX_DISKS {
        return Err(KrunError::TooManyDisks {
            count: disks.len(),
            max: MAX_DISKS,
        });
    }
    for (i, disk) in disks.iter().enumerate() {
        let err = |reason: String| KrunError::Disk {
            id: disk.id.clone(),
            reason,
        };
        if disk.id.is_empty() || disk.id.len() > DISK_ID_MAX_LEN {
            return Err(err(format!(
                "the id must be 1 to {DISK_ID_MAX_LEN} bytes long"
            )));
        }
        if !disk
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(err("the id may contain only A-Z a-z 0-9 _ - .".to_string()));
        }
        if disks[..i].iter().any(|d| d.id == disk.id) {
            return Err(err("the id is used by another disk".to_string()));
        }
        if disk.path.to_str().is_none() {
            return Err(err("the image path is not valid UTF-8".to_string()));
        }
        let meta = fs::metadata(&disk.path).map_err(|e| {
            err(format!(
                "image {} cannot be read ({e})",
                disk.path.display()
            ))
        })?;
        let is_blockdev = {
            use std::os::unix::fs::FileTypeExt;
            meta.file_type().is_block_device()
        };
        if !meta.is_file() && !is_blockdev {
            return Err(err(format!(
                "image {} is not a regular file or block device",
                disk.path.display()
            )));
        }
        let mut opts = fs::OpenOptions::new();
        opts.read(true).write(!disk.read_only);
        let mut file = opts.open(&disk.path).map_err(|e| {
            err(format!(
                "image {} cannot be opened {} ({e})",
                disk.path.display(),
                if disk.read_only {
                    "for reading"
                } else {
                    "read-write"
                }
            ))
        })?;
        if disk.format == DiskFormat::Qcow2 {
            let mut magic = [0u8; 4];
            if file.read_exact(&mut magic).is_err() || magic != *b"QFI\xfb" {
                return Err(err(format!(
                    "image {} is not a qcow2 file",
                    disk.path.display()
                )));
            }
        }
    }
    Ok(())
}

fn validate_control_port(port: &ControlPort) -> Result<(), KrunError> {
    if port.name.is_empty() || port.name.len() > PORT_NAME_MAX_LEN {
        return Err(KrunError::ControlPort(format!(
            "the port name must be 1 to {PORT_NAME_MAX_LEN} bytes long"
        )));
    }
    if !port
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(KrunError::ControlPort(format!(
            "port name {:?} may contain only A-Z a-z 0-9 _ - .",
            port.name
        )));
    }
    if let Err(e) = fd_is_open(port.fd.as_raw_fd()) {
        return Err(KrunError::ControlPort(format!(
            "file descriptor {} is not open ({e})",
            port.fd.as_raw_fd()
        )));
    }
    Ok(())
}

fn validate_net_fd(fd: RawFd) -> Result<(), KrunError> {
    if let Err(e) = fd_is_open(fd) {
        return Err(KrunError::NetFd(format!(
            "file descriptor {fd} is not open ({e})"
        )));
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(KrunError::NetFd(format!(
            "file descriptor {fd} is not a socket ({})",
            std::io::Error::last_os_error()
        )));
    }
    if ty != libc::SOCK_STREAM {
        return Err(KrunError::NetFd(format!(
            "file descriptor {fd} is not a stream socket: the krun network device expects a Unix \
             stream socket carrying length-prefixed Ethernet frames"
        )));
    }
    // SAFETY: an all-zero sockaddr_storage is a valid value; the kernel
    // writes at most `alen` bytes into it.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `alen` bytes into `addr`, both ours.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut alen,
        )
    };
    if rc == 0 && libc::c_int::from(addr.ss_family) != libc::AF_UNIX {
        return Err(KrunError::NetFd(format!(
            "file descriptor {fd} is not a Unix-domain socket"
        )));
    }
    Ok(())
}

fn fd_is_open(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Keys the launcher sets itself; extras may not override them.
const RESERVED_KEYS: &[&str] = &["root", "rootfstype", "init"];

fn validate_cmdline_arg(arg: &str) -> Result<(), KrunError> {
    let err = |reason: &str| KrunError::CmdlineArg {
        arg: arg.to_string(),
        reason: reason.to_string(),
    };
    if arg.is_empty() {
        return Err(err("is empty"));
    }
    if !arg.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return Err(err(
            "must be one word of printable ASCII, without spaces or quotes",
        ));
    }
    if arg == "--" {
        return Err(err("'--' would end the kernel parameters"));
    }
    let key = arg.split('=').next().unwrap_or(arg);
    if RESERVED_KEYS.contains(&key) || key.starts_with("KRUN_") {
        return Err(err("is set by the krun backend itself"));
    }
    Ok(())
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests;
