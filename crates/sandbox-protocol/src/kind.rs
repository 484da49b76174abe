//! Frame kinds, and for each: who may send it, what its channel means and
//! what its payload is. This table is the contract: the relay enforces it,
//! and the TypeScript side is generated from it (crates/sandbox-contract).

use crate::message::*;

/// Who sends a kind to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    GuestToHost,
    HostToGuest,
    HelperToNode,
    NodeToHelper,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::GuestToHost => "guest-to-host",
            Direction::HostToGuest => "host-to-guest",
            Direction::HelperToNode => "helper-to-node",
            Direction::NodeToHelper => "node-to-helper",
        }
    }
}

/// What the frame's channel field carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelUse {
    /// Always 0 (boot handshake, lifecycle, events).
    Zero,
    /// A process channel, ≥ 1, chosen by the host with `Start`.
    Process,
    /// The id of one request (≥ 1); its reply carries the same id.
    Request,
}

impl ChannelUse {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelUse::Zero => "zero",
            ChannelUse::Process => "process",
            ChannelUse::Request => "request",
        }
    }
}

/// How the payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Nothing.
    Empty,
    /// Raw bytes (process I/O).
    Raw,
    /// One JSON message.
    Json,
    /// `u32 BE header length | JSON header | bytes`.
    Framed,
}

