//! The guest network: sandbox-net's userspace stack on its own thread, serving the
//! VMM's virtio-net stream. Every policy question becomes a `NetRequest` frame to
//! Node; `NetReply` frames are routed back by id. Audit events become `NetAudit`
//! frames. Node is trusted less than the stack: an unknown id, an unknown verdict or
//! an undecodable DNS answer is a denial.

use crate::error::HostError;
use sandbox_net::{BoxFuture, Cidr, Decision, FlowInfo, NetConfig, NetControl, NetEvent, NetStack, Policy, PolicyError, Proto};
use sandbox_protocol::{self as proto, b64, Kind, NetAudit, NetLaunch, NetReply, NetRequest};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Routes verdicts from Node to the questions waiting for them.
pub struct NetBridge {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<NetReply>>>,
    control: Mutex<Option<NetControl>>,
}

impl NetBridge {
    pub fn new(out: mpsc::UnboundedSender<Vec<u8>>) -> Arc<Self> {
        Arc::new(Self { out, pending: Mutex::new(HashMap::new()), control: Mutex::new(None) })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<NetReply>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One `NetReply` payload from Node.
    pub fn deliver(&self, payload: &[u8]) {
        let Ok(reply) = proto::decode::<NetReply>(payload) else {
            return eprintln!("sandbox-host: ignoring malformed NetReply");
        };
        if let Some(tx) = self.pending().remove(&reply.id) {
            let _ = tx.send(reply);
        }
    }

    /// One `PortForward` payload from Node; the answer goes back as `PortForwarded`.
    pub fn forward(&self, payload: &[u8]) {
        let out = self.out.clone();
        let send = move |msg: proto::PortForwarded| {
            let mut frame = Vec::new();
            proto::frame_into(&mut frame, Kind::PortForwarded, 0, &proto::encode(&msg));
            let _ = out.send(frame);
        };
        let req = match proto::decode::<proto::PortForward>(payload) {
            Ok(r) => r,
            Err(e) => return send(proto::PortForwarded { id: 0, port: None, error: Some(format!("bad PortForward: {e}")) }),
        };
        let control = self.control.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(control) = control else {
            return send(proto::PortForwarded { id: req.id, port: None, error: Some("this sandbox has no network".into()) });
        };
        tokio::spawn(async move {
            let r = control.forward_port(req.guest_port, req.host_port).await;
            let (port, error) = match r {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            };
            send(proto::PortForwarded { id: req.id, port, error });
        });
    }

    fn send_frame(&self, kind: Kind, body: &impl serde::Serialize) -> bool {
        let mut frame = Vec::new();
        proto::frame_into(&mut frame, kind, 0, &proto::encode(body));
        self.out.send(frame).is_ok()
    }
}

/// Removes a question's slot when its future is dropped (deadline, stack gone).
struct Slot(Arc<NetBridge>, u64);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.pending().remove(&self.1);
    }
}

struct NodePolicy(Arc<NetBridge>);

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Dns => "dns",
    }
}

impl Policy for NodePolicy {
    fn decide(&self, flow: FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> {
        let bridge = self.0.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            bridge.pending().insert(flow.id, tx);
            let _slot = Slot(bridge.clone(), flow.id);
            let req = NetRequest {
                id: flow.id,
                proto: proto_name(flow.proto).into(),
                src_ip: flow.src.ip().to_string(),
                src_port: flow.src.port(),
                dst_ip: flow.dst.ip().to_string(),
                dst_port: flow.dst.port(),
                transport: (flow.proto == Proto::Dns).then(|| if flow.dns_over_tcp { "tcp" } else { "udp" }.to_string()),
                query: flow.query.as_deref().map(b64::encode),
            };
            if !bridge.send_frame(Kind::NetRequest, &req) {
                return Err(PolicyError("the connection to Node is gone".into()));
            }
            let reply = rx.await.map_err(|_| PolicyError("the verdict was lost".into()))?;
            Ok(match reply.verdict.as_str() {
                "accept" => Decision::AcceptRaw,
                "intercept" => Decision::Intercept,
                "answer" => match reply.answer.as_deref().and_then(b64::decode) {
                    Some(a) => Decision::DnsAnswer(a),
                    None => return Err(PolicyError("Node sent a DNS answer that is not base64".into())),
                },
                _ => Decision::Deny,
            })
        })
    }
}

