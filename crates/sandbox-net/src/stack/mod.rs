//! `NetStack`: terminates the guest's network. One task owns the smoltcp interface and
//! the flow table; the guest stream, policy calls and host sockets run in their own
//! tasks and talk to it through channels.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;

use crate::addr;
use crate::config::NetConfig;
use crate::device::QueueDevice;
use crate::dns;
use crate::event::{EventSink, Malformed, NetEvent, Stats, Verdict};
use crate::flows::{self, Decision, FlowInfo, Policy, PolicyFailure, PreDeny, Proto};
use crate::frames::{self, FrameDecoder};
use crate::host::{self, HostConn, HostIo, HostUdp, Internal, Key, Slotted, Tx, CHUNK, CREDITS};
use crate::packet::{self, Ingress, ParseError};

mod forward;
mod wire;
mod limits;
mod tcp_flow;
mod udp_flow;

pub use forward::NetControl;
use forward::Control;
use wire::{read_frames, write_frames};
use limits::{ConnectBucket, InflightGuard};
use tcp_flow::{Active, DnsTcpQuery, TcpFlow, TcpPhase};
use udp_flow::{UdpFlow, UdpPhase};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network config: {0}")]
    Config(&'static str),
    #[error("guest network stream: {0}")]
    Io(#[from] io::Error),
}

/// Frames queued towards the guest before smoltcp is held back.
const TX_LIMIT: usize = 512;
/// Datagrams held per UDP flow while its policy answer is pending.
const UDP_PENDING: usize = 8;

pub struct NetStack {
    cfg: Arc<NetConfig>,
    policy: Arc<dyn Policy>,
    events: Option<mpsc::Sender<NetEvent>>,
    stats: Arc<Stats>,
    control: (mpsc::Sender<Control>, mpsc::Receiver<Control>),
}

impl NetStack {
    pub fn new(cfg: NetConfig, policy: Arc<dyn Policy>) -> Result<Self, NetError> {
        validate(&cfg)?;
        Ok(Self { cfg: Arc::new(cfg), policy, events: None, stats: Arc::default(), control: mpsc::channel(16) })
    }

    /// A handle for requests while the stack runs (port forwarding).
    pub fn control(&self) -> NetControl {
        NetControl::new(self.control.0.clone())
    }

    /// Audit events go to `tx`; when it is full they are dropped and counted.
    pub fn with_events(mut self, tx: mpsc::Sender<NetEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serves the guest until its stream ends. All host sockets of its flows are closed
    /// when this returns.
    pub async fn run<S>(self, stream: S) -> Result<(), NetError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let sink = EventSink::new(self.events, self.stats.clone());
        let (rd, wr) = tokio::io::split(stream);
        let (in_tx, in_rx) = mpsc::channel(256);
        let (out_tx, out_rx) = mpsc::channel(256);
        let reader = tokio::spawn(read_frames(rd, in_tx, sink.clone()));
        let writer = tokio::spawn(write_frames(wr, out_rx));
        let mut engine = Engine::new(self.cfg, self.policy, sink);
        let (_keep, ctl_rx) = self.control;
        engine.run(in_rx, out_tx, ctl_rx).await;
        drop(engine); // aborts the flows' host tasks
        writer.abort();
        match reader.await {
            Ok(r) => r.map_err(NetError::Io),
            Err(_) => Ok(()),
        }
    }
}

fn validate(c: &NetConfig) -> Result<(), NetError> {
    let bad = |m| Err(NetError::Config(m));
    if c.prefix_len == 0 || c.prefix_len > 30 {
        return bad("prefix_len must be 1..=30");
    }
    let net: addr::Cidr = addr::Cidr::new(IpAddr::V4(c.gateway_ip), c.prefix_len).map_err(|_| NetError::Config("prefix"))?;
    if !net.contains(IpAddr::V4(c.guest_ip)) || !net.contains(IpAddr::V4(c.dns_ip)) {
        return bad("guest and resolver must be on the gateway's subnet");
    }
    if c.gateway_ip == c.guest_ip || c.dns_ip == c.guest_ip || c.gateway_ip == c.dns_ip {
        return bad("gateway, resolver and guest addresses must differ");
    }
    let net6 = addr::Cidr::new(IpAddr::V6(c.gateway_ip6), c.prefix_len6).map_err(|_| NetError::Config("prefix_len6"))?;
    let unicast6 = |a: std::net::Ipv6Addr| !a.is_multicast() && !a.is_unspecified() && !a.is_loopback() && a.to_ipv4_mapped().is_none();
    if !(8..=126).contains(&c.prefix_len6) || !net6.contains(IpAddr::V6(c.guest_ip6)) || c.gateway_ip6 == c.guest_ip6 {
        return bad("guest_ip6 must differ from gateway_ip6 and share its prefix (prefix_len6 8..=126)");
    }
    if !unicast6(c.gateway_ip6) || !unicast6(c.guest_ip6) {
        return bad("gateway_ip6 and guest_ip6 must be unicast IPv6 addresses");
    }
    let unicast = |m: [u8; 6]| m[0] & 1 == 0 && m != [0; 6];
    if !unicast(c.gateway_mac) || !unicast(c.guest_mac) || c.gateway_mac == c.guest_mac {
        return bad("gateway_mac and guest_mac must be distinct unicast addresses");
    }
    if !(576..=65535).contains(&c.mtu) {
        return bad("mtu must be 576..=65535");
    }
    if c.tcp_buffer < 1024 || c.max_flows == 0 || c.max_flows > Semaphore::MAX_PERMITS {
        return bad("tcp_buffer >= 1024 and max_flows >= 1");
    }
    if c.max_connects_per_second == 0 || c.connect_burst == 0 {
        return bad("max_connects_per_second and connect_burst must be >= 1");
    }
    Ok(())
}


struct Engine {
    cfg: Arc<NetConfig>,
    policy: Arc<dyn Policy>,
    sink: EventSink,
    mac: EthernetAddress,
    guest_mac: EthernetAddress,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    epoch: Instant,
    tcp: HashMap<Key, TcpFlow>,
    udp: HashMap<Key, UdpFlow>,
    next_id: u64,
    dns_inflight: Arc<AtomicUsize>,
    tx: Tx,
    rx: mpsc::UnboundedReceiver<Internal>,
    last_sweep: Instant,
    /// DNS-over-TCP messages read by `service`, to be asked about.
    dns_ask: Vec<DnsTcpQuery>,
    /// Accept loops of forwarded host ports.
    listeners: Vec<AbortHandle>,
    /// Local port of the next connection into the guest.
    next_forward_port: u16,
    /// Entries of `udp` in the `Denied` phase (not counted as flows).
    udp_denied: usize,
    /// One permit per host socket allowed to exist (`max_flows`); see `host::Slotted`.
    host_slots: Arc<Semaphore>,
    /// New guest-opened flows per second.
    connects: ConnectBucket,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.listeners.iter().for_each(AbortHandle::abort);
        for f in self.tcp.values() {
            match &f.phase {
                TcpPhase::Active(a) => a.tasks.iter().for_each(AbortHandle::abort),
                TcpPhase::Connecting(task) => task.abort(),
                _ => {}
            }
        }
        for f in self.udp.values() {
            if let UdpPhase::Active { task, .. } = &f.phase {
                task.abort();
            }
        }
    }
}

