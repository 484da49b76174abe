//! helper ⇄ Node: calls on the JavaScript block store of a `rootfs.cow` disk.
//! Both kinds are framed payloads (`u32 BE header length | JSON header | bytes`);
//! the frame's channel carries the call id.

use crate::bounded::{JsU64, Text, U32In};
use serde::{Deserialize, Serialize};

/// Block indices one frame may list.
pub const MAX_BLOCKS_PER_FRAME: usize = 32 * 1024;

/// helper → Node: one store call. Write data (whole blocks, in `blocks` order)
/// follows the header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum BlockRequest {
    /// Every block index the store holds.
    List,
    /// The stored blocks within `start .. start + count`.
    Read {
        start: JsU64,
        count: U32In<1, 4096>,
        /// A checkpoint copying the store, not a guest read: a failure fails
        /// the checkpoint and is no I/O error of the lane.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        snapshot: bool,
    },
    /// Store these blocks (their bytes follow the header).
    Write {
        #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 4096)))]
        blocks: Vec<JsU64>,
    },
    /// Make every block written so far durable.
    Flush,
}

impl BlockRequest {
    pub fn op_name(&self) -> &'static str {
        match self {
            BlockRequest::List => "list",
            BlockRequest::Read { .. } => "read",
            BlockRequest::Write { .. } => "write",
            BlockRequest::Flush => "flush",
        }
    }
}

/// Node → helper: one frame of an answer. A reply with `more` is continued by
/// further replies on the same channel; `blocks` lists block indices (list) or
/// the blocks whose bytes follow the header (read).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "status", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum BlockReply {
    Ok {
        #[serde(default)]
        #[cfg_attr(feature = "schema", schemars(length(max = 32768)))]
        blocks: Vec<JsU64>,
        #[serde(default)]
        more: bool,
    },
    /// The store call failed; the guest sees an I/O error.
    Failed { error: Text<4096> },
}
