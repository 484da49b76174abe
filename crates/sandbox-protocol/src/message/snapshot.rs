//! Checkpoints and restores: Node asks the helper for a checkpoint, the
//! helper quiesces the guest's control channel around the capture, and a
//! restored guest is told it was resumed (fresh entropy, clock, hostname).

use crate::bounded::{JsU64, Text};
use serde::{Deserialize, Serialize};

/// Node → helper: capture the running VM into `dir` (an empty directory the
/// helper writes `state`, `ram` and `disk<i>.blocks` into). The VM keeps
/// running. The channel carries the request id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    pub dir: Text<4096>,
}

/// helper → Node: the answer to one `Checkpoint`, on its channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "status", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum Checkpointed {
    /// Captured; the timings are milliseconds.
    Done {
        /// How long the guest was paused.
        paused_ms: JsU64,
        /// Bytes of guest RAM written to the snapshot.
        ram_bytes: JsU64,
        /// Dirty root-disk blocks captured.
        disk_bytes: JsU64,
    },
    Failed { error: Text<4096> },
}

/// Where a restored VM's state comes from (a directory a `Checkpoint` filled).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Restore {
    pub dir: Text<4096>,
    /// The hostname the resumed guest takes.
    pub hostname: Text<64>,
    /// With HTTP interception: the new lane's CA, installed in place of the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<Text<16384>>,
}

/// helper → guest (never Node): the control channel is live again. A
/// `restored` guest is a fork of a snapshot: it mixes `entropy` into its RNG
/// and reseeds it, sets its clock and hostname, forgets every host-side
/// process channel and resets its network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resume {
    pub restored: bool,
    /// 64 bytes, hex.
    pub entropy: Text<128>,
    /// The host's wall clock, µs since the epoch (within JavaScript's safe integers).
    pub realtime_us: JsU64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Text<64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<Text<16384>>,
}

/// guest → host: the guest took the `Resume`. Forwarded to Node only for a
/// restored VM, where it stands for `Ready`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resumed {
    /// Guest processes still running (all detached from the host).
    pub processes: u32,
    /// Problems the guest met resuming (e.g. the RNG could not be reseeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Text<1024>>,
}
