//! The boot handshake between the host and the guest init (channel 0).

use crate::bounded::{JsU64, Text, U32In};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// guest → host: init is up and listening on the control port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the init.
    pub protocol: u32,
    /// Guest uptime when init sent this, from CLOCK_BOOTTIME.
    pub uptime_ms: JsU64,
    /// Guest uptime when init started (the kernel's share of boot).
    pub init_started_ms: JsU64,
    /// Guest uptime once the boot modules were loaded.
    pub modules_loaded_ms: JsU64,
}

/// Root filesystem types init can mount.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Fstype {
    Ext4,
}

impl Fstype {
    pub fn as_str(self) -> &'static str {
        match self {
            Fstype::Ext4 => "ext4",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootSpec {
    /// Guest block device holding the root filesystem, e.g. `/dev/vda`.
    pub device: Text<64>,
    pub fstype: Fstype,
    pub read_only: bool,
}

/// host → guest: how to finish booting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Configure {
    /// Kernel hostname (RFC 1123 label rules are checked by the host).
    pub hostname: Text<64>,
    pub root: RootSpec,
    /// Default working directory; boot fails in the guest if it does not exist.
    pub cwd: Text<4096>,
    /// Environment every process starts with (before per-process overrides).
    pub env: BTreeMap<String, String>,
    /// Public certificate (PEM) of the sandbox's HTTP interception CA; init
    /// installs it (writable root) or keeps it under /run (read-only root).
    /// Never a private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<Text<65536>>,
    /// The CA comes with a network policy, not an explicit `boot({ interceptCa })`:
    /// a writable root without a trust-store installer stages it under /run
    /// (as a read-only root does) and boot goes on with a warning, instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ca_optional: bool,
    /// The guest NIC's addresses; absent: no network device, no DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GuestNet>,
    /// Virtual filesystems to mount, in order (later targets may lie inside earlier mounts).
    pub mounts: Vec<GuestMount>,
    /// What the workload (every process started on the control port) may use.
    pub limits: Limits,
    /// Identity processes run as (the image config's `User`, resolved by the
    /// host); absent: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<GuestUser>,
}

/// A numeric user: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (setgroups).
    pub groups: Vec<u32>,
}

/// Containment of the workload: processes run in cgroups below init's, so
/// init, the control port and the kernel stay responsive whatever they do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Processes (and threads) one command and everything it starts may have at once.
    pub max_processes: U32In<16, 4194304>,
    /// Memory of all commands together; past it the kernel's OOM killer ends the
    /// largest command's process tree (never init).
    pub workload_memory_mib: U32In<16, 1048576>,
}

/// One virtio-fs mount as init performs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestMount {
    /// virtio-fs tag of the device serving it.
    pub tag: Text<36>,
    /// Absolute guest path.
    pub target: Text<4096>,
    pub read_only: bool,
    /// Whether init may create a missing target on the root filesystem itself
    /// (true only for roots whose changes are discarded, i.e. `rootfs.ephemeral`).
    pub create_on_root: bool,
}

/// How init configures `eth0`: IPv4, and IPv6 when `ipv6` is present.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestNet {
    pub address: Text<45>,
    pub prefix_len: U32In<1, 30>,
    pub gateway: Text<45>,
    /// Written to /etc/resolv.conf (through a bind mount from /run).
    pub nameserver: Text<45>,
    pub mtu: U32In<576, 65535>,
    /// Static IPv6 (no router advertisements: the address and route are there before
    /// the first process runs, without DAD or SLAAC delays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<GuestNet6>,
}

/// The guest's IPv6 address and default route (sandbox-net's `guest_ip6`/`gateway_ip6`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestNet6 {
    pub address: Text<45>,
    pub prefix_len: U32In<8, 126>,
    pub gateway: Text<45>,
}

/// guest → host: the guest accepts processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ready {
    pub uptime_ms: JsU64,
    /// `uname -r` of the guest kernel.
    pub kernel: Text<256>,
    /// What init could not set up but booted without (e.g. no cgroup v2 in
    /// this kernel: processes run without containment).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = 16)))]
    pub warnings: Vec<Text<1024>>,
}

/// The boot step that failed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum BootStage {
    EarlyMounts,
    Modules,
    ControlPort,
    Configure,
    Root,
    Mounts,
    Ca,
    Cwd,
    Hostname,
    Network,
}

impl BootStage {
    pub fn as_str(self) -> &'static str {
        match self {
            BootStage::EarlyMounts => "early-mounts",
            BootStage::Modules => "modules",
            BootStage::ControlPort => "control-port",
            BootStage::Configure => "configure",
            BootStage::Root => "root",
            BootStage::Mounts => "mounts",
            BootStage::Ca => "ca",
            BootStage::Cwd => "cwd",
            BootStage::Hostname => "hostname",
            BootStage::Network => "network",
        }
    }
}

/// guest → host: boot failed in the guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitError {
    pub stage: BootStage,
    pub message: Text<16384>,
}