impl Payload {
    pub fn as_str(self) -> &'static str {
        match self {
            Payload::Empty => "empty",
            Payload::Raw => "raw",
            Payload::Json => "json",
            Payload::Framed => "framed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub name: &'static str,
    pub direction: Direction,
    pub channel: ChannelUse,
    pub payload: Payload,
    /// The message type of Json and Framed payloads.
    pub message: Option<&'static str>,
    pub doc: &'static str,
}

macro_rules! kinds {
    ($( #[doc = $doc:literal] $name:ident = $value:literal, $dir:ident, $chan:ident, $payload:ident $(($ty:ty))? ; )*) => {
        /// A frame kind. Values below 0x80 travel between host and guest;
        /// values from 0x80 are spoken only between Node and the helper and
        /// are never relayed to the guest.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind {
            $( #[doc = $doc] $name = $value, )*
        }

        impl Kind {
            /// Every kind, in value order.
            pub const ALL: &'static [Kind] = &[$(Kind::$name),*];

            pub fn info(self) -> KindInfo {
                match self {
                    $( Kind::$name => KindInfo {
                        name: stringify!($name),
                        direction: Direction::$dir,
                        channel: ChannelUse::$chan,
                        payload: Payload::$payload,
                        message: kinds!(@msg $($ty)?),
                        doc: $doc.trim_ascii(),
                    }, )*
                }
            }
        }

        impl TryFrom<u8> for Kind {
            type Error = u8;
            fn try_from(v: u8) -> Result<Self, u8> {
                match v {
                    $( $value => Ok(Kind::$name), )*
                    other => Err(other),
                }
            }
        }

        $( kinds!(@impl $name $($ty)?); )*

        /// The JSON schema of every message type, by type name.
        #[cfg(feature = "schema")]
        #[allow(clippy::vec_init_then_push)] // one push per kind, generated
        pub fn message_schemas(gen: &mut schemars::SchemaGenerator) -> Vec<(&'static str, schemars::Schema)> {
            let mut out = Vec::new();
            $( kinds!(@schema out gen $($ty)?); )*
            out
        }
    };
    (@msg) => { None };
    (@msg $ty:ty) => { Some(stringify!($ty)) };
    (@impl $name:ident) => {};
    (@impl $name:ident $ty:ty) => {
        impl crate::codec::Message for $ty {
            const KIND: Kind = Kind::$name;
        }
    };
    (@schema $out:ident $gen:ident) => {};
    (@schema $out:ident $gen:ident $ty:ty) => {
        $out.push((stringify!($ty), $gen.subschema_for::<$ty>()));
    };
}

kinds! {
    // --- guest lifecycle (channel 0) ---
    /// init is up and listening.
    Hello = 0x01, GuestToHost, Zero, Json(Hello);
    /// how to finish booting.
    Configure = 0x02, HostToGuest, Zero, Json(Configure);
    /// the guest accepts processes.
    Ready = 0x03, GuestToHost, Zero, Json(Ready);
    /// boot failed in the guest.
    InitError = 0x04, GuestToHost, Zero, Json(InitError);
    /// kill everything, sync, unmount and power off.
    Shutdown = 0x05, HostToGuest, Zero, Empty;
    /// are you there? (liveness; the guest answers Pong at once).
    Ping = 0x06, HostToGuest, Zero, Empty;
    /// the answer to one Ping.
    Pong = 0x07, GuestToHost, Zero, Empty;
    /// helper only: finish the frame being written and send nothing until `Resume`.
    Quiesce = 0x08, HostToGuest, Zero, Empty;
    /// the guest will write nothing more until `Resume`.
    Quiesced = 0x09, GuestToHost, Zero, Empty;
    /// helper only: the channel is live again (after a checkpoint, or in a restored VM).
    Resume = 0x0a, HostToGuest, Zero, Json(Resume);
    /// the guest took the `Resume`.
    Resumed = 0x0b, GuestToHost, Zero, Json(Resumed);

    // --- processes (channel = process id chosen by the host) ---
    /// start a process.
    Start = 0x10, HostToGuest, Process, Json(Start);
    /// the process runs.
    Started = 0x11, GuestToHost, Process, Json(Started);
    /// the process could not start; the channel is finished.
    StartFailed = 0x12, GuestToHost, Process, Json(StartFailed);
    /// bytes for the process' stdin, within the stdin window.
    Stdin = 0x13, HostToGuest, Process, Raw;
    /// close the process' stdin.
    StdinEof = 0x14, HostToGuest, Process, Empty;
    /// stdout bytes, within the granted output credit.
    Stdout = 0x15, GuestToHost, Process, Raw;
    /// stderr bytes, within the granted output credit.
    Stderr = 0x16, GuestToHost, Process, Raw;
    /// the process ended; the channel is finished.
    Exit = 0x17, GuestToHost, Process, Json(Exit);
    /// signal the whole process group.
    Signal = 0x18, HostToGuest, Process, Json(Signal);
    /// the host consumed output: the guest may send this much more per stream.
    Credit = 0x19, HostToGuest, Process, Json(Credit);
    /// stdin bytes handed to the process: the host may send this much more.
    StdinAck = 0x1a, GuestToHost, Process, Json(StdinAck);
    /// new terminal size of a pty process.
    Resize = 0x1b, HostToGuest, Process, Json(Resize);

    // --- lane.fs (0x30–0x3f; channel = request id chosen by the host) ---
    /// one file operation served by init (write data follows the header).
    FileRequest = 0x30, HostToGuest, Request, Framed(FileRequest);
    /// the answer to one FileRequest (read data follows the header).
    FileReply = 0x31, GuestToHost, Request, Framed(FileReply);
    /// start an inotify watch (channel = watch id); the guest answers Watching or WatchEnd.
    WatchStart = 0x32, HostToGuest, Request, Json(WatchStart);
    /// the watch is armed: changes from now on are reported.
    Watching = 0x33, GuestToHost, Request, Empty;
    /// events of one watch, within the event credit the host granted.
    WatchEvents = 0x34, GuestToHost, Request, Json(WatchEvents);
    /// the host consumed events: the guest may send this many more.
    WatchCredit = 0x35, HostToGuest, Request, Json(WatchCredit);
    /// stop a watch; the guest answers WatchEnd.
    WatchStop = 0x36, HostToGuest, Request, Empty;
    /// the watch is over (stopped, its path gone, or it failed); the id is free.
    WatchEnd = 0x37, GuestToHost, Request, Json(WatchEnd);

    // --- Node ⇄ helper: the VMM (channel 0) ---
    /// everything needed to start the VMM; the first frame.
    Launch = 0x80, NodeToHelper, Zero, Json(Launch);
    /// the VMM is running.
    Launched = 0x81, HelperToNode, Zero, Json(Launched);
    /// the VMM process ended.
    VmExited = 0x82, HelperToNode, Zero, Json(VmExited);
    /// the helper failed and is exiting.
    HelperError = 0x83, HelperToNode, Zero, Json(HelperError);
    /// a call on the JavaScript block store.
    BlockRequest = 0x84, HelperToNode, Request, Framed(BlockRequest);
    /// one frame of the answer to a BlockRequest.
    BlockReply = 0x85, NodeToHelper, Request, Framed(BlockReply);
    /// something the helper wants the user to know.
    Diagnostic = 0x86, HelperToNode, Zero, Json(Diagnostic);
    /// capture the running VM into a directory.
    Checkpoint = 0x87, NodeToHelper, Request, Json(Checkpoint);
    /// the answer to one Checkpoint.
    Checkpointed = 0x88, HelperToNode, Request, Json(Checkpointed);

    // --- network (0x90–0x9f) ---
    /// a policy question for one new flow or DNS message (the query follows the header).
    NetRequest = 0x90, HelperToNode, Request, Framed(NetRequest);
    /// the verdict for one NetRequest (a DNS answer follows the header).
    NetReply = 0x91, NodeToHelper, Request, Framed(NetReply);
    /// something the network stack decided on its own.
    NetAudit = 0x92, HelperToNode, Zero, Json(NetAudit);
    /// listen on host loopback and forward to a guest port.
    PortForward = 0x93, NodeToHelper, Request, Json(PortForward);
    /// the answer to one PortForward.
    PortForwarded = 0x94, HelperToNode, Request, Json(PortForwarded);

    // --- virtual filesystems (0xa0–0xaf) ---
    /// one FUSE operation on a JavaScript filesystem (write data follows the header).
    FsRequest = 0xa0, HelperToNode, Request, Framed(FsRequest);
    /// the answer to one FsRequest (read data follows the header).
    FsReply = 0xa1, NodeToHelper, Request, Framed(FsReply);
    /// the guest kernel dropped references to a node; no answer.
    FsForget = 0xa2, HelperToNode, Zero, Json(FsForget);
}

impl Kind {
    /// Whether the helper may relay this kind between Node and the guest.
    pub fn is_guest(self) -> bool {
        matches!(self.info().direction, Direction::GuestToHost | Direction::HostToGuest)
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_sides_follow_the_value_split() {
        for &k in Kind::ALL {
            assert_eq!(Kind::try_from(k as u8), Ok(k));
            assert_eq!(k.is_guest(), (k as u8) < 0x80, "{k:?}");
            let i = k.info();
            assert_eq!(i.message.is_some(), matches!(i.payload, Payload::Json | Payload::Framed), "{k:?}");
        }
        assert!(Kind::try_from(0x7f).is_err());
    }
}
