//! The guest network: sandbox-net's userspace stack on its own thread, serving the
//! VMM's virtio-net stream. Every policy question is a `NetRequest` on the
//! network service (the guest's DNS query follows the header); audit events
//! become `NetAudit` frames; Node's `PortForward` requests are answered here.
//! Node is trusted less than the stack: a malformed or late verdict is a denial.

use crate::diag::Diag;
use crate::error::HostError;
use crate::link::NodeTx;
use crate::rate::{Admit, RateLimit};
use crate::relay::NodeRequestHandler;
use crate::service::{CallError, Service, ServiceSpec, Step};
use sandbox_net::{BoxFuture, Cidr, Decision, FlowInfo, NetConfig, NetControl, NetEvent, NetStack, Policy, PolicyError, Proto};
use sandbox_protocol::{self as proto, AuditKind, DiagnosticSource, DnsTransport, JsU64, Kind, NetAudit, NetLaunch, NetProto, NetReply, NetRequest, NetVerdict, Text};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Policy questions in flight (flows being decided plus DNS queries).
const MAX_IN_FLIGHT: usize = 2048;

pub fn spec(deadline: Duration) -> ServiceSpec {
    ServiceSpec {
        name: "network policy",
        request: Kind::NetRequest,
        reply: Kind::NetReply,
        deadline,
        max_in_flight: MAX_IN_FLIGHT,
        source: DiagnosticSource::Net,
    }
}

fn proto_of(p: Proto) -> NetProto {
    match p {
        Proto::Tcp => NetProto::Tcp,
        Proto::Udp => NetProto::Udp,
        Proto::Dns => NetProto::Dns,
    }
}

struct NodePolicy(Arc<Service>);

impl Policy for NodePolicy {
    fn decide(&self, flow: FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> {
        let service = self.0.clone();
        Box::pin(async move {
            let req = NetRequest {
                flow: JsU64::saturating(flow.id),
                proto: proto_of(flow.proto),
                src_ip: Text::truncated(flow.src.ip().to_string()),
                src_port: flow.src.port(),
                dst_ip: Text::truncated(flow.dst.ip().to_string()),
                dst_port: flow.dst.port(),
                transport: (flow.proto == Proto::Dns).then_some(if flow.dns_over_tcp { DnsTransport::Tcp } else { DnsTransport::Udp }),
            };
            let query = flow.query.as_deref().unwrap_or_default();
            let verdict = service
                .call(
                    |id| proto::encode_framed(id, &req, &[query]),
                    |payload| {
                        let (reply, answer) = proto::decode_framed::<NetReply>(payload).map_err(|e| e.to_string())?;
                        Ok(Step::Done((reply.verdict, answer.to_vec())))
                    },
                )
                .await;
            Ok(match verdict {
                Ok((NetVerdict::Accept, _)) => Decision::AcceptRaw,
                Ok((NetVerdict::Intercept, _)) => Decision::Intercept,
                Ok((NetVerdict::Answer, answer)) if !answer.is_empty() => Decision::DnsAnswer(answer),
                Ok((NetVerdict::Answer, _)) => return Err(PolicyError("Node answered a DNS question with no message".into())),
                Ok((NetVerdict::Deny, _)) => Decision::Deny,
                Err(CallError::Malformed(why)) => return Err(PolicyError(format!("bad verdict from Node: {why}"))),
                Err(e) => return Err(PolicyError(e.to_string())),
            })
        })
    }
}

/// Answers Node's `PortForward` requests once the stack runs.
pub struct PortForwards {
    tx: NodeTx,
    control: Mutex<Option<NetControl>>,
}

impl PortForwards {
    pub fn new(tx: NodeTx) -> Arc<Self> {
        Arc::new(Self { tx, control: Mutex::new(None) })
    }
}

impl NodeRequestHandler for PortForwards {
    fn handle(&self, channel: u32, payload: Vec<u8>) {
        let tx = self.tx.clone();
        let answer = move |msg: proto::PortForwarded| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(proto::encode(channel, &msg)).await;
            }
        };
        let failed = |error: String| proto::PortForwarded::Failed { error: Text::truncated(error) };
        let req = match proto::decode::<proto::PortForward>(&payload) {
            Ok(r) => r,
            Err(e) => {
                tokio::spawn(answer(failed(format!("bad PortForward: {e}"))));
                return;
            }
        };
        let control = self.control.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tokio::spawn(async move {
            let msg = match control {
                None => failed("this sandbox has no network".into()),
                Some(c) => match c.forward_port(req.guest_port.get(), req.host_port).await {
                    Ok(port) => match proto::U16In::new(port) {
                        Some(port) => proto::PortForwarded::Listening { port },
                        None => failed(format!("the helper listened on port {port}")),
                    },
                    Err(e) => failed(e),
                },
            };
            answer(msg).await;
        });
    }
}

