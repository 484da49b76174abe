//! host → guest: `lane.fs.watch`, inotify in the guest served by init. The
//! frame's channel is the watch id (chosen by the host, from the same space
//! as file request ids). Events cross within credit, like process output:
//! the host grants `window` events with `WatchStart` and more with
//! `WatchCredit` as it consumes them; init holds at most `maxQueued` events
//! (repeats coalesced) and reports what it had to drop as one `overflow`.

use crate::bounded::{I32In, Text, U32In};
use crate::message::GuestPath;
use serde::{Deserialize, Serialize};

/// Events one WatchEvents frame may carry.
pub const MAX_WATCH_BATCH: usize = 256;
/// Largest event credit the host may hold out at once.
pub const MAX_WATCH_WINDOW: u32 = 4096;
/// Most events init may hold for one watch.
pub const MAX_WATCH_QUEUE: u32 = 65536;

/// host → guest: start watching `path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchStart {
    pub path: GuestPath,
    /// Watch every directory below `path` too, including ones made later.
    pub recursive: bool,
    /// Events the guest may send before the first WatchCredit.
    pub window: U32In<1, MAX_WATCH_WINDOW>,
    /// Events init holds (coalesced) before it drops and reports `overflow`.
    pub max_queued: U32In<1, MAX_WATCH_QUEUE>,
}

/// host → guest: the host consumed this many events; the guest may send as many more.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchCredit {
    pub events: U32In<1, MAX_WATCH_WINDOW>,
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum WatchEventType {
    Create,
    Modify,
    Delete,
    /// One side of a move: the old name (moved away) or the new one (moved here).
    Rename,
    /// Events were lost (init's queue or the kernel's was full); `path` is the watched path.
    Overflow,
}

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: WatchEventType,
    /// Absolute guest path. A name that is not UTF-8 has U+FFFD in place of the bad bytes.
    pub path: GuestPath,
}

/// guest → host: events, at most the credit granted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchEvents {
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 256)))]
    pub events: Vec<WatchEvent>,
}

/// guest → host: the watch is over; the id is free again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "reason", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum WatchEnd {
    /// The host sent WatchStop.
    Stopped {},
    /// The watched path itself was deleted or moved away (reported as an event first).
    Gone {},
    /// The watch could not start (or failed): errno name and number.
    Error { code: Text<32>, errno: I32In<1, 4095> },
}
