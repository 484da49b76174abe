//! `NetStack`: terminates the guest's network. One task owns the smoltcp interface and
//! the flow table; the guest stream, policy calls and host sockets run in their own
//! tasks and talk to it through channels.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;

use crate::addr;
use crate::config::NetConfig;
use crate::device::QueueDevice;
use crate::dns;
use crate::event::{EventSink, Malformed, NetEvent, Stats, Verdict};
use crate::flows::{self, Decision, FlowInfo, Policy, PolicyFailure, PreDeny, Proto};
use crate::frames::{self, FrameDecoder};
use crate::host::{self, Internal, Key, Tx, CHUNK, CREDITS};
use crate::packet::{self, Ingress, ParseError};

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
}

impl NetStack {
    pub fn new(cfg: NetConfig, policy: Arc<dyn Policy>) -> Result<Self, NetError> {
        validate(&cfg)?;
        Ok(Self { cfg: Arc::new(cfg), policy, events: None, stats: Arc::default() })
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
        engine.run(in_rx, out_tx).await;
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
    let unicast = |m: [u8; 6]| m[0] & 1 == 0 && m != [0; 6];
    if !unicast(c.gateway_mac) || !unicast(c.guest_mac) || c.gateway_mac == c.guest_mac {
        return bad("gateway_mac and guest_mac must be distinct unicast addresses");
    }
    if !(576..=65535).contains(&c.mtu) {
        return bad("mtu must be 576..=65535");
    }
    if c.tcp_buffer < 1024 || c.max_flows == 0 {
        return bad("tcp_buffer >= 1024 and max_flows >= 1");
    }
    Ok(())
}

async fn read_frames<R: AsyncRead>(rd: R, tx: mpsc::Sender<Vec<u8>>, sink: EventSink) -> io::Result<()> {
    tokio::pin!(rd);
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Vec::new();
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        dec.push(&buf[..n], |r| match r {
            Ok(f) => frames.push(f.to_vec()),
            Err(e) => {
                Stats::bump(&sink.stats().malformed);
                sink.emit(NetEvent::MalformedFrame { reason: Malformed::Codec(e) });
            }
        });
        for f in frames.drain(..) {
            // Awaiting here is the backpressure on the guest's transmit side.
            if tx.send(f).await.is_err() {
                return Ok(());
            }
        }
    }
}

async fn write_frames<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Vec<u8>>) -> io::Result<()> {
    tokio::pin!(wr);
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        let _ = frames::encode(&f, &mut buf);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => {
                    let _ = frames::encode(&f, &mut buf);
                }
                Err(_) => break,
            }
        }
        wr.write_all(&buf).await?;
        wr.flush().await?;
    }
    Ok(())
}

struct Active {
    handle: SocketHandle,
    to_host: Option<mpsc::Sender<Vec<u8>>>,
    reset_host: Option<oneshot::Sender<()>>,
    from_host: std::collections::VecDeque<Vec<u8>>,
    from_off: usize,
    credit: Arc<Semaphore>,
    host_eof: bool,
    fin_sent: bool,
    guest_fin: bool,
    tasks: [AbortHandle; 2],
}

enum TcpPhase {
    Deciding,
    Connecting,
    Active(Box<Active>),
}

struct TcpFlow {
    id: u64,
    info: FlowInfo,
    started: Instant,
    /// The guest's latest SYN, replayed into smoltcp once the upstream is connected.
    syn: Vec<u8>,
    syn_ack: u32,
    phase: TcpPhase,
}

enum UdpPhase {
    Deciding(Vec<Vec<u8>>),
    Active { sock: Arc<UdpSocket>, credit: Arc<Semaphore>, task: AbortHandle },
    /// Remembered until idle so retries are not new policy questions.
    Denied,
}

struct UdpFlow {
    id: u64,
    info: FlowInfo,
    last: Instant,
    phase: UdpPhase,
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
}

