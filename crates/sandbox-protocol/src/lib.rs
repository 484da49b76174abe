//! Wire protocol between Node, the `sandbox-host` helper and the guest init.
//!
//! Every message is one frame: `u32 BE length | u8 kind | u32 BE channel | payload`,
//! where `length` counts the kind, channel and payload bytes. Control payloads are
//! JSON (small, rare, easy to evolve on both the Rust and TypeScript sides); data
//! payloads (stdin/stdout/stderr) are raw bytes. The same framing is used on the
//! Node ⇄ helper socket and on the helper ⇄ guest virtio-console port, so the
//! helper can relay guest frames without re-encoding them.

pub mod b64;
mod frame;
mod kind;
mod message;

pub use frame::{encode_header as frame_header, encode_into as frame_into, Frame, FrameDecoder, FrameError, HEADER_LEN, MAX_PAYLOAD};
pub use kind::Kind;
pub use message::*;

/// Bumped whenever a message changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-console port that carries the control channel.
pub const CONTROL_PORT_NAME: &str = "sandbox.control";