/// The stack's configuration from the launch request.
pub fn config(n: &NetLaunch) -> Result<NetConfig, HostError> {
    let bad = |m: String| HostError::InvalidLaunch(m);
    let allow_protected = n
        .allow_protected
        .iter()
        .map(|c| c.parse::<Cidr>().map_err(|e| bad(format!("network allowProtected: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = &n.intercept_socket {
        if !p.starts_with('/') {
            return Err(bad(format!("network interceptSocket must be an absolute path, got {p:?}")));
        }
    }
    Ok(NetConfig {
        policy_deadline: Duration::from_millis(n.policy_deadline_ms.get()),
        max_flows: n.max_flows.get() as usize,
        max_connects_per_second: n.max_connects_per_second.map_or(NetConfig::default().max_connects_per_second, |r| r.get()),
        connect_burst: n.connect_burst.map_or(NetConfig::default().connect_burst, |b| b.get()),
        allow_protected,
        host_addrs: live_host_addresses(),
        intercept_socket: n.intercept_socket.as_ref().map(PathBuf::from),
        ..NetConfig::default()
    })
}

/// Runs the stack on its own thread until the VMM closes its end of `stream`.
pub fn start(cfg: NetConfig, stream: UnixStream, service: Arc<Service>, forwards: &PortForwards, tx: NodeTx, diag: Diag) -> Result<(), HostError> {
    stream.set_nonblocking(true).map_err(|e| HostError::Setup(format!("nonblocking net socket: {e}")))?;
    let stack = NetStack::new(cfg, Arc::new(NodePolicy(service))).map_err(|e| HostError::Setup(e.to_string()))?;
    heap::fixed_mmap_threshold();
    let stats = stack.stats();
    *forwards.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(stack.control());
    let (etx, mut erx) = mpsc::channel::<NetEvent>(256);
    let stack = stack.with_events(etx);
    std::thread::Builder::new()
        .name("sandbox-net".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return diag.error(DiagnosticSource::Net, format!("network runtime: {e}; the guest has no network")),
            };
            rt.block_on(async move {
                tokio::spawn(heap::trim_after_bursts(stats));
                tokio::spawn(async move {
                    let mut limit = RateLimit::new(AUDITS_PER_SECOND);
                    while let Some(ev) = erx.recv().await {
                        let Some(a) = audit_of(&ev) else { continue };
                        let send = |a: &NetAudit| tx.try_send(proto::encode(0, a));
                        match limit.admit(std::time::Instant::now()) {
                            Admit::Yes => send(&a),
                            Admit::YesAfterDropping(n) => {
                                send(&dropped_audit(n));
                                send(&a)
                            }
                            Admit::No => true,
                        };
                    }
                });
                let stream = match tokio::net::UnixStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => return diag.error(DiagnosticSource::Net, format!("network socket: {e}; the guest has no network")),
                };
                if let Err(e) = stack.run(stream).await {
                    diag.error(DiagnosticSource::Net, format!("the guest network stopped: {e}"));
                }
            });
        })
        .map_err(|e| HostError::Setup(format!("network thread: {e}")))?;
    Ok(())
}

/// The helper's heap across flow bursts. Each flow allocates two smoltcp buffers
/// (`NetConfig::tcp_buffer`, 256 KiB each) plus small per-chunk buffers. glibc
/// serves the large ones with mmap at first, but raises its mmap threshold every
/// time such a chunk is freed, after which they come from the heap (zeroed by hand,
/// so fully resident) and stay there after the flow closes: measured 5 → 61 MiB RSS
/// after a 2,000-connect burst, never returned.
mod heap {
    use sandbox_net::Stats;
    use std::sync::Arc;
    use std::time::Duration;

    /// Flows started since the last trim before a quiet moment trims again.
    const TRIM_AFTER_FLOWS: u64 = 64;

