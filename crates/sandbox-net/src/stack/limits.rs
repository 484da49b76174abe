//! Resource bounds: eviction at the flow cap, the new-connection rate limit, timeouts,
//! the DNS in-flight counter.

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
                TcpPhase::Deciding | TcpPhase::Connecting(_) => true,
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
            self.drop_half_open(key, ack);
        }
        true
    }

    /// Ends a flow that has no smoltcp socket yet (deciding, or waiting for a slot and
    /// connecting): its connect task is aborted, which closes the host socket it holds
    /// and frees its slot before any other connect can take it.
    pub(super) fn drop_half_open(&mut self, key: Key, ack: u32) {
        if let Some(TcpFlow { phase: TcpPhase::Connecting(task), .. }) = self.tcp.remove(&key) {
            task.abort();
        }
        self.reset_guest(key, ack);
    }

    /// Whether a new guest-opened flow may start now; counts the ones that may not.
    pub(super) fn admit_connect(&mut self) -> bool {
        if self.connects.admit(Instant::now()) {
            return true;
        }
        Stats::bump(&self.stats().connects_rate_limited);
        false
    }

    /// Reports rate-limited connects (one event per second at most) and refreshes the
    /// gauges in `Stats`.
    fn report(&mut self) {
        if let Some(dropped) = self.connects.take_report(Instant::now()) {
            let (per_second, burst) = (self.cfg.max_connects_per_second, self.cfg.connect_burst);
            self.sink.emit(NetEvent::ConnectRateLimited { dropped, per_second, burst });
        }
        let stats = self.stats();
        stats.live_flows.store(self.live_flows() as u64, Ordering::Relaxed);
        let held = self.cfg.max_flows.saturating_sub(self.host_slots.available_permits());
        stats.host_sockets.store(held as u64, Ordering::Relaxed);
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
                self.drop_half_open(key, ack);
            }
        }
        self.report();
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

/// Token bucket for new guest-opened flows: `burst` at once, refilled at `rate` per
/// second. Refusals are counted for a coalesced report.
pub(super) struct ConnectBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused: u64,
    last_report: Option<Instant>,
}

impl ConnectBucket {
    pub(super) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self { rate: f64::from(rate), burst: f64::from(burst), tokens: f64::from(burst), last: now, refused: 0, last_report: None }
    }

    pub(super) fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        self.refused += 1;
        false
    }

    /// The refusals since the last report, if any and if a second has passed since it.
    pub(super) fn take_report(&mut self, now: Instant) -> Option<u64> {
        if self.refused == 0 || self.last_report.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.refused))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_admits_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = ConnectBucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.admit(t0)));
        assert!(!b.admit(t0));
        assert_eq!(b.take_report(t0), Some(1));
        // 100 ms at 10/s: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.admit(t1));
        assert!(!b.admit(t1));
        assert!(!b.admit(t1));
        // Coalesced: no second report within the second, then the sum.
        assert_eq!(b.take_report(t1), None);
        assert_eq!(b.take_report(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(b.take_report(t0 + Duration::from_secs(3)), None);
        // Refill never exceeds the burst.
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.admit(t2)).count(), 3);
    }
}
