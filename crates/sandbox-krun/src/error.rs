//! Errors of the krun backend.

use std::path::PathBuf;

/// Everything that can go wrong while validating, configuring or entering a
/// libkrun VM. Each message says what is wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum KrunError {
    /// The vCPU count is outside `1..=max`.
    #[error("invalid vCPU count {cpus}: a krun VM needs between 1 and {max} vCPUs")]
    InvalidCpus { cpus: u8, max: u8 },

    /// The memory size is below the minimum the libkrunfw kernel boots with.
    #[error("guest memory of {mib} MiB is too small: the krun backend needs at least {min} MiB")]
    MemoryTooSmall { mib: u32, min: u32 },

    /// The memory size is above the supported maximum.
    #[error("guest memory of {mib} MiB is too large: the krun backend allows at most {max} MiB")]
    MemoryTooLarge { mib: u32, max: u32 },

    /// The libkrunfw library (the guest kernel) is missing or unusable.
    #[error("libkrunfw (the krun guest kernel) at {path}: {reason}")]
    KernelLibrary { path: PathBuf, reason: String },

    /// The virtio-fs root directory is missing or unusable.
    #[error("guest root directory {path}: {reason}")]
    RootFs { path: PathBuf, reason: String },

    /// The guest init path is malformed or the init binary is missing.
    #[error("guest init {path:?}: {reason}")]
    InitPath { path: String, reason: String },

    /// A disk is misconfigured.
    #[error("disk {id:?}: {reason}")]
    Disk { id: String, reason: String },

    /// A custom virtio-fs device's tag is empty, too long, has characters outside `[A-Za-z0-9_-]` or is used twice.
    #[error("virtio-fs tag {0:?} must be 1-36 characters of [A-Za-z0-9_-] and unique")]
    FsTag(String),

    /// Too many disks for the virtio-mmio interrupt budget.
    #[error("too many disks ({count}): the krun backend attaches at most {max} disks")]
    TooManyDisks { count: usize, max: usize },

    /// The control port (virtio-console port) is misconfigured.
    #[error("control port: {0}")]
    ControlPort(String),

    /// The network file descriptor is unusable.
    #[error("network socket: {0}")]
    NetFd(String),

    /// One extra kernel command-line argument is not acceptable.
    #[error("kernel command-line argument {arg:?}: {reason}")]
    CmdlineArg { arg: String, reason: String },

    /// The complete kernel command line would not fit the guest kernel's limit.
    #[error(
        "the kernel command line would be {len} bytes, over the guest kernel's limit of {max} \
         bytes: pass configuration over the control port instead of the command line"
    )]
    CmdlineTooLong { len: usize, max: usize },

    /// The platform has no krun backend.
    #[error("the krun backend is not available on this platform: {0}")]
    Unsupported(String),

    /// A snapshot cannot be taken or restored: missing, truncated or corrupt
    /// files, or a snapshot that does not fit this VM.
    #[error("krun snapshot: {0}")]
    Snapshot(String),

    /// libkrun (msb_krun) rejected the configuration or failed to start the VM.
    #[error("libkrun: {0}")]
    Vmm(#[source] msb_krun::Error),
}

impl From<msb_krun::Error> for KrunError {
    fn from(err: msb_krun::Error) -> Self {
        KrunError::Vmm(err)
    }
}