    /// Pins glibc's mmap threshold at its default (128 KiB), which turns off the
    /// dynamic raise: flow buffers stay mmapped (lazily zeroed, unmapped on free).
    pub fn fixed_mmap_threshold() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator tuning; any value is valid.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }

    /// Returns free heap pages to the OS once a burst of flows is over (the live
    /// flow count stopped growing after many new flows): small per-flow buffers
    /// freed in the middle of an arena are otherwise kept.
    pub async fn trim_after_bursts(stats: Arc<Stats>) {
        let started = |s: &Stats| Stats::get(&s.flows_accepted) + Stats::get(&s.flows_denied) + Stats::get(&s.connects_rate_limited);
        let mut at_trim = started(&stats);
        let mut last_live = u64::MAX;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let live = Stats::get(&stats.live_flows).max(Stats::get(&stats.host_sockets));
            let now = started(&stats);
            if now.saturating_sub(at_trim) >= TRIM_AFTER_FLOWS && live <= last_live {
                release_free_heap();
                at_trim = now;
            }
            last_live = live;
        }
    }

    fn release_free_heap() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; safe to call at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Audit records per second passed to Node; past it they are counted and summarized,
/// so a guest spraying bad frames cannot queue unbounded frames towards Node.
const AUDITS_PER_SECOND: u32 = 200;

fn dropped_audit(n: u64) -> NetAudit {
    NetAudit {
        kind: AuditKind::AuditDropped,
        proto: None,
        src: None,
        dst: None,
        message: Text::truncated(format!("{n} audit records dropped (more than {AUDITS_PER_SECOND} per second)")),
    }
}

/// The audit records Node cannot know on its own (its own verdicts it knows).
fn audit_of(ev: &NetEvent) -> Option<NetAudit> {
    let flow = |kind: AuditKind, f: &FlowInfo, message: String| NetAudit {
        kind,
        proto: Some(proto_of(f.proto)),
        src: Some(Text::truncated(f.src.to_string())),
        dst: Some(Text::truncated(f.dst.to_string())),
        message: Text::truncated(message),
    };
    Some(match ev {
        NetEvent::DeniedProtected { flow: f, category } => {
            let message = match category {
                Some(c) => format!(
                    "denied before the policy: {} is a {} address; opt the range in with allowProtected",
                    f.dst.ip(),
                    format!("{c:?}").to_lowercase()
                ),
                // No option opens these (docs/security-model.md): saying allowProtected would mislead.
                None => format!(
                    "denied before the policy: {} is the sandbox's or the host's own address, which no policy can open; reach host services through a host on another address, or the guest's through forwardPort",
                    f.dst.ip()
                ),
            };
            flow(AuditKind::Protected, f, message)
        }
        NetEvent::PolicyFailed { flow: f, failure } => flow(AuditKind::PolicyFailed, f, format!("denied: {failure:?}")),
        NetEvent::FlowLimit { flow: f } => flow(AuditKind::FlowLimit, f, "denied: the sandbox's concurrent flow limit is reached".into()),
        NetEvent::ConnectRateLimited { dropped, per_second, burst } => NetAudit {
            kind: AuditKind::ConnectRate,
            proto: None,
            src: None,
            dst: None,
            message: Text::truncated(format!(
                "{dropped} new connections dropped before the policy: more than {per_second} per second (burst {burst}); raise maxConnectsPerSecond / connectBurst if this is legitimate"
            )),
        },
        NetEvent::UpstreamFailed { flow: f, error } => flow(AuditKind::UpstreamFailed, f, format!("accepted but the destination failed: {error}")),
        NetEvent::MalformedFrame { reason } => NetAudit {
            kind: AuditKind::Malformed,
            proto: None,
            src: None,
            dst: None,
            message: Text::truncated(format!("{reason:?}")),
        },
        _ => return None,
    })
}

/// The host's own addresses, tracked live: a netlink socket subscribed to address
/// changes is drained at every check, and any notification (or a lost one, ENOBUFS)
/// makes the list be read again. The kernel queues the notification before the
/// address-adding call returns, so an address is refused from the moment it exists.
/// Without netlink (or if it cannot be opened) the list is read at every check.
fn live_host_addresses() -> sandbox_net::HostAddrs {
    let watch = AddrWatch::open();
    let state = std::sync::Mutex::new(std::sync::Arc::new(host_addresses()));
    sandbox_net::HostAddrs::live(move || {
        let mut cached = state.lock().unwrap_or_else(|p| p.into_inner());
        if watch.as_ref().is_none_or(AddrWatch::changed) {
            *cached = std::sync::Arc::new(host_addresses());
        }
        cached.clone()
    })
}

/// A NETLINK_ROUTE socket subscribed to IPv4/IPv6 address events.
struct AddrWatch(std::os::fd::OwnedFd);

