//! A second smoltcp interface playing the guest, wired to a NetStack through a unix
//! socketpair carrying length-prefixed frames, exactly as QEMU would.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox_net::device::QueueDevice;
use sandbox_net::frames::{encode, FrameDecoder};
use sandbox_net::{BoxFuture, Decision, FlowInfo, NetConfig, NetEvent, NetStack, Policy, PolicyError, Stats};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

pub const GUEST_MAC: [u8; 6] = [0x02, 0x53, 0x42, 0x00, 0x00, 0x0f];

pub struct Guest {
    pub iface: Interface,
    pub dev: QueueDevice,
    pub sockets: SocketSet<'static>,
    stream: UnixStream,
    dec: FrameDecoder,
    epoch: Instant,
    buf: Vec<u8>,
}

impl Guest {
    fn new(stream: UnixStream) -> Self {
        let mut dev = QueueDevice::new(1500, 1 << 16);
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        cfg.random_seed = 0x5eed;
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24)).unwrap();
            a.push(IpCidr::new(IpAddress::v6(0xfd53, 0x5342, 0, 0, 0, 0, 0, 0x15), 64)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(10, 0, 2, 2)).unwrap();
        iface.routes_mut().add_default_ipv6_route(Ipv6Address::new(0xfd53, 0x5342, 0, 0, 0, 0, 0, 2)).unwrap();
        Self { iface, dev, sockets: SocketSet::new(Vec::new()), stream, dec: FrameDecoder::new(), epoch: Instant::now(), buf: vec![0; 1 << 16] }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    async fn flush(&mut self) {
        let mut out = Vec::new();
        while let Some(f) = self.dev.tx.pop_front() {
            encode(&f, &mut out).unwrap();
        }
        if !out.is_empty() {
            self.stream.write_all(&out).await.unwrap();
        }
    }

    /// Raw bytes onto the wire, for hostile-input tests.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// One round: poll, send, wait (bounded) for frames from the host, poll again.
    pub async fn pump(&mut self, wait: Duration) {
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.flush().await;
        let delay = self
            .iface
            .poll_delay(self.now(), &self.sockets)
            .map_or(wait, |d| Duration::from_micros(d.total_micros()).min(wait));
        if let Ok(Ok(n)) = tokio::time::timeout(delay, self.stream.read(&mut self.buf)).await {
            assert!(n > 0, "host closed the guest stream");
            let rx = &mut self.dev.rx;
            self.dec.push(&self.buf[..n], |r| rx.push_back(r.expect("host sent a bad frame").to_vec()));
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.flush().await;
    }

    /// Pumps until `f` returns Some, or `limit` passes.
    pub async fn until<T>(&mut self, limit: Duration, mut f: impl FnMut(&mut Self) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = f(self) {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump(Duration::from_millis(5)).await;
        }
    }
}

pub struct Harness {
    pub guest: Guest,
    pub control: sandbox_net::NetControl,
    pub events: mpsc::Receiver<NetEvent>,
    pub stats: Arc<Stats>,
    pub asked: Arc<AtomicUsize>,
}

impl Harness {
    pub fn drain_events(&mut self) -> Vec<NetEvent> {
        let mut v = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            v.push(e);
        }
        v
    }
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

/// A policy from a closure, counting how often it was asked.
pub struct Counting<F>(pub F, pub Arc<AtomicUsize>);

impl<F> Policy for Counting<F>
where
    F: Fn(FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> + Send + Sync + 'static,
{
    fn decide(&self, flow: FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        (self.0)(flow)
    }
}

pub fn start<F>(cfg: NetConfig, policy: F) -> Harness
where
    F: Fn(FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> + Send + Sync + 'static,
{
    let (a, b) = UnixStream::pair().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let (etx, erx) = mpsc::channel(1024);
    let stack = NetStack::new(cfg, Arc::new(Counting(policy, asked.clone()))).unwrap().with_events(etx);
    let stats = stack.stats();
    let control = stack.control();
    tokio::spawn(async move {
        let _ = stack.run(b).await;
    });
    Harness { guest: Guest::new(a), control, events: erx, stats, asked }
}

pub fn loopback_allowed() -> NetConfig {
    NetConfig { allow_protected: vec!["127.0.0.0/8".parse().unwrap()], ..NetConfig::default() }
}

pub fn accept_all(_: FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> {
    Box::pin(async { Ok(Decision::AcceptRaw) })
}

pub fn deny_all(_: FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> {
    Box::pin(async { Ok(Decision::Deny) })
}

/// Deterministic bytes for payloads and fuzzing.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
