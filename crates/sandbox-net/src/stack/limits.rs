//! Resource bounds: eviction at the flow cap, timeouts, the DNS in-flight counter.

use super::*;

impl Engine {
    /// At the flow cap, frees one slot for a new flow by evicting the least recently
    /// used UDP flow or the oldest half-open TCP flow (SYN floods displace each other,
    /// never an established connection). False when every flow is established TCP.
    pub(super) fn make_room(&mut self) -> bool {
        if self.live_flows() < self.cfg.max_flows {
            return true;
        }
        // Frames queued before this one (a handshake's last ACK) count first.
        self.poll();
        let udp = self
            .udp
            .iter()
            .filter(|(_, f)| !matches!(f.phase, UdpPhase::Denied))
            .min_by_key(|(_, f)| f.last)
            .map(|(k, _)| *k);
        if let Some(key) = udp {
            if let Some(UdpFlow { phase: UdpPhase::Active { task, .. }, .. }) = self.udp.remove(&key) {
                task.abort();
            }
            return true;
        }
        let half_open = self
            .tcp
            .iter()
            .filter(|(_, f)| match &f.phase {
                TcpPhase::Deciding | TcpPhase::Connecting => true,
                TcpPhase::Active(a) => matches!(self.sockets.get::<tcp::Socket>(a.handle).state(), tcp::State::SynReceived | tcp::State::Listen),
                TcpPhase::Dns(_) => false,
            })
            .min_by_key(|(_, f)| f.started)
            .map(|(k, f)| (*k, f.syn_ack));
        let Some((key, ack)) = half_open else { return false };
        if let Some(TcpFlow { phase: TcpPhase::Active(a), .. }) = self.tcp.get(&key) {
            let h = a.handle;
            self.sockets.get_mut::<tcp::Socket>(h).abort();
            self.finish_tcp(key);
        } else {
            self.tcp.remove(&key);
            self.reset_guest(key, ack);
        }
        true
    }

    /// Timeouts: half-open TCP flows, idle DNS connections and idle UDP flows.
    pub(super) fn sweep(&mut self) {
        let limit = self.cfg.handshake_timeout;
        let mut stale = Vec::new();
        for (key, flow) in &self.tcp {
            if flow.started.elapsed() < limit {
                continue;
            }
            match &flow.phase {
                TcpPhase::Active(a) => {
                    let st = self.sockets.get::<tcp::Socket>(a.handle).state();
                    if matches!(st, tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent) {
                        stale.push((*key, flow.syn_ack));
                    }
                }
                // Idle DNS connections go the way of idle UDP flows.
                TcpPhase::Dns(d) => {
                    if !d.busy && d.last.elapsed() >= self.cfg.udp_idle_timeout {
                        stale.push((*key, flow.syn_ack));
                    }
                }
                _ => stale.push((*key, flow.syn_ack)),
            }
        }
        for (key, ack) in stale {
            let handle = match self.tcp.get(&key) {
                Some(TcpFlow { phase: TcpPhase::Active(a), .. }) => Some(a.handle),
                Some(TcpFlow { phase: TcpPhase::Dns(d), .. }) => Some(d.handle),
                _ => None,
            };
            if let Some(h) = handle {
                self.sockets.get_mut::<tcp::Socket>(h).abort();
                self.finish_tcp(key);
            } else {
                self.tcp.remove(&key);
                self.reset_guest(key, ack);
            }
        }
        let idle = self.cfg.udp_idle_timeout;
        let mut denied_gone = 0;
        self.udp.retain(|_, f| {
            let keep = f.last.elapsed() < idle;
            if !keep {
                match &f.phase {
                    UdpPhase::Active { task, .. } => task.abort(),
                    UdpPhase::Denied => denied_gone += 1,
                    UdpPhase::Deciding(_) => {}
                }
            }
            keep
        });
        self.udp_denied -= denied_gone;
    }
}

pub(super) struct InflightGuard(Arc<AtomicUsize>);

impl InflightGuard {
    pub(super) fn new(c: Arc<AtomicUsize>) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
