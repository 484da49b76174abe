//! The guest side of the contract, enforced: every frame the guest sends is
//! checked against the kind table and against what the host asked for before
//! it is forwarded to Node — handshake order, process channels that exist,
//! output within the credit Node granted, stdin acks within what Node sent.
//! The first violation ends the VM (`FailureCause::GuestProtocol`); Node never
//! sees the offending frame.
//!
//! Node's guest-bound frames pass through here too (decoded, and tracked: a
//! `Start` opens a channel with its output window, `Credit` extends it,
//! `Stdin` counts bytes in flight).

use sandbox_protocol::{self as proto, Direction, Kind, Payload, PROTOCOL_VERSION};
use std::collections::HashMap;

/// A broken rule: what the guest (or Node) sent and why it is refused.
/// `kind` is `None` when the byte stream itself is broken (no frame to name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: Option<u8>,
    pub channel: u32,
    pub reason: String,
}

impl Violation {
    /// The stream cannot be read as frames any more.
    pub fn framing(reason: String) -> Self {
        Self { kind: None, channel: 0, reason }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Some(k) => write!(f, "{} on channel {}: {}", kind_name(k), self.channel, self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Violation {}

/// `E` and at least one more uppercase letter or digit (`ENOENT`, `E2BIG`).
fn is_errno_name(code: &str) -> bool {
    code.len() >= 2 && code.starts_with('E') && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn kind_name(kind: u8) -> String {
    match Kind::try_from(kind) {
        Ok(k) => format!("{} frame (0x{kind:02x})", k.name()),
        Err(_) => format!("frame kind 0x{kind:02x}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the guest's Hello.
    Hello,
    /// Hello seen; Node has not sent Configure yet.
    Configure,
    /// Configure sent; waiting for Ready or InitError.
    Booting,
    Running,
    /// The guest reported a boot failure; only shutdown follows.
    Failed,
    /// A restored VM: waiting for the guest to take the helper's `Resume`.
    Resuming,
}

#[derive(Debug, Default)]
struct Proc {
    started: bool,
    pty: bool,
    stdout_credit: u64,
    stderr_credit: u64,
    stdin_in_flight: u64,
}

pub struct Session {
    phase: Phase,
    procs: HashMap<u32, Proc>,
    /// Pings Node sent that the guest has not answered.
    pings: u64,
    /// File requests waiting for their reply: the result each expects and the most data it may carry.
    files: HashMap<u32, (&'static str, u32)>,
    /// `lane.fs.watch` watches Node started and the guest has not ended.
    watches: HashMap<u32, WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    /// The guest answered `Watching`.
    armed: bool,
    /// Events the guest may still send.
    credit: u64,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self { phase: Phase::Hello, procs: HashMap::new(), pings: 0, files: HashMap::new(), watches: HashMap::new() }
    }

    /// The session of a VM restored from a snapshot: its guest booted long
    /// ago and answers the helper's `Resume` with `Resumed` (which stands for
    /// `Ready`); no process channel of the old session exists here.
    pub fn resuming() -> Self {
        Self { phase: Phase::Resuming, procs: HashMap::new(), pings: 0, files: HashMap::new(), watches: HashMap::new() }
    }

    /// Checks one frame from the guest; `Ok` means it may go to Node as it is.
    pub fn check_guest(&mut self, kind: u8, channel: u32, payload: &[u8]) -> Result<(), Violation> {
        let fail = |reason: String| Violation { kind: Some(kind), channel, reason };
        let k = Kind::try_from(kind).map_err(|_| fail("unknown frame kind".into()))?;
        let info = k.info();
        if info.direction != Direction::GuestToHost {
            return Err(fail(format!("travels {} only; a guest may not send it", info.direction.as_str())));
        }
        if k.info().channel == proto::ChannelUse::Zero && channel != 0 {
            return Err(fail("must be on channel 0".into()));
        }
        let bad = |e: proto::DecodeError| fail(e.to_string());
        match k {
            Kind::Hello => {
                self.expect_phase(Phase::Hello, &fail)?;
                let hello: proto::Hello = proto::decode(payload).map_err(bad)?;
                if hello.protocol != PROTOCOL_VERSION {
                    return Err(fail(format!(
                        "the guest init speaks protocol {}, this helper {PROTOCOL_VERSION}: rebuild the initramfs (npm run setup)",
                        hello.protocol
                    )));
                }
                self.phase = Phase::Configure;
            }
            Kind::Ready => {
                self.expect_phase(Phase::Booting, &fail)?;
                proto::decode::<proto::Ready>(payload).map_err(bad)?;
                self.phase = Phase::Running;
            }
            Kind::InitError => {
                self.expect_phase(Phase::Booting, &fail)?;
                proto::decode::<proto::InitError>(payload).map_err(bad)?;
                self.phase = Phase::Failed;
            }
            Kind::Resumed => {
                // A checkpoint's own Resumed never gets here (the helper takes it).
                self.expect_phase(Phase::Resuming, &fail)?;
                proto::decode::<proto::Resumed>(payload).map_err(bad)?;
                self.phase = Phase::Running;
            }
            Kind::Quiesced => return Err(fail("no Quiesce asked for it".into())),
            Kind::Pong => {
                proto::expect_empty(k, payload).map_err(bad)?;
                if self.pings == 0 {
                    return Err(fail("a Pong no Ping asked for".into()));
                }
                self.pings -= 1;
            }
            Kind::FileReply => {
                self.expect_phase(Phase::Running, &fail)?;
                self.file_reply(channel, payload).map_err(fail)?;
            }
            Kind::Watching | Kind::WatchEvents | Kind::WatchEnd => {
                self.expect_phase(Phase::Running, &fail)?;
                self.watch_frame(k, channel, payload).map_err(fail)?;
            }
            _ => {
                self.expect_phase(Phase::Running, &fail)?;
                self.process_frame(k, channel, payload).map_err(fail)?;
            }
        }
        Ok(())
    }

    fn expect_phase(&self, want: Phase, fail: &impl Fn(String) -> Violation) -> Result<(), Violation> {
        if self.phase == want {
            Ok(())
        } else {
            Err(fail(format!("not expected now (boot phase {:?}, this frame belongs to {want:?})", self.phase)))
        }
    }

    /// A FileReply must answer a request Node made, with the result that
    /// request expects and no more data than it asked for.
    fn file_reply(&mut self, channel: u32, payload: &[u8]) -> Result<(), String> {
        let Some((want, max)) = self.files.remove(&channel) else {
            return Err("no file request waits for this answer".into());
        };
        let (reply, bytes) = proto::decode_framed::<proto::FileReply>(payload).map_err(|e| e.to_string())?;
        let got = reply.result();
        if got != "error" && got != want {
            return Err(format!("a {got} answer to a request that expects {want}"));
        }
        let limit = if got == "data" { max as usize } else { 0 };
        if bytes.len() > limit {
            return Err(format!("{} bytes of data, but the request allows {limit}", bytes.len()));
        }
        match &reply {
            proto::FileReply::Error { code, .. } if !is_errno_name(code) => {
                return Err(format!("{code:?} is not an errno name"));
            }
            proto::FileReply::Dir { entries, .. } => {
                if entries.len() > proto::MAX_DIR_PAGE {
                    return Err(format!("{} directory entries in one page; at most {}", entries.len(), proto::MAX_DIR_PAGE));
                }
                if let Some(e) = entries.iter().find(|e| !proto::is_entry_name(&e.name)) {
                    return Err(format!("{:?} is not a directory entry name", e.name.as_str()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Watch frames: only for a watch Node started, events within its credit, absolute paths.
    fn watch_frame(&mut self, k: Kind, channel: u32, payload: &[u8]) -> Result<(), String> {
        let Some(w) = self.watches.get_mut(&channel) else {
            return Err("no watch runs with this id".into());
        };
        match k {
            Kind::Watching => {
                proto::expect_empty(k, payload).map_err(|e| e.to_string())?;
                if w.armed {
                    return Err("the watch was already armed".into());
                }
                w.armed = true;
            }
            Kind::WatchEvents => {
                let batch: proto::WatchEvents = proto::decode(payload).map_err(|e| e.to_string())?;
                if !w.armed {
                    return Err("events before the watch was armed".into());
                }
                let n = batch.events.len() as u64;
                if n == 0 || n > proto::MAX_WATCH_BATCH as u64 {
                    return Err(format!("{n} events in one frame; 1 to {} allowed", proto::MAX_WATCH_BATCH));
                }
                if n > w.credit {
                    return Err(format!("{n} events, but the host granted only {} more", w.credit));
                }
                if let Some(e) = batch.events.iter().find(|e| !e.path.starts_with('/')) {
                    return Err(format!("{:?} is not an absolute guest path", e.path.as_str()));
                }
                w.credit -= n;
            }
            Kind::WatchEnd => {
                let end: proto::WatchEnd = proto::decode(payload).map_err(|e| e.to_string())?;
                if let proto::WatchEnd::Error { code, .. } = &end {
                    if !is_errno_name(code) {
                        return Err(format!("{code:?} is not an errno name"));
                    }
                }
                self.watches.remove(&channel);
            }
            _ => return Err("not a watch frame".into()),
        }
        Ok(())
    }

    fn process_frame(&mut self, k: Kind, channel: u32, payload: &[u8]) -> Result<(), String> {
        let Some(p) = self.procs.get_mut(&channel) else {
            return Err("no process runs on this channel".into());
        };
        match k {
            Kind::Started => {
                proto::decode::<proto::Started>(payload).map_err(|e| e.to_string())?;
                if p.started {
                    return Err("the process was already started".into());
                }
                p.started = true;
            }
            Kind::StartFailed => {
                proto::decode::<proto::StartFailed>(payload).map_err(|e| e.to_string())?;
                if p.started {
                    return Err("the process was already started".into());
                }
                self.procs.remove(&channel);
            }
            Kind::Stdout | Kind::Stderr => {
                if !p.started {
                    return Err("output before the process started".into());
                }
                let len = payload.len() as u64;
                let credit = if k == Kind::Stdout {
                    &mut p.stdout_credit
                } else if p.pty {
                    return Err("a pty process has no separate stderr".into());
                } else {
                    &mut p.stderr_credit
                };
                if len > *credit {
                    return Err(format!("{len} bytes of output, but the host granted only {credit} more"));
                }
                *credit -= len;
            }
            Kind::StdinAck => {
                let ack: proto::StdinAck = proto::decode(payload).map_err(|e| e.to_string())?;
                let bytes = u64::from(ack.bytes.get());
                if bytes > p.stdin_in_flight {
                    return Err(format!("acknowledges {bytes} stdin bytes, but only {} are in flight", p.stdin_in_flight));
                }
                p.stdin_in_flight -= bytes;
            }
            Kind::Exit => {
                proto::decode::<proto::Exit>(payload).map_err(|e| e.to_string())?;
                if !p.started {
                    return Err("exit of a process that never started".into());
                }
                self.procs.remove(&channel);
            }
            _ => return Err("not a process frame".into()),
        }
        Ok(())
    }

    /// Checks one guest-bound frame from Node and tracks what it grants.
    pub fn check_node(&mut self, kind: Kind, channel: u32, payload: &[u8]) -> Result<(), Violation> {
        let fail = |reason: String| Violation { kind: Some(kind as u8), channel, reason };
        let bad = |e: proto::DecodeError| fail(e.to_string());
        let info = kind.info();
        if info.direction != Direction::HostToGuest {
            return Err(fail(format!("travels {} only", info.direction.as_str())));
        }
        match (info.channel, channel) {
            (proto::ChannelUse::Zero, 0) => {}
            (proto::ChannelUse::Zero, _) => return Err(fail("must be on channel 0".into())),
            (_, 0) => return Err(fail("needs a process channel (≥ 1)".into())),
            _ => {}
        }
        if info.payload == Payload::Empty {
            proto::expect_empty(kind, payload).map_err(bad)?;
        }
        match kind {
            Kind::Quiesce | Kind::Resume => return Err(fail("only the helper sends it, around a checkpoint".into())),
            Kind::Configure => {
                proto::decode::<proto::Configure>(payload).map_err(bad)?;
                if self.phase != Phase::Configure {
                    return Err(fail(format!("Configure during boot phase {:?}", self.phase)));
                }
                self.phase = Phase::Booting;
            }
            Kind::Start => {
                let start: proto::Start = proto::decode(payload).map_err(bad)?;
                if self.procs.contains_key(&channel) {
                    return Err(fail("a process already runs on this channel".into()));
                }
                let window = u64::from(start.initial_window());
                let p = Proc { pty: start.pty.is_some(), stdout_credit: window, stderr_credit: window, ..Proc::default() };
                self.procs.insert(channel, p);
            }
            Kind::Credit => {
                let c: proto::Credit = proto::decode(payload).map_err(bad)?;
                if let Some(p) = self.procs.get_mut(&channel) {
                    p.stdout_credit = p.stdout_credit.saturating_add(u64::from(c.stdout));
                    p.stderr_credit = p.stderr_credit.saturating_add(u64::from(c.stderr));
                }
            }
            Kind::Stdin => {
                if let Some(p) = self.procs.get_mut(&channel) {
                    p.stdin_in_flight = p.stdin_in_flight.saturating_add(payload.len() as u64);
                }
            }
            Kind::Signal => {
                proto::decode::<proto::Signal>(payload).map_err(bad)?;
            }
            Kind::FileRequest => {
                let (req, _) = proto::decode_framed::<proto::FileRequest>(payload).map_err(bad)?;
                if self.files.contains_key(&channel) {
                    return Err(fail("a file request with this id is still waiting for its answer".into()));
                }
                self.files.insert(channel, req.expects());
            }
            Kind::WatchStart => {
                let start: proto::WatchStart = proto::decode(payload).map_err(bad)?;
                if self.watches.contains_key(&channel) {
                    return Err(fail("a watch with this id is still running".into()));
                }
                self.watches.insert(channel, WatchState { armed: false, credit: u64::from(start.window.get()) });
            }
            Kind::WatchCredit => {
                let c: proto::WatchCredit = proto::decode(payload).map_err(bad)?;
                if let Some(w) = self.watches.get_mut(&channel) {
                    w.credit = w.credit.saturating_add(u64::from(c.events.get()));
                }
            }
            Kind::Ping => self.pings = self.pings.saturating_add(1),
            Kind::Resize => {
                proto::decode::<proto::Resize>(payload).map_err(bad)?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