/// The stack's configuration from the launch request.
pub fn config(n: &NetLaunch) -> Result<NetConfig, HostError> {
    let bad = |m: String| HostError::InvalidLaunch(m);
    if !(1..=600_000).contains(&n.policy_deadline_ms) {
        return Err(bad(format!("network policyDeadlineMs must be 1..=600000, got {}", n.policy_deadline_ms)));
    }
    if !(1..=65_536).contains(&n.max_flows) {
        return Err(bad(format!("network maxFlows must be 1..=65536, got {}", n.max_flows)));
    }
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
        policy_deadline: Duration::from_millis(n.policy_deadline_ms),
        max_flows: n.max_flows as usize,
        allow_protected,
        host_addrs: host_addresses(),
        intercept_socket: n.intercept_socket.as_ref().map(PathBuf::from),
        ..NetConfig::default()
    })
}

/// Runs the stack on its own thread until the VMM closes its end of `stream`.
pub fn start(cfg: NetConfig, stream: UnixStream, bridge: Arc<NetBridge>) -> Result<(), HostError> {
    stream.set_nonblocking(true).map_err(|e| HostError::Setup(format!("nonblocking net socket: {e}")))?;
    let stack = NetStack::new(cfg, Arc::new(NodePolicy(bridge.clone()))).map_err(|e| HostError::Setup(e.to_string()))?;
    *bridge.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(stack.control());
    let (etx, mut erx) = mpsc::channel::<NetEvent>(256);
    let stack = stack.with_events(etx);
    std::thread::Builder::new()
        .name("sandbox-net".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("sandbox-host: network runtime: {e}"),
            };
            rt.block_on(async move {
                let audit = bridge.clone();
                tokio::spawn(async move {
                    let mut limit = AuditLimit::new(AUDITS_PER_SECOND);
                    while let Some(ev) = erx.recv().await {
                        let Some(a) = audit_of(&ev) else { continue };
                        match limit.admit(std::time::Instant::now()) {
                            Admit::Yes => audit.send_frame(Kind::NetAudit, &a),
                            Admit::YesAfterDropping(n) => {
                                audit.send_frame(Kind::NetAudit, &dropped_audit(n));
                                audit.send_frame(Kind::NetAudit, &a)
                            }
                            Admit::No => true,
                        };
                    }
                });
                let stream = match tokio::net::UnixStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => return eprintln!("sandbox-host: network socket: {e}"),
                };
                if let Err(e) = stack.run(stream).await {
                    eprintln!("sandbox-host: guest network ended: {e}");
                }
            });
        })
        .map_err(|e| HostError::Setup(format!("network thread: {e}")))?;
    Ok(())
}

/// Audit records per second passed to Node; past it they are counted and summarized,
/// so a guest spraying bad frames cannot queue unbounded frames towards Node.
const AUDITS_PER_SECOND: u32 = 200;

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    /// Admitted; `n` records were dropped since the last admitted one.
    YesAfterDropping(u64),
    No,
}

/// A one-second window rate limit.
struct AuditLimit {
    per_second: u32,
    window: Option<std::time::Instant>,
    used: u32,
    dropped: u64,
}

impl AuditLimit {
    fn new(per_second: u32) -> Self {
        Self { per_second, window: None, used: 0, dropped: 0 }
    }

    fn admit(&mut self, now: std::time::Instant) -> Admit {
        if self.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= self.per_second {
            self.dropped += 1;
            return Admit::No;
        }
        self.used += 1;
        match std::mem::take(&mut self.dropped) {
            0 => Admit::Yes,
            n => Admit::YesAfterDropping(n),
        }
    }
}

fn dropped_audit(n: u64) -> NetAudit {
    NetAudit { kind: "audit-dropped".into(), proto: None, src: None, dst: None, message: format!("{n} audit records dropped (more than {AUDITS_PER_SECOND} per second)") }
}