impl Engine {
    fn new(cfg: Arc<NetConfig>, policy: Arc<dyn Policy>, sink: EventSink) -> Self {
        let mac = EthernetAddress(cfg.gateway_mac);
        let mut device = QueueDevice::new(cfg.mtu, TX_LIMIT);
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        // Seeds TCP initial sequence numbers; must differ between runs.
        config.random_seed = RandomState::new().hash_one(epoch);
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.gateway_ip), cfg.prefix_len));
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.dns_ip), cfg.prefix_len));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(cfg.gateway_ip6), cfg.prefix_len6));
        });
        // smoltcp 0.14 treats every unicast destination as local under AnyIP, which lets
        // a listening socket bound to the flow's destination take the guest's SYN.
        iface.set_any_ip(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let guest_mac = cfg.guest_mac;
        let cfg_slots = cfg.max_flows;
        let connects = ConnectBucket::new(cfg.max_connects_per_second, cfg.connect_burst, epoch);
        Self {
            cfg,
            policy,
            sink,
            mac,
            guest_mac: EthernetAddress(guest_mac),
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            tcp: HashMap::new(),
            udp: HashMap::new(),
            next_id: 1,
            dns_inflight: Arc::default(),
            tx,
            rx,
            last_sweep: epoch,
            dns_ask: Vec::new(),
            listeners: Vec::new(),
            next_forward_port: forward::FIRST_PORT,
            udp_denied: 0,
            host_slots: Arc::new(Semaphore::new(cfg_slots)),
            connects,
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    fn stats(&self) -> &Stats {
        self.sink.stats()
    }

    async fn run(&mut self, mut frames_in: mpsc::Receiver<Vec<u8>>, out: mpsc::Sender<Vec<u8>>, mut control: mpsc::Receiver<Control>) {
        loop {
            self.step();
            while !self.device.tx.is_empty() {
                match out.try_reserve() {
                    Ok(p) => {
                        if let Some(f) = self.device.tx.pop_front() {
                            Stats::bump(&self.stats().frames_out);
                            p.send(f);
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    Err(mpsc::error::TrySendError::Closed(())) => return,
                }
            }
            let delay = self
                .iface
                .poll_delay(self.now(), &self.sockets)
                .map_or(Duration::from_secs(1), |d| Duration::from_micros(d.total_micros()))
                .min(Duration::from_secs(1));
            tokio::select! {
                f = frames_in.recv() => {
                    let Some(f) = f else { return };
                    self.ingest(&f);
                    for _ in 0..63 {
                        match frames_in.try_recv() {
                            Ok(f) => self.ingest(&f),
                            Err(_) => break,
                        }
                    }
                }
                m = self.rx.recv() => {
                    if let Some(m) = m {
                        self.internal(m);
                    }
                }
                Some(c) = control.recv() => self.control(c).await,
                p = out.reserve(), if !self.device.tx.is_empty() => {
                    let Ok(p) = p else { return };
                    if let Some(f) = self.device.tx.pop_front() {
                        Stats::bump(&self.stats().frames_out);
                        p.send(f);
                    }
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Polls smoltcp and moves data between its sockets and the host tasks until
    /// nothing changes (bounded, the next loop turn picks up the rest).
    fn step(&mut self) {
        for _ in 0..4 {
            self.poll();
            let moved = self.service();
            self.ask_dns_tcp();
            if !moved {
                break;
            }
        }
        if self.last_sweep.elapsed() >= Duration::from_millis(250) {
            self.last_sweep = Instant::now();
            self.sweep();
        }
    }

    fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn emit_frame(&mut self, frame: Vec<u8>) {
        if self.device.tx_has_room() {
            self.device.tx.push_back(frame);
        } else {
            Stats::bump(&self.stats().overflow);
        }
    }

    fn malformed(&self, reason: Malformed) {
        Stats::bump(&self.stats().malformed);
        self.sink.emit(NetEvent::MalformedFrame { reason });
    }

    // ---------------------------------------------------------------- guest frames

    fn ingest(&mut self, frame: &[u8]) {
        Stats::bump(&self.stats().frames_in);
        let link = packet::Link { our_mac: self.mac, guest_mac: self.guest_mac, guest_ip: self.cfg.guest_ip, guest_ip6: self.cfg.guest_ip6 };
        let ingress = match packet::classify(frame, &link) {
            Ok(x) => x,
            Err(ParseError::Malformed(what)) => return self.malformed(Malformed::Packet(what)),
            Err(ParseError::Spoofed) => return self.malformed(Malformed::Spoofed),
        };
        match ingress {
            Ingress::Arp { target } => {
                // Only our own addresses: AnyIP would otherwise answer ARP for every
                // address, the guest's own included.
                if target == self.cfg.gateway_ip || target == self.cfg.dns_ip {
                    self.device.rx.push_back(frame.to_vec());
                } else {
                    Stats::bump(&self.stats().ignored);
                }
            }
            Ingress::Ndp { target, solicit } => {
                // The guest asking for the gateway, or answering for itself; smoltcp
                // under AnyIP would otherwise claim any target.
                let ours = if solicit { target == self.cfg.gateway_ip6 } else { target == self.cfg.guest_ip6 };
                if ours {
                    self.device.rx.push_back(frame.to_vec());
                } else {
                    Stats::bump(&self.stats().ignored);
                }
            }
            Ingress::Tcp { src, dst, syn, ack, rst, seq, seg_len } => {
                self.guest_tcp(frame, (src, dst), syn && !ack, rst, seq.wrapping_add(seg_len));
            }
            Ingress::Udp { src, dst, payload } => {
                // Every DNS query is the sandbox resolver's, whichever address the guest
                // picked: answers come only from the resolvers the policy chooses.
                if dst.port() == 53 {
                    self.dns_query(src, dst, payload);
                } else {
                    self.guest_udp((src, dst), payload);
                }
            }
            Ingress::Ignored(_) => Stats::bump(&self.stats().ignored),
        }
    }

    fn reset_guest(&mut self, key: Key, ack: u32) {
        let f = packet::tcp_reset(self.mac, self.guest_mac, key.0, key.1, ack);
        self.emit_frame(f);
    }


    fn denied_early(&self, flow: FlowInfo, why: PreDeny) {
        Stats::bump(&self.stats().flows_denied);
        let category = match why {
            PreDeny::Protected(c) => Some(c),
            PreDeny::OwnAddress => None,
        };
        self.sink.emit(NetEvent::DeniedProtected { flow, category });
    }

    fn ask(&self, info: FlowInfo, wrap: impl FnOnce(Result<Decision, PolicyFailure>) -> Internal + Send + 'static) {
        let (policy, tx, deadline) = (self.policy.clone(), self.tx.clone(), self.cfg.policy_deadline);
        tokio::spawn(async move {
            let result = flows::ask(&*policy, info, deadline).await;
            let _ = tx.send(wrap(result));
        });
    }


    /// Hands the DNS-over-TCP messages `service` read to the policy, one task each.
    fn ask_dns_tcp(&mut self) {
        for q in std::mem::take(&mut self.dns_ask) {
            let Some(query) = dns::parse_query(&q.message) else {
                // Not a query: end the connection rather than guess.
                self.malformed(Malformed::Packet("dns query over tcp"));
                if let Some(TcpFlow { phase: TcpPhase::Dns(d), .. }) = self.tcp.get(&q.key) {
                    let h = d.handle;
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                }
                continue;
            };
            let (policy, cfg, sink, tx) = (self.policy.clone(), self.cfg.clone(), self.sink.clone(), self.tx.clone());
            let message: Arc<[u8]> = q.message.into();
            let mut info = q.info.with_id(self.next_id());
            info.query = Some(message.clone());
            let (key, id) = (q.key, q.key_id);
            let guard = InflightGuard::new(self.dns_inflight.clone());
            tokio::spawn(async move {
                let _guard = guard;
                let payload = udp_flow::resolve(&*policy, &cfg, &sink, info, &message, query).await;
                let _ = tx.send(Internal::DnsTcpAnswer { key, id, payload });
            });
        }
    }

    fn internal(&mut self, m: Internal) {
        match m {
            Internal::TcpDecided { key, id, result } => self.tcp_decided(key, id, result),
            Internal::TcpConnected { key, id, result } => self.tcp_connected(key, id, result),
            Internal::DnsTcpAnswer { key, id, payload } => self.dns_tcp_answer(key, id, payload),
            Internal::Inbound { guest_port, stream } => self.inbound(guest_port, stream),
            Internal::HostData { key, id, data } => {
                if let Some(a) = self.active(key, id) {
                    a.from_host.push_back(data);
                }
            }
            Internal::HostEof { key, id } => {
                if let Some(a) = self.active(key, id) {
                    a.host_eof = true;
                }
            }
            Internal::HostError { key, id } => {
                if let Some(a) = self.active(key, id) {
                    let h = a.handle;
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                }
            }
            Internal::HostWritable => {} // service() below retries the guest → host pump
            Internal::UdpDecided { key, id, result } => self.udp_decided(key, id, result),
            Internal::UdpRecv { key, id, data } => self.udp_recv(key, id, data),
            Internal::DnsAnswer { guest, resolver, payload } => {
                let f = packet::udp_datagram(self.mac, self.guest_mac, resolver, guest, &payload);
                self.emit_frame(f);
            }
        }
    }

    fn active(&mut self, key: Key, id: u64) -> Option<&mut Active> {
        match self.tcp.get_mut(&key) {
            Some(TcpFlow { id: fid, phase: TcpPhase::Active(a), .. }) if *fid == id => Some(a),
            _ => None,
        }
    }

    fn verdict(&self, flow: &FlowInfo, result: &Result<Decision, PolicyFailure>, fits: bool) {
        let ev = match result {
            Ok(Decision::Deny) => NetEvent::FlowDecided { flow: flow.clone(), verdict: Verdict::Denied },
            Ok(Decision::Intercept) if fits => NetEvent::FlowDecided { flow: flow.clone(), verdict: Verdict::Intercepted },
            Ok(_) if fits => NetEvent::FlowDecided { flow: flow.clone(), verdict: Verdict::Accepted },
            Ok(_) => NetEvent::FlowDecided { flow: flow.clone(), verdict: Verdict::Mismatch },
            Err(failure) => NetEvent::PolicyFailed { flow: flow.clone(), failure: failure.clone() },
        };
        Stats::bump(if fits { &self.stats().flows_accepted } else { &self.stats().flows_denied });
        self.sink.emit(ev);
    }

}
