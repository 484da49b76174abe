/// Frame kinds. Values below 0x80 travel between host and guest; values from
/// 0x80 are spoken only between Node and the helper and are never relayed to
/// the guest (the helper drops any such frame coming from the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    // --- guest lifecycle ---
    /// guest → host, JSON [`crate::Hello`]: init is up and listening.
    Hello = 0x01,
    /// host → guest, JSON [`crate::Configure`]: how to finish booting.
    Configure = 0x02,
    /// guest → host, JSON [`crate::Ready`]: the guest accepts processes.
    Ready = 0x03,
    /// guest → host, JSON [`crate::InitError`]: boot failed in the guest.
    InitError = 0x04,
    /// host → guest: sync filesystems and power off.
    Shutdown = 0x05,

    // --- processes (channel = process id chosen by the host) ---
    /// host → guest, JSON [`crate::Start`].
    Start = 0x10,
    /// guest → host, JSON [`crate::Started`].
    Started = 0x11,
    /// guest → host, JSON [`crate::StartFailed`].
    StartFailed = 0x12,
    /// host → guest, raw bytes for the process' stdin.
    Stdin = 0x13,
    /// host → guest, empty: close the process' stdin.
    StdinEof = 0x14,
    /// guest → host, raw bytes.
    Stdout = 0x15,
    /// guest → host, raw bytes.
    Stderr = 0x16,
    /// guest → host, JSON [`crate::Exit`]; the channel is finished after it.
    Exit = 0x17,
    /// host → guest, JSON [`crate::Signal`]: signal the whole process group.
    Signal = 0x18,
    /// host → guest, JSON [`crate::Credit`]: the host consumed output; the guest may send this much more.
    Credit = 0x19,
    /// guest → host, JSON [`crate::StdinAck`]: stdin bytes handed to the process; the host may send this much more.
    StdinAck = 0x1a,
    /// host → guest, JSON [`crate::Resize`]: new terminal size of a pty process.
    Resize = 0x1b,

    // --- Node ⇄ helper only ---
    /// Node → helper, JSON launch spec.
    Launch = 0x80,
    /// helper → Node, JSON: the VMM is running.
    Launched = 0x81,
    /// helper → Node, JSON: the VMM process ended.
    VmExited = 0x82,
    /// helper → Node, JSON: the helper failed.
    HelperError = 0x83,
    /// helper → Node, [`crate::BlockRequest`] header + block bytes: a call on the JS block store.
    BlockRequest = 0x84,
    /// Node → helper, [`crate::BlockReply`] header + block bytes: the answer to one `BlockRequest`.
    BlockReply = 0x85,

    // --- network (Node ⇄ helper only, 0x90–0x9f) ---
    /// helper → Node, JSON [`crate::NetRequest`]: a policy question for one new flow or DNS message.
    NetRequest = 0x90,
    /// Node → helper, JSON [`crate::NetReply`]: the verdict for one `NetRequest`.
    NetReply = 0x91,
    /// helper → Node, JSON [`crate::NetAudit`]: something the network stack decided on its own.
    NetAudit = 0x92,
    /// Node → helper, JSON [`crate::PortForward`]: listen on host loopback, forward to a guest port.
    PortForward = 0x93,
    /// helper → Node, JSON [`crate::PortForwarded`]: the answer to one `PortForward`.
    PortForwarded = 0x94,

    // --- virtual filesystems (helper ⇄ Node, 0xa0–0xaf) ---
    /// helper → Node, [`crate::FsRequestHeader`]-style JSON header + write data: one FUSE operation on a JS filesystem.
    FsRequest = 0xa0,
    /// Node → helper, JSON header + read data: the answer to one `FsRequest`.
    FsReply = 0xa1,
}

impl Kind {
    /// Whether the helper may relay this kind between Node and the guest.
    pub fn is_guest(self) -> bool {
        (self as u8) < 0x80
    }
}

impl TryFrom<u8> for Kind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        use Kind::*;
        Ok(match v {
            0x01 => Hello,
            0x02 => Configure,
            0x03 => Ready,
            0x04 => InitError,
            0x05 => Shutdown,
            0x10 => Start,
            0x11 => Started,
            0x12 => StartFailed,
            0x13 => Stdin,
            0x14 => StdinEof,
            0x15 => Stdout,
            0x16 => Stderr,
            0x17 => Exit,
            0x18 => Signal,
            0x19 => Credit,
            0x1a => StdinAck,
            0x1b => Resize,
            0x80 => Launch,
            0x81 => Launched,
            0x82 => VmExited,
            0x83 => HelperError,
            0x84 => BlockRequest,
            0x85 => BlockReply,
            0x90 => NetRequest,
            0x91 => NetReply,
            0x92 => NetAudit,
            0x93 => PortForward,
            0x94 => PortForwarded,
            0xa0 => FsRequest,
            0xa1 => FsReply,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn filesystem_kinds_are_helper_only_and_round_trip() {
        for (v, k) in [(0xa0u8, Kind::FsRequest), (0xa1, Kind::FsReply)] {
            assert_eq!(Kind::try_from(v), Ok(k));
            assert_eq!(k as u8, v);
            assert!(!k.is_guest(), "the helper must drop {k:?} coming from the guest");
        }
        assert!(Kind::try_from(0xa2).is_err());
    }
}
