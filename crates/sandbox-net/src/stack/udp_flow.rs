//! UDP flows and DNS messages over UDP.

use super::*;

pub(super) enum UdpPhase {
    Deciding(Vec<Vec<u8>>),
    Active { sock: Arc<HostUdp>, credit: Arc<Semaphore>, task: AbortHandle },
    /// Remembered until idle so retries are not new policy questions.
    Denied,
}

pub(super) struct UdpFlow {
    pub(super) id: u64,
    pub(super) info: FlowInfo,
    pub(super) last: Instant,
    pub(super) phase: UdpPhase,
}

/// Denied UDP 4-tuples remembered (so retries are not new questions); they hold
/// no resources and do not count as flows, but are bounded on their own.
const MAX_DENIED_UDP: usize = 1024;

impl Engine {
    /// Flows holding resources: TCP flows and UDP flows not merely remembered as denied.
    pub(super) fn live_flows(&self) -> usize {
        self.tcp.len() + self.udp.len() - self.udp_denied
    }

    pub(super) fn remember_denied(&mut self, key: Key, info: FlowInfo) {
        if self.udp_denied < MAX_DENIED_UDP {
            self.udp_denied += 1;
            self.udp.insert(key, UdpFlow { id: 0, info, last: Instant::now(), phase: UdpPhase::Denied });
        }
    }

    pub(super) fn guest_udp(&mut self, key: Key, payload: &[u8]) {
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.last = Instant::now();
            match &mut flow.phase {
                UdpPhase::Deciding(q) if q.len() < UDP_PENDING => q.push(payload.to_vec()),
                UdpPhase::Active { sock, .. } if sock.sock.try_send(payload).is_err() => {
                    Stats::bump(&self.sink.stats().overflow);
                }
                _ => {}
            }
            return;
        }
        let id = self.next_id();
        let info = FlowInfo::new(Proto::Udp, key.0, key.1).with_id(id);
        if let Some(why) = flows::pre_check(&self.cfg, Proto::Udp, info.dst) {
            self.denied_early(info.clone(), why);
            self.remember_denied(key, info);
            return;
        }
        if !self.admit_connect() {
            return;
        }
        if !self.make_room() {
            Stats::bump(&self.stats().flows_denied);
            return self.sink.emit(NetEvent::FlowLimit { flow: info });
        }
        self.ask(info.clone(), move |result| Internal::UdpDecided { key, id, result });
        self.udp.insert(key, UdpFlow { id, info, last: Instant::now(), phase: UdpPhase::Deciding(vec![payload.to_vec()]) });
    }

    pub(super) fn dns_query(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let Some(query) = dns::parse_query(payload) else {
            return self.malformed(Malformed::Packet("dns query"));
        };
        if self.dns_inflight.load(Ordering::Relaxed) >= self.cfg.max_dns_inflight {
            return Stats::bump(&self.stats().overflow);
        }
        let guard = InflightGuard::new(self.dns_inflight.clone());
        let (policy, cfg, sink, tx) = (self.policy.clone(), self.cfg.clone(), self.sink.clone(), self.tx.clone());
        let q: Arc<[u8]> = payload.into();
        let mut info = FlowInfo::new(Proto::Dns, src, dst).with_id(self.next_id());
        info.query = Some(q.clone());
        // A query addressed to the host itself is refused before the policy (REFUSED).
        if let Some(why) = flows::pre_check(&self.cfg, Proto::Dns, info.dst) {
            self.denied_early(info, why);
            let _ = self.tx.send(Internal::DnsAnswer { guest: src, resolver: dst, payload: dns::error_response(payload, query, dns::RCODE_REFUSED) });
            return;
        }
        tokio::spawn(async move {
            let _guard = guard;
            let answer = resolve(&*policy, &cfg, &sink, info, &q, query).await;
            // Guest datagrams carry at most MTU - IP - UDP headers; no fragmentation.
            let answer = if answer.len() > udp_room(cfg.mtu, src) { dns::truncated_response(&q, query) } else { answer };
            let _ = tx.send(Internal::DnsAnswer { guest: src, resolver: dst, payload: answer });
        });
    }

    // ---------------------------------------------------------------- internal events

    pub(super) fn udp_decided(&mut self, key: Key, id: u64, result: Result<Decision, PolicyFailure>) {
        let Some(flow) = self.udp.get_mut(&key) else { return };
        if flow.id != id || !matches!(flow.phase, UdpPhase::Deciding(_)) {
            return;
        }
        let info = flow.info.clone();
        let accept = matches!(result, Ok(Decision::AcceptRaw));
        let queued = match std::mem::replace(&mut flow.phase, UdpPhase::Denied) {
            UdpPhase::Deciding(q) => q,
            _ => Vec::new(),
        };
        self.udp_denied += 1; // until it becomes Active below
        self.verdict(&info, &result, accept);
        if !accept {
            return;
        }
        // Every host socket holds a slot; none free (sockets of evicted flows still
        // closing): forget the flow, the guest's next datagram asks again.
        let Ok(slot) = self.host_slots.clone().try_acquire_owned() else {
            if self.udp.remove(&key).is_some() {
                self.udp_denied -= 1;
            }
            Stats::bump(&self.stats().flows_denied);
            return self.sink.emit(NetEvent::FlowLimit { flow: info });
        };
        let sock = match host::udp_bind(info.dst, &queued) {
            Ok(s) => Arc::new(HostUdp::new(s, slot)),
            Err(e) => return self.sink.emit(NetEvent::UpstreamFailed { flow: info, error: e.to_string() }),
        };
        let credit = Arc::new(Semaphore::new(CREDITS * 8));
        let task = tokio::spawn(host::udp_reader(sock.clone(), credit.clone(), self.tx.clone(), key, id)).abort_handle();
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.phase = UdpPhase::Active { sock, credit, task };
            self.udp_denied -= 1;
        }
    }

    pub(super) fn udp_recv(&mut self, key: Key, id: u64, data: Vec<u8>) {
        let Some(flow) = self.udp.get_mut(&key) else { return };
        let UdpPhase::Active { credit, .. } = &flow.phase else { return };
        if flow.id != id {
            return;
        }
        credit.add_permits(1);
        flow.last = Instant::now();
        if data.len() <= udp_room(self.cfg.mtu, key.0) {
            let f = packet::udp_datagram(self.mac, self.guest_mac, key.1, key.0, &data);
            self.emit_frame(f);
        } else {
            Stats::bump(&self.stats().overflow);
        }
    }

}


