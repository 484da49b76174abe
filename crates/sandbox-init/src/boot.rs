//! Boot steps that turn the initramfs into the sandbox's root: early mounts,
//! kernel modules, the control port and the switch into the block rootfs.

use crate::sys;
use sandbox_protocol::{BootStage, Configure, Fstype, CONTROL_PORT_NAME};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A boot step that failed, with the step name reported to the host.
#[derive(Debug)]
pub struct BootError {
    pub stage: BootStage,
    pub message: String,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.message)
    }
}

fn fail(stage: BootStage, message: impl Into<String>) -> BootError {
    BootError { stage, message: message.into() }
}

const MODULE_LIST: &str = "/etc/sandbox/modules";
/// fuse + virtiofs, loaded only when the boot has virtual filesystem mounts.
const FS_MODULE_LIST: &str = "/etc/sandbox/modules.fs";
const TMPFS_MAGIC: i64 = 0x0102_1994;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const NEW_ROOT: &str = "/newroot";

/// /dev, /proc and /sys, needed before anything else can be found.
pub fn early_mounts() -> Result<(), BootError> {
    for (src, dir, fstype) in [("devtmpfs", "/dev", "devtmpfs"), ("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs")] {
        let _ = fs::create_dir_all(dir);
        sys::mount(src, Path::new(dir), fstype, libc::MS_NOSUID, None)
            .map_err(|e| fail(BootStage::EarlyMounts, format!("mount {fstype} on {dir}: {e}")))?;
    }
    Ok(())
}

/// Loads the modules listed (in dependency order) by the initramfs builder.
pub fn load_modules() -> Result<(), BootError> {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(BootStage::Modules, format!("{MODULE_LIST}: {e}"))),
    };
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        sys::finit_module(Path::new(line)).map_err(|e| fail(BootStage::Modules, format!("load {line}: {e}")))?;
    }
    Ok(())
}

/// Loads the virtio-fs modules (from the initramfs, so before the root switch).
pub fn load_fs_modules(cfg: &Configure) -> Result<(), BootError> {
    if cfg.mounts.is_empty() {
        return Ok(());
    }
    let list = fs::read_to_string(FS_MODULE_LIST).map_err(|e| fail(BootStage::Mounts, format!("{FS_MODULE_LIST}: {e}")))?;
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match sys::finit_module(Path::new(line)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(fail(BootStage::Mounts, format!("load {line}: {e}"))),
        }
    }
    Ok(())
}

/// Mounts the virtual filesystems in order, creating missing targets where
/// that changes nothing durable: on init-owned tmpfs, inside an earlier
/// virtual mount, or on a root whose changes are discarded (`create_on_root`).
pub fn mount_virtual(cfg: &Configure) -> Result<(), BootError> {
    let mut mounted: Vec<PathBuf> = Vec::new();
    for m in &cfg.mounts {
        let target = Path::new(&m.target);
        if !target.is_absolute() || target.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(fail(BootStage::Mounts, format!("mount target {:?} must be an absolute path without '..'", m.target)));
        }
        prepare_target(target, m.create_on_root, &mounted)?;
        mount_virtiofs(m).map_err(|e| fail(BootStage::Mounts, format!("mount virtio-fs {} on {}: {e}", m.tag, m.target)))?;
        mounted.push(target.to_path_buf());
    }
    Ok(())
}

