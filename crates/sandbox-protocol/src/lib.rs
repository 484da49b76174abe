//! Wire protocol between Node, the `sandbox-host` helper and the guest init.
//!
//! Every message is one frame: `u32 BE length | u8 kind | u32 BE channel | payload`,
//! where `length` counts the kind, channel and payload bytes. [`Kind::info`]
//! says, per kind, who may send it, what its channel carries and how its
//! payload is encoded (JSON, framed JSON header + bytes, raw, empty). Every
//! message type decodes strictly (unknown fields, unknown enum values and
//! out-of-range numbers are errors). The same framing is used on the
//! Node ⇄ helper socket and on the helper ⇄ guest virtio-console port, so the
//! helper relays guest frames without re-encoding them.
//!
//! The TypeScript side (`src/protocol/generated/`) is generated from these
//! types by `crates/sandbox-contract`; a test fails when it is stale.

// Wire code: a number that does not fit is an error, never silently cut.
#![warn(clippy::cast_possible_truncation)]

pub mod addr;
pub mod bounded;
pub mod codec;
mod frame;
mod kind;
pub mod message;

pub use bounded::{I32In, JsU64, Text, U16In, U32In, U64In, JS_SAFE_MAX};
pub use codec::{decode, decode_framed, encode, encode_framed, encode_into, encode_raw, expect_empty, DecodeError, Message};
pub use frame::{encode_header as frame_header, Frame, FrameDecoder, FrameError, HEADER_LEN, MAX_PAYLOAD};
#[cfg(feature = "schema")]
pub use kind::message_schemas;
pub use kind::{ChannelUse, Direction, Kind, KindInfo, Payload};
pub use message::*;

/// Bumped whenever a message changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 2;

/// Name of the virtio-console port that carries the control channel.
pub const CONTROL_PORT_NAME: &str = "sandbox.control";