/// The audit records Node cannot know on its own (its own verdicts it knows).
fn audit_of(ev: &NetEvent) -> Option<NetAudit> {
    let flow = |kind: &str, f: &FlowInfo, message: String| NetAudit {
        kind: kind.into(),
        proto: Some(proto_name(f.proto).into()),
        src: Some(f.src.to_string()),
        dst: Some(f.dst.to_string()),
        message,
    };
    Some(match ev {
        NetEvent::DeniedProtected { flow: f, category } => {
            let what = match category {
                Some(c) => format!("{c:?} address").to_lowercase(),
                None => "the sandbox's or the host's own address".into(),
            };
            flow("protected", f, format!("denied before the policy: {} is a {what}; opt the range in with allowProtected", f.dst.ip()))
        }
        NetEvent::PolicyFailed { flow: f, failure } => flow("policy-failed", f, format!("denied: {failure:?}")),
        NetEvent::FlowLimit { flow: f } => flow("flow-limit", f, "denied: the sandbox's concurrent flow limit is reached".into()),
        NetEvent::UpstreamFailed { flow: f, error } => flow("upstream-failed", f, format!("accepted but the destination failed: {error}")),
        NetEvent::MalformedFrame { reason } => NetAudit { kind: "malformed".into(), proto: None, src: None, dst: None, message: format!("{reason:?}") },
        _ => return None,
    })
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

    #[test]
    fn audit_limit_counts_what_it_drops() {
        let t0 = std::time::Instant::now();
        let mut l = AuditLimit::new(2);
        assert_eq!(l.admit(t0), Admit::Yes);
        assert_eq!(l.admit(t0), Admit::Yes);
        assert_eq!(l.admit(t0), Admit::No);
        assert_eq!(l.admit(t0 + Duration::from_millis(500)), Admit::No);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Admit::YesAfterDropping(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Admit::Yes);
    }

    #[tokio::test]
    async fn node_verdicts_map_to_decisions_and_bad_ones_fail() {
        let (out, mut frames) = mpsc::unbounded_channel();
        let bridge = NetBridge::new(out);
        let policy = NodePolicy(bridge.clone());
        let flow = |id: u64| FlowInfo::new(Proto::Tcp, "10.0.2.15:1000".parse().unwrap(), "203.0.113.1:80".parse().unwrap()).with_test_id(id);
        for (verdict, answer, want) in [
            ("accept", None, Ok(Decision::AcceptRaw)),
            ("intercept", None, Ok(Decision::Intercept)),
            ("deny", None, Ok(Decision::Deny)),
            ("something-new", None, Ok(Decision::Deny)),
            ("answer", Some("AQI=".to_string()), Ok(Decision::DnsAnswer(vec![1, 2]))),
            ("answer", Some("not base64!".to_string()), Err(())),
        ] {
            let fut = policy.decide(flow(7));
            let task = tokio::spawn(fut);
            let frame = frames.recv().await.unwrap();
            let req: NetRequest = proto::decode(&frame[proto::HEADER_LEN..]).unwrap();
            assert_eq!((req.id, req.proto.as_str(), req.dst_port), (7, "tcp", 80));
            bridge.deliver(&proto::encode(&NetReply { id: 7, verdict: verdict.into(), answer }));
            let got = task.await.unwrap().map_err(|_| ());
            assert_eq!(got, want, "{verdict}");
        }
        // A question whose future is dropped (deadline) leaves nothing behind.
        let t = tokio::spawn(policy.decide(flow(9)));
        let _ = frames.recv().await.unwrap();
        assert_eq!(bridge.pending().len(), 1);
        t.abort();
        let _ = t.await;
        assert!(bridge.pending().is_empty());
    }

    #[test]
    fn config_checks_its_inputs() {
        let ok = NetLaunch { policy_deadline_ms: 5000, max_flows: 10, allow_protected: vec!["10.0.0.0/8".into()], intercept_socket: Some("/tmp/x.sock".into()) };
        let c = config(&ok).unwrap();
        assert_eq!(c.max_flows, 10);
        assert_eq!(c.allow_protected.len(), 1);
        assert!(c.host_addrs.iter().any(|a| a.is_loopback()), "the host's loopback is its own: {:?}", c.host_addrs);
        for bad in [
            NetLaunch { max_flows: 0, ..ok.clone() },
            NetLaunch { policy_deadline_ms: 0, ..ok.clone() },
            NetLaunch { allow_protected: vec!["10.0.0.0".into()], ..ok.clone() },
            NetLaunch { intercept_socket: Some("rel.sock".into()), ..ok.clone() },
        ] {
            assert!(matches!(config(&bad), Err(HostError::InvalidLaunch(_))), "{bad:?}");
        }
    }
}