/// Mounts one virtio-fs device, waiting up to 10 s for its tag to appear
/// (the device may still be probing after the module load or a hot-plug).
pub fn mount_virtiofs(m: &sandbox_protocol::GuestMount) -> std::io::Result<()> {
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if m.read_only {
        flags |= libc::MS_RDONLY;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sys::mount(&m.tag, Path::new(&m.target), "virtiofs", flags, None) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT) | Some(libc::ENODEV)) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn prepare_target(target: &Path, create_on_root: bool, mounted: &[PathBuf]) -> Result<(), BootError> {
    let shown = target.display();
    match fs::symlink_metadata(target) {
        Ok(md) if md.is_dir() => return Ok(()),
        Ok(md) if md.file_type().is_symlink() => {
            return Err(fail(BootStage::Mounts, format!("mount target {shown} is a symbolic link; mount targets must be directories")))
        }
        Ok(_) => return Err(fail(BootStage::Mounts, format!("mount target {shown} exists and is not a directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(BootStage::Mounts, format!("mount target {shown}: {e}"))),
    }
    let mut ancestor = target.parent();
    while let Some(a) = ancestor {
        if fs::symlink_metadata(a).is_ok() {
            break;
        }
        ancestor = a.parent();
    }
    let ancestor = ancestor.unwrap_or(Path::new("/"));
    let fstype = sys::statfs_type(ancestor).unwrap_or(0);
    let creatable = fstype == TMPFS_MAGIC
        || fstype == FUSE_SUPER_MAGIC
        || mounted.iter().any(|m| ancestor.starts_with(m))
        || create_on_root;
    if !creatable {
        return Err(fail(
            BootStage::Mounts,
            format!(
                "mount target {shown} does not exist and init will not create it: {} is on the root filesystem, which init never modifies \
                 (a read-only built-in image or a durable copy-on-write root). Create the directory in the image, mount under /run or /tmp \
                 or inside an earlier mount, or use rootfs.ephemeral",
                ancestor.display()
            ),
        ));
    }
    fs::create_dir_all(target).map_err(|e| fail(BootStage::Mounts, format!("create mount target {shown}: {e}")))
}

/// Finds and opens the virtio-console port named [`CONTROL_PORT_NAME`].
/// Device probing is asynchronous, so poll sysfs for a bounded time.
pub fn open_control_port() -> Result<File, BootError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(dev) = find_port(CONTROL_PORT_NAME) {
            if let Ok(f) = OpenOptions::new().read(true).write(true).open(&dev) {
                return Ok(f);
            }
        }
        if Instant::now() > deadline {
            return Err(fail(
                BootStage::ControlPort,
                format!("no virtio-console port named {CONTROL_PORT_NAME} appeared within 20 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn find_port(wanted: &str) -> Option<PathBuf> {
    for entry in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == wanted {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Mounts the block rootfs, moves the kernel filesystems into it and makes it `/`.
pub fn switch_root(cfg: &Configure) -> Result<(), BootError> {
    let root = &cfg.root;
    let dev = Path::new(&root.device);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dev.exists() {
        if Instant::now() > deadline {
            return Err(fail(BootStage::Root, format!("block device {} did not appear within 10 s", root.device)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let new_root = Path::new(NEW_ROOT);
    let _ = fs::create_dir_all(new_root);
    let mut flags = libc::MS_NOATIME;
    if root.read_only {
        flags |= libc::MS_RDONLY;
    }
    // A read-only ext4 with a dirty journal refuses to mount unless told not to replay it.
    let data = if root.read_only && root.fstype == Fstype::Ext4 { Some("noload") } else { None };
    sys::mount(&root.device, new_root, root.fstype.as_str(), flags, data)
        .map_err(|e| fail(BootStage::Root, format!("mount {} ({}) on /: {e}", root.device, root.fstype.as_str())))?;

    for dir in ["/dev", "/proc", "/sys"] {
        let target = new_root.join(&dir[1..]);
        if !target.is_dir() {
            return Err(fail(BootStage::Root, format!("the root filesystem has no {dir} directory to mount on")));
        }
        sys::move_mount(Path::new(dir), &target)
            .map_err(|e| fail(BootStage::Root, format!("move {dir} into the root filesystem: {e}")))?;
    }
    // Scratch space owned by init; on a read-only root also /tmp so tools work,
    // and /mnt so virtual filesystems can be mounted below it (/mnt/shared…).
    let mut scratch = vec![("run", "mode=0755")];
    if root.read_only {
        scratch.push(("tmp", "mode=1777"));
        scratch.push(("var/tmp", "mode=1777"));
        scratch.push(("mnt", "mode=0755"));
    }
    for (dir, opts) in scratch {
        let target = new_root.join(dir);
        if target.is_dir() {
            sys::mount("tmpfs", &target, "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some(opts))
                .map_err(|e| fail(BootStage::Root, format!("mount tmpfs on /{dir}: {e}")))?;
        }
    }
    let pts = new_root.join("dev/pts");
    let _ = fs::create_dir_all(&pts);
    sys::mount("devpts", &pts, "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620"))
        .map_err(|e| fail(BootStage::Root, format!("mount devpts: {e}")))?;
    let shm = new_root.join("dev/shm");
    let _ = fs::create_dir_all(&shm);
    let _ = sys::mount("tmpfs", &shm, "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=1777"));

    std::env::set_current_dir(new_root).map_err(|e| fail(BootStage::Root, format!("chdir {NEW_ROOT}: {e}")))?;
    sys::move_mount(Path::new("."), Path::new("/")).map_err(|e| fail(BootStage::Root, format!("move root: {e}")))?;
    sys::chroot(Path::new(".")).map_err(|e| fail(BootStage::Root, format!("chroot: {e}")))?;
    std::env::set_current_dir("/").map_err(|e| fail(BootStage::Root, format!("chdir /: {e}")))?;
    Ok(())
}

/// The HTTP interception CA (after the switch, inside the new root): returns
/// the environment variables for processes. Without a CA, a writable root is
/// cleaned of one a previous boot installed.
/// What the CA setup gives every process, and a warning when it could only be staged.
pub struct CaSetup {
    pub env: Vec<(String, String)>,
    pub warning: Option<String>,
}

/// Runs one of the image's own programs (the trust-store installer) with a
/// clean environment, from `/`, without stdin.
pub fn run_image_tool(program: &Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .output()
}

pub fn setup_ca(cfg: &Configure) -> Result<CaSetup, BootError> {
    let run = run_image_tool;
    let root = Path::new("/");
    match &cfg.ca_cert_pem {
        Some(pem) => match crate::ca::setup(root, pem, !cfg.root.read_only, &run) {
            Ok(env) => Ok(CaSetup { env, warning: None }),
            // Tools that honour SSL_CERT_FILE & co. trust the staged bundle; the
            // rest fail their TLS handshakes with the interceptor: still closed.
            Err(crate::ca::CaError::NoInstaller) if cfg.ca_optional => {
                let env = crate::ca::setup(root, pem, false, &run).map_err(|e| fail(BootStage::Ca, e.to_string()))?;
                let why = "the writable root has no update-ca-certificates: the interception CA is only in /run/sandbox/ca-bundle.crt \
                           (SSL_CERT_FILE and the like point there); install ca-certificates in the image for every tool to trust it";
                Ok(CaSetup { env, warning: Some(why.to_string()) })
            }
            Err(e) => Err(fail(BootStage::Ca, e.to_string())),
        },
        None => {
            if !cfg.root.read_only {
                crate::ca::remove_stale(root, &run);
            }
            Ok(CaSetup { env: Vec::new(), warning: None })
        }
    }
}

/// Hostname and the default working directory, checked after the switch.
pub fn finish(cfg: &Configure) -> Result<(), BootError> {
    sys::sethostname(&cfg.hostname).map_err(|e| fail(BootStage::Hostname, format!("sethostname {:?}: {e}", cfg.hostname)))?;
    match fs::metadata(&cfg.cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(fail(BootStage::Cwd, format!("working directory {} is not a directory", cfg.cwd))),
        Err(e) => Err(fail(BootStage::Cwd, format!("working directory {}: {e}", cfg.cwd))),
    }
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