impl Drop for Engine {
    fn drop(&mut self) {
        for f in self.tcp.values() {
            if let TcpPhase::Active(a) = &f.phase {
                a.tasks.iter().for_each(AbortHandle::abort);
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
        });
        // smoltcp 0.14 treats every unicast destination as local under AnyIP, which lets
        // a listening socket bound to the flow's destination take the guest's SYN.
        iface.set_any_ip(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let guest_mac = cfg.guest_mac;
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
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    fn stats(&self) -> &Stats {
        self.sink.stats()
    }

    async fn run(&mut self, mut frames_in: mpsc::Receiver<Vec<u8>>, out: mpsc::Sender<Vec<u8>>) {
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
            if !self.service() {
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
        let ingress = match packet::classify(frame, self.mac, self.guest_mac, self.cfg.guest_ip) {
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
            Ingress::Tcp { src, dst, syn, ack, rst, seq, seg_len } => {
                self.guest_tcp(frame, (src, dst), syn && !ack, rst, seq.wrapping_add(seg_len));
            }
            Ingress::Udp { src, dst, payload } => {
                if *dst.ip() == self.cfg.dns_ip && dst.port() == 53 {
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

    fn guest_tcp(&mut self, frame: &[u8], key: Key, syn: bool, rst: bool, next_seq: u32) {
        if let Some(flow) = self.tcp.get_mut(&key) {
            match flow.phase {
                TcpPhase::Active(_) => self.device.rx.push_back(frame.to_vec()),
                // Retransmitted SYNs while deciding: keep the latest, answer nothing yet.
                _ if syn => {
                    flow.syn = frame.to_vec();
                    flow.syn_ack = next_seq;
                }
                _ => {}
            }
            return;
        }
        if !syn {
            // No flow: smoltcp has no socket for it and answers with RST (not to a RST).
            if !rst {
                self.device.rx.push_back(frame.to_vec());
            }
            return;
        }
        let info = FlowInfo::new(Proto::Tcp, SocketAddr::V4(key.0), SocketAddr::V4(key.1));
        if let Some(why) = flows::pre_check(&self.cfg, Proto::Tcp, info.dst) {
            self.denied_early(info, why);
            return self.reset_guest(key, next_seq);
        }
        if self.tcp.len() + self.udp.len() >= self.cfg.max_flows {
            Stats::bump(&self.stats().flows_denied);
            self.sink.emit(NetEvent::FlowLimit { flow: info });
            return self.reset_guest(key, next_seq);
        }
        let id = self.next_id();
        self.ask(info.clone(), move |result| Internal::TcpDecided { key, id, result });
        self.tcp.insert(key, TcpFlow { id, info, started: Instant::now(), syn: frame.to_vec(), syn_ack: next_seq, phase: TcpPhase::Deciding });
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

    fn guest_udp(&mut self, key: Key, payload: &[u8]) {
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.last = Instant::now();
            match &mut flow.phase {
                UdpPhase::Deciding(q) if q.len() < UDP_PENDING => q.push(payload.to_vec()),
                UdpPhase::Active { sock, .. } if sock.try_send(payload).is_err() => {
                    Stats::bump(&self.sink.stats().overflow);
                }
                _ => {}
            }
            return;
        }
        let info = FlowInfo::new(Proto::Udp, SocketAddr::V4(key.0), SocketAddr::V4(key.1));
        let full = self.tcp.len() + self.udp.len() >= self.cfg.max_flows;
        if let Some(why) = flows::pre_check(&self.cfg, Proto::Udp, info.dst) {
            self.denied_early(info.clone(), why);
            if !full {
                self.udp.insert(key, UdpFlow { id: 0, info, last: Instant::now(), phase: UdpPhase::Denied });
            }
            return;
        }
        if full {
            Stats::bump(&self.stats().flows_denied);
            return self.sink.emit(NetEvent::FlowLimit { flow: info });
        }
        let id = self.next_id();
        self.ask(info.clone(), move |result| Internal::UdpDecided { key, id, result });
        self.udp.insert(key, UdpFlow { id, info, last: Instant::now(), phase: UdpPhase::Deciding(vec![payload.to_vec()]) });
    }

    fn dns_query(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let Some(query) = dns::parse_query(payload) else {
            return self.malformed(Malformed::Packet("dns query"));
        };
        if self.dns_inflight.load(Ordering::Relaxed) >= self.cfg.max_dns_inflight {
            return Stats::bump(&self.stats().overflow);
        }
        let guard = InflightGuard::new(self.dns_inflight.clone());
        let (policy, cfg, sink, tx) = (self.policy.clone(), self.cfg.clone(), self.sink.clone(), self.tx.clone());
        let q = payload.to_vec();
        tokio::spawn(async move {
            let _guard = guard;
            let info = FlowInfo::new(Proto::Dns, SocketAddr::V4(src), SocketAddr::V4(dst));
            let answer = resolve(&*policy, &cfg, &sink, info, &q, query).await;
            // Guest datagrams carry at most MTU - IPv4 - UDP headers; no fragmentation.
            let answer = if answer.len() > cfg.mtu - 28 { dns::truncated_response(&q, query) } else { answer };
            let _ = tx.send(Internal::DnsAnswer { guest: src, resolver: dst, payload: answer });
        });
    }

    // ---------------------------------------------------------------- internal events

    fn internal(&mut self, m: Internal) {
        match m {
            Internal::TcpDecided { key, id, result } => self.tcp_decided(key, id, result),
            Internal::TcpConnected { key, id, result } => self.tcp_connected(key, id, result),
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
            Ok(_) if fits => NetEvent::FlowDecided { flow: flow.clone(), verdict: Verdict::Accepted },
            Ok(_) => NetEvent::FlowDecided { flow: flow.clone(), verdict: Verdict::Mismatch },
            Err(failure) => NetEvent::PolicyFailed { flow: flow.clone(), failure: failure.clone() },
        };
        Stats::bump(if fits { &self.stats().flows_accepted } else { &self.stats().flows_denied });
        self.sink.emit(ev);
    }

    fn tcp_decided(&mut self, key: Key, id: u64, result: Result<Decision, PolicyFailure>) {
        let Some(flow) = self.tcp.get_mut(&key) else { return };
        if flow.id != id || !matches!(flow.phase, TcpPhase::Deciding) {
            return;
        }
        let accept = matches!(result, Ok(Decision::AcceptRaw));
        let info = flow.info.clone();
        if !accept {
            let ack = flow.syn_ack;
            self.tcp.remove(&key);
            self.verdict(&info, &result, false);
            return self.reset_guest(key, ack);
        }
        flow.phase = TcpPhase::Connecting;
        self.verdict(&info, &result, true);
        let (tx, limit) = (self.tx.clone(), self.cfg.connect_timeout);
        tokio::spawn(async move {
            let result = host::connect(info.dst, limit).await;
            let _ = tx.send(Internal::TcpConnected { key, id, result });
        });
    }

    fn tcp_connected(&mut self, key: Key, id: u64, result: Result<TcpStream, String>) {
        let Some(flow) = self.tcp.get(&key) else { return };
        if flow.id != id || !matches!(flow.phase, TcpPhase::Connecting) {
            return;
        }
        let (syn, ack, info) = (flow.syn.clone(), flow.syn_ack, flow.info.clone());
        let stream = match result {
            Ok(s) => s,
            Err(error) => {
                self.tcp.remove(&key);
                self.sink.emit(NetEvent::UpstreamFailed { flow: info, error });
                return self.reset_guest(key, ack);
            }
        };
        // Drain what smoltcp has queued, so the replayed SYN is the only one the new
        // listener can see; once it has taken it, it is bound to this 4-tuple.
        self.poll();
        let n = self.cfg.tcp_buffer;
        let mut sock = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; n]), tcp::SocketBuffer::new(vec![0; n]));
        sock.set_nagle_enabled(false);
        let ep = IpListenEndpoint { addr: Some(IpAddress::Ipv4(*key.1.ip())), port: key.1.port() };
        if sock.listen(ep).is_err() {
            self.tcp.remove(&key);
            return self.reset_guest(key, ack);
        }
        let handle = self.sockets.add(sock);
        self.device.rx.push_back(syn);
        self.poll();
        if self.sockets.get::<tcp::Socket>(handle).state() != tcp::State::SynReceived {
            self.sockets.remove(handle);
            self.tcp.remove(&key);
            self.sink.emit(NetEvent::UpstreamFailed { flow: info, error: "guest SYN not taken by the stack".into() });
            return self.reset_guest(key, ack);
        }
        let (rd, wr) = stream.into_split();
        let credit = Arc::new(Semaphore::new(CREDITS));
        let (to_host, to_host_rx) = mpsc::channel(CREDITS);
        let (reset_tx, reset_rx) = oneshot::channel();
        let r = tokio::spawn(host::tcp_reader(rd, credit.clone(), self.tx.clone(), key, id)).abort_handle();
        let w = tokio::spawn(host::tcp_writer(wr, to_host_rx, reset_rx, self.tx.clone(), key, id)).abort_handle();
        if let Some(flow) = self.tcp.get_mut(&key) {
            flow.phase = TcpPhase::Active(Box::new(Active {
                handle,
                to_host: Some(to_host),
                reset_host: Some(reset_tx),
                from_host: Default::default(),
                from_off: 0,
                credit,
                host_eof: false,
                fin_sent: false,
                guest_fin: false,
                tasks: [r, w],
            }));
        }
    }

    /// Moves bytes between smoltcp sockets and host tasks; true if anything moved.
    fn service(&mut self) -> bool {
        let mut moved = false;
        let mut finished = Vec::new();
        for (key, flow) in self.tcp.iter_mut() {
            let TcpPhase::Active(a) = &mut flow.phase else { continue };
            let sock = self.sockets.get_mut::<tcp::Socket>(a.handle);
            // host → guest, as far as the socket's send window allows
            while let Some(front) = a.from_host.front() {
                if !sock.can_send() {
                    break;
                }
                let n = sock.send_slice(&front[a.from_off..]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                moved = true;
                a.from_off += n;
                if a.from_off == front.len() {
                    a.from_host.pop_front();
                    a.from_off = 0;
                    a.credit.add_permits(1);
                }
            }
            if a.host_eof && a.from_host.is_empty() && !a.fin_sent && sock.may_send() {
                sock.close();
                a.fin_sent = true;
                moved = true;
            }
            // guest → host, while the writer has room; otherwise smoltcp's receive
            // buffer fills and the guest's window closes
            if let Some(tx) = &a.to_host {
                while sock.can_recv() {
                    let Ok(permit) = tx.try_reserve() else { break };
                    let mut buf = vec![0u8; CHUNK.min(sock.recv_queue())];
                    let n = sock.recv_slice(&mut buf).unwrap_or(0);
                    buf.truncate(n);
                    permit.send(buf);
                    moved = true;
                }
            }
            let state = sock.state();
            let peer_fin = matches!(state, tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait);
            if peer_fin && !sock.can_recv() && a.to_host.is_some() {
                a.to_host = None; // writer drains, then half-closes towards the host
                a.guest_fin = true;
            }
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                finished.push(*key);
            }
        }
        for key in finished {
            self.finish_tcp(key);
            moved = true;
        }
        moved
    }

    fn finish_tcp(&mut self, key: Key) {
        let Some(flow) = self.tcp.remove(&key) else { return };
        let TcpPhase::Active(mut a) = flow.phase else { return };
        self.sockets.remove(a.handle);
        let orderly = a.guest_fin && a.host_eof;
        if let Some(reset) = a.reset_host.take() {
            if !orderly {
                let _ = reset.send(());
            }
        }
        // The writer owns the last half of the host socket and ends on its own (it
        // half-closed already, or applies the reset); the reader has nothing left to do.
        a.tasks[0].abort();
        if orderly {
            a.tasks[1].abort();
        }
    }

    fn udp_decided(&mut self, key: Key, id: u64, result: Result<Decision, PolicyFailure>) {
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
        self.verdict(&info, &result, accept);
        if !accept {
            return;
        }
        let sock = match host::udp_bind(info.dst, &queued) {
            Ok(s) => Arc::new(s),
            Err(e) => return self.sink.emit(NetEvent::UpstreamFailed { flow: info, error: e.to_string() }),
        };
        let credit = Arc::new(Semaphore::new(CREDITS * 8));
        let task = tokio::spawn(host::udp_reader(sock.clone(), credit.clone(), self.tx.clone(), key, id)).abort_handle();
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.phase = UdpPhase::Active { sock, credit, task };
        }
    }

    fn udp_recv(&mut self, key: Key, id: u64, data: Vec<u8>) {
        let Some(flow) = self.udp.get_mut(&key) else { return };
        let UdpPhase::Active { credit, .. } = &flow.phase else { return };
        if flow.id != id {
            return;
        }
        credit.add_permits(1);
        flow.last = Instant::now();
        if data.len() <= self.cfg.mtu - 28 {
            let f = packet::udp_datagram(self.mac, self.guest_mac, key.1, key.0, &data);
            self.emit_frame(f);
        } else {
            Stats::bump(&self.stats().overflow);
        }
    }

    /// Timeouts: half-open TCP flows and idle UDP flows.
    fn sweep(&mut self) {
        let limit = self.cfg.handshake_timeout;
        let mut stale = Vec::new();
        for (key, flow) in &self.tcp {
            if flow.started.elapsed() < limit {
                continue;
            }
            match &flow.phase {
                TcpPhase::Active(a) => {
                    let st = self.sockets.get::<tcp::Socket>(a.handle).state();
                    if matches!(st, tcp::State::Listen | tcp::State::SynReceived) {
                        stale.push((*key, flow.syn_ack));
                    }
                }
                _ => stale.push((*key, flow.syn_ack)),
            }
        }
        for (key, ack) in stale {
            if let Some(TcpFlow { phase: TcpPhase::Active(a), .. }) = self.tcp.get(&key) {
                let h = a.handle;
                self.sockets.get_mut::<tcp::Socket>(h).abort();
                self.finish_tcp(key);
            } else {
                self.tcp.remove(&key);
                self.reset_guest(key, ack);
            }
        }
        let idle = self.cfg.udp_idle_timeout;
        self.udp.retain(|_, f| {
            let keep = f.last.elapsed() < idle;
            if !keep {
                if let UdpPhase::Active { task, .. } = &f.phase {
                    task.abort();
                }
            }
            keep
        });
    }
}

struct InflightGuard(Arc<AtomicUsize>);

impl InflightGuard {
    fn new(c: Arc<AtomicUsize>) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decides one DNS query and produces the guest's answer: forwarded, REFUSED when
/// denied, SERVFAIL when no resolver answered.
async fn resolve(policy: &dyn Policy, cfg: &NetConfig, sink: &EventSink, info: FlowInfo, q: &[u8], query: dns::Query) -> Vec<u8> {
    let result = flows::ask(policy, info.clone(), cfg.policy_deadline).await;
    let resolvers = match &result {
        Ok(Decision::DnsForward { resolvers }) => resolvers.clone(),
        _ => Vec::new(),
    };
    let fits = matches!(result, Ok(Decision::DnsForward { .. }));
    let ev = match &result {
        Ok(Decision::Deny) => NetEvent::FlowDecided { flow: info.clone(), verdict: Verdict::Denied },
        Ok(_) if fits => NetEvent::FlowDecided { flow: info.clone(), verdict: Verdict::DnsForward },
        Ok(_) => NetEvent::FlowDecided { flow: info.clone(), verdict: Verdict::Mismatch },
        Err(failure) => NetEvent::PolicyFailed { flow: info.clone(), failure: failure.clone() },
    };
    Stats::bump(if fits { &sink.stats().flows_accepted } else { &sink.stats().flows_denied });
    sink.emit(ev);
    if !fits {
        return dns::error_response(q, query, dns::RCODE_REFUSED);
    }
    // The policy's resolvers face the same protected-range rule as any destination.
    let mut allowed = Vec::new();
    for r in resolvers {
        match flows::check_destination(cfg, r.ip()) {
            None => allowed.push(r),
            Some(why) => {
                let category = match why {
                    PreDeny::Protected(c) => Some(c),
                    PreDeny::OwnAddress => None,
                };
                sink.emit(NetEvent::DeniedProtected { flow: FlowInfo::new(Proto::Dns, info.src, r), category });
            }
        }
    }
    if allowed.is_empty() {
        return dns::error_response(q, query, dns::RCODE_REFUSED);
    }
    match host::dns_forward(q, query, &allowed, cfg.dns_timeout).await {
        Some(a) => a,
        None => dns::error_response(q, query, dns::RCODE_SERVFAIL),
    }
}