impl AddrWatch {
    #[cfg(target_os = "linux")]
    #[allow(clippy::cast_possible_truncation)] // AF_NETLINK and sizeof(sockaddr_nl) are small constants
    fn open() -> Option<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a fresh socket nobody else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid; we set family and groups.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let rc = unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t) };
        (rc == 0).then_some(Self(owned))
    }

    #[cfg(not(target_os = "linux"))]
    fn open() -> Option<Self> {
        None
    }

    /// Drains pending notifications; true if there were any (or some were lost).
    fn changed(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: buf is valid for its length; non-blocking socket.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                any = true;
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                return any;
            }
            // ENOBUFS (notifications lost) or anything else: assume a change.
            return true;
        }
    }
}

/// The host's own addresses: a guest must not reach the host through them.
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ReplySink;
    use sandbox_protocol::FrameDecoder;

    #[tokio::test]
    async fn node_verdicts_map_to_decisions_and_bad_ones_fail() {
        let (tx, mut frames) = NodeTx::new(16);
        let service = Service::new(spec(Duration::from_secs(5)), tx, Diag::none(), None);
        let policy = NodePolicy(service.clone());
        let flow = |id: u64| FlowInfo::new(Proto::Tcp, "10.0.2.15:1000".parse().unwrap(), "203.0.113.1:80".parse().unwrap()).with_test_id(id);
        let reply = |v: NetVerdict, answer: &[u8]| proto::encode_framed(1, &NetReply { verdict: v }, &[answer])[proto::HEADER_LEN..].to_vec();
        for (payload, want) in [
            (reply(NetVerdict::Accept, &[]), Ok(Decision::AcceptRaw)),
            (reply(NetVerdict::Intercept, &[]), Ok(Decision::Intercept)),
            (reply(NetVerdict::Deny, &[]), Ok(Decision::Deny)),
            (reply(NetVerdict::Answer, &[1, 2]), Ok(Decision::DnsAnswer(vec![1, 2]))),
            (reply(NetVerdict::Answer, &[]), Err(())),
            (b"\0\0\0\x02{}".to_vec(), Err(())),
            (br#"xx"#.to_vec(), Err(())),
        ] {
            let task = tokio::spawn(policy.decide(flow(7)));
            let frame = frames.recv().await.unwrap();
            let mut dec = FrameDecoder::new();
            dec.push(&frame);
            let f = dec.next_frame().unwrap().unwrap();
            let (req, _) = proto::decode_framed::<NetRequest>(&f.payload).unwrap();
            assert_eq!((req.flow.get(), req.proto, req.dst_port), (7, NetProto::Tcp, 80));
            service.deliver(f.channel, payload);
            let got = task.await.unwrap().map_err(|_| ());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn config_checks_its_inputs() {
        let ok: NetLaunch = serde_json::from_str(r#"{"policyDeadlineMs":5000,"maxFlows":10,"allowProtected":["10.0.0.0/8"],"interceptSocket":"/tmp/x.sock"}"#).unwrap();
        let c = config(&ok).unwrap();
        assert_eq!(c.max_flows, 10);
        assert_eq!((c.max_connects_per_second, c.connect_burst), (100, 200), "defaults");
        let rated: NetLaunch = serde_json::from_str(r#"{"policyDeadlineMs":5000,"maxFlows":10,"maxConnectsPerSecond":7,"connectBurst":9,"allowProtected":[]}"#).unwrap();
        let r = config(&rated).unwrap();
        assert_eq!((r.max_connects_per_second, r.connect_burst), (7, 9));
        assert!(serde_json::from_str::<NetLaunch>(r#"{"policyDeadlineMs":5000,"maxFlows":10,"maxConnectsPerSecond":0,"allowProtected":[]}"#).is_err());
        assert_eq!(c.allow_protected.len(), 1);
        assert!(c.host_addrs.current().iter().any(|a| a.is_loopback()), "the host's loopback is its own: {:?}", c.host_addrs);
        for bad in [
            NetLaunch { allow_protected: vec![Text::truncated("10.0.0.0")], ..ok.clone() },
            NetLaunch { intercept_socket: Some("rel.sock".into()), ..ok.clone() },
        ] {
            assert!(matches!(config(&bad), Err(HostError::InvalidLaunch(_))), "{bad:?}");
        }
        for bad in [r#"{"policyDeadlineMs":0,"maxFlows":10,"allowProtected":[]}"#, r#"{"policyDeadlineMs":5,"maxFlows":0,"allowProtected":[]}"#] {
            assert!(serde_json::from_str::<NetLaunch>(bad).is_err(), "{bad}");
        }
    }
}
