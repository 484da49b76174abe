//! Audit hook: what the stack decided and why. Events are offered with `try_send`, so a
//! slow consumer loses events (counted in `Stats::events_dropped`) but never stalls flows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::addr::Category;
use crate::flows::{FlowInfo, PolicyFailure};
use crate::frames::FrameError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// TCP handed to the interceptor socket.
    Intercepted,
    /// DNS answered with the policy's own message.
    DnsAnswered,
    Denied,
    /// The policy answered with a decision that does not fit the flow's protocol.
    Mismatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    Codec(FrameError),
    /// Ethernet/ARP/IPv4/TCP/UDP parse or checksum failure, or an IPv4 fragment.
    Packet(&'static str),
    /// Source address other than the configured guest address.
    Spoofed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetEvent {
    FlowDecided { flow: FlowInfo, verdict: Verdict },
    DeniedProtected { flow: FlowInfo, category: Option<Category> },
    PolicyFailed { flow: FlowInfo, failure: PolicyFailure },
    FlowLimit { flow: FlowInfo },
    /// New flows dropped by the connection rate limit since the last such event
    /// (coalesced: at most one per second while the guest keeps exceeding it).
    ConnectRateLimited { dropped: u64, per_second: u32, burst: u32 },
    UpstreamFailed { flow: FlowInfo, error: String },
    MalformedFrame { reason: Malformed },
}

/// Counters, readable while the stack runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub malformed: AtomicU64,
    /// Well-formed frames the stack does not serve (IPv6, ICMP, broadcast, ...).
    pub ignored: AtomicU64,
    pub flows_accepted: AtomicU64,
    pub flows_denied: AtomicU64,
    /// Frames or datagrams dropped because a queue was full.
    pub overflow: AtomicU64,
    pub events_dropped: AtomicU64,
    /// New flows dropped by the connection rate limit.
    pub connects_rate_limited: AtomicU64,
    /// Gauge: flows in the table now (refreshed a few times per second).
    pub live_flows: AtomicU64,
    /// Gauge: host sockets held for flows now (connecting, open or closing).
    pub host_sockets: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub(crate) struct EventSink {
    tx: Option<mpsc::Sender<NetEvent>>,
    stats: Arc<Stats>,
}

impl EventSink {
    pub(crate) fn new(tx: Option<mpsc::Sender<NetEvent>>, stats: Arc<Stats>) -> Self {
        Self { tx, stats }
    }
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
    pub(crate) fn emit(&self, ev: NetEvent) {
        if let Some(tx) = &self.tx {
            if tx.try_send(ev).is_err() {
                Stats::bump(&self.stats.events_dropped);
            }
        }
    }
}
