//! Node ⇄ helper: the VMM's lifecycle and the helper's own voice.

use crate::bounded::{Text, U32In, U64In};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Qemu,
    Krun,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Krun => "krun",
        }
    }
}

/// How the VMM executes guest code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Linux hardware virtualization.
    Kvm,
    /// macOS Hypervisor.framework.
    Hvf,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Tcg => "tcg",
        }
    }
}

/// Node → helper: everything needed to start the VMM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Launch {
    pub backend: BackendKind,
    pub cpus: U32In<1, 64>,
    pub memory_mib: U32In<64, 1048576>,
    /// Guest kernel (qemu: a bzImage).
    pub kernel: String,
    /// initramfs (qemu) — holds the init and kernel modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// libkrunfw shared object (krun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub krunfw: Option<String>,
    /// Directory served as the virtio-fs root holding the init (krun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_root: Option<String>,
    /// Extra kernel arguments.
    pub cmdline: Vec<Text<256>>,
    pub disks: Vec<Disk>,
    /// qemu only: path of qemu-system-x86_64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    /// qemu only: how QEMU runs guest code (`kvm` or `tcg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<Accel>,
    /// A virtio-net NIC served by the helper's userspace stack; absent: no NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetLaunch>,
    /// Virtual filesystems: one virtio-fs device each, served by the helper,
    /// whose operations go to Node as `FsRequest` frames.
    pub mounts: Vec<FsMount>,
    /// qemu only: resume the VM a `Checkpoint` captured instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<super::Restore>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    pub path: String,
    pub format: DiskFormat,
    pub read_only: bool,
    /// Serve the disk through the helper's copy-on-write engine instead of
    /// letting the VMM open the file (which stays untouched either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cow: Option<CowSpec>,
}

/// Where a copy-on-write disk keeps the blocks the guest changed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum CowMode {
    /// In helper memory; they vanish with the VM.
    Ephemeral,
    /// Written back to Node's block store (`BlockRequest`).
    Persistent,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CowSpec {
    pub mode: CowMode,
    /// Dirty-bytes budget; ephemeral writes past it fail in the guest.
    pub max_dirty_bytes: U64In<4096, { crate::bounded::JS_SAFE_MAX }>,
    /// A power of two from 4096 to 1048576.
    pub block_size: U32In<4096, 1048576>,
    /// persistent: deadline of one store call in ms (default: the helper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_timeout_ms: Option<U64In<1, 3700000>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FsMount {
    /// virtio-fs tag (≤ 36 bytes of `[A-Za-z0-9_-]`) the guest mounts by.
    pub tag: Text<36>,
    /// How long the guest kernel may keep a file's attributes (size, mode, times)
    /// before asking again; absent: never cached (see docs/decisions.md, "Issue 19: mounts").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr_cache_ms: Option<U32In<1, 60000>>,
    /// Benchmarks only (qemu): attach this existing vhost-user-fs socket (e.g.
    /// the C `virtiofsd` as a same-run reference) instead of the helper's own
    /// device. Such a VM cannot be checkpointed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_socket: Option<String>,
    /// `fs.hostDir` served by the helper itself (Linux with openat2): this
    /// mount's requests never reach Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dir: Option<HostDirMount>,
}

/// A host directory the helper serves to the guest (see `sandbox_fs::host_dir`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostDirMount {
    /// Absolute path, symbolic links already resolved by Node.
    pub path: Text<4096>,
    /// Refuse every change with EROFS.
    pub read_only: bool,
}

/// The helper's side of the guest network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetLaunch {
    /// Longest wait for a verdict from Node (the DNS forward included for DNS).
    pub policy_deadline_ms: U64In<1, 600000>,
    /// Concurrent TCP + UDP flows, and host sockets held for them at any instant.
    pub max_flows: U32In<1, 65536>,
    /// New guest-opened flows admitted per second (token bucket refill; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connects_per_second: Option<U32In<1, 100000>>,
    /// New flows admitted at once from a full bucket (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_burst: Option<U32In<1, 100000>>,
    /// Protected ranges (CIDR) the sandbox definition opts in; still subject to policy.
    pub allow_protected: Vec<Text<49>>,
    /// Unix socket of Node's interceptor for flows with the `intercept` verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercept_socket: Option<String>,
}

/// helper → Node: the VMM is running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Launched {
    pub vmm_pid: i32,
    pub backend: BackendKind,
    pub accel: Accel,
}

/// helper → Node: the VMM process ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmExited {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Last lines the VMM and the guest console printed (kernel panics land here).
    pub console_tail: Text<65536>,
}

/// Why the helper ended the VM on its own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// The guest sent something the contract does not allow.
    GuestProtocol,
    /// Node sent something the contract does not allow.
    NodeProtocol,
    /// The launch request cannot be honoured.
    InvalidLaunch,
    /// The VMM could not be started.
    Launch,
    /// The helper could not set itself up (sockets, threads, runtimes).
    Setup,
    /// I/O on the Node socket failed.
    NodeIo,
}

/// helper → Node: the helper failed; sent once, before it exits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelperError {
    pub cause: FailureCause,
    pub message: Text<16384>,
    /// The frame kind at fault, for protocol failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_kind: Option<u8>,
    /// The channel of that frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DiagnosticLevel {
    Info,
    Warn,
    Error,
}

/// The part of the helper a diagnostic comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DiagnosticSource {
    /// Frames between Node and the guest.
    Relay,
    /// The VMM process (QEMU, libkrun).
    Vmm,
    /// Copy-on-write disks and their block store.
    Block,
    /// Virtual filesystem mounts.
    Fs,
    /// The guest network stack.
    Net,
    /// The guest init (what it reported about its own setup).
    Guest,
}

/// helper → Node: something the user may need to know (a failed store call,
/// a filesystem answer that had to be refused, why the network stack stopped).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Diagnostic {
    pub level: DiagnosticLevel,
    pub source: DiagnosticSource,
    pub message: Text<4096>,
}