/// Decides one DNS query and produces the guest's answer: the policy's own
/// answer (Node resolves accepted queries itself, so attribution is recorded
/// before the guest sees it), REFUSED when denied, SERVFAIL when the answer
/// does not match the question.
pub(super) async fn resolve(policy: &dyn Policy, cfg: &NetConfig, sink: &EventSink, info: FlowInfo, q: &[u8], query: dns::Query) -> Vec<u8> {
    let result = flows::ask(policy, info.clone(), cfg.policy_deadline).await;
    let ev = match &result {
        Ok(Decision::Deny) => NetEvent::FlowDecided { flow: info.clone(), verdict: Verdict::Denied },
        Ok(Decision::DnsAnswer(_)) => NetEvent::FlowDecided { flow: info.clone(), verdict: Verdict::DnsAnswered },
        Ok(_) => NetEvent::FlowDecided { flow: info.clone(), verdict: Verdict::Mismatch },
        Err(failure) => NetEvent::PolicyFailed { flow: info.clone(), failure: failure.clone() },
    };
    let answered = matches!(result, Ok(Decision::DnsAnswer(_)));
    Stats::bump(if answered { &sink.stats().flows_accepted } else { &sink.stats().flows_denied });
    sink.emit(ev);
    match result {
        // An answer to some other question is not passed on.
        Ok(Decision::DnsAnswer(answer)) if dns::answer_matches(q, query, &answer) => answer,
        Ok(Decision::DnsAnswer(_)) => dns::error_response(q, query, dns::RCODE_SERVFAIL),
        _ => dns::error_response(q, query, dns::RCODE_REFUSED),
    }
}

/// The largest UDP payload that fits one frame to `guest` (IPv6 headers are 40 bytes,
/// IPv4's 20; the UDP header 8).
fn udp_room(mtu: usize, guest: SocketAddr) -> usize {
    mtu - if guest.is_ipv6() { 48 } else { 28 }
}
