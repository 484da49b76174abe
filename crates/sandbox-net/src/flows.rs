//! The policy question asked for every new flow, and the checks made before asking it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::{self, Category};
use crate::config::NetConfig;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the guest is opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    /// One DNS message to port 53 (UDP datagram or TCP-framed message), any address.
    Dns,
}

/// The policy's view of a flow: IP-layer endpoints as the guest put them on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowInfo {
    /// Unique per stack run; also the flow id an interceptor is told.
    pub id: u64,
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// DNS: the raw query message (without the TCP length prefix).
    pub query: Option<Arc<[u8]>>,
    /// DNS: the guest sent it over TCP.
    pub dns_over_tcp: bool,
}

impl FlowInfo {
    pub fn new(proto: Proto, src: SocketAddr, dst: SocketAddr) -> Self {
        Self { id: 0, proto, src, dst, query: None, dns_over_tcp: false }
    }

    pub(crate) fn with_id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// For tests of policies outside this crate (the stack assigns real ids).
    #[doc(hidden)]
    pub fn with_test_id(self, id: u64) -> Self {
        self.with_id(id)
    }
}

/// The answer for one flow. Anything but the variant that fits the flow's protocol
/// (`AcceptRaw` or `Intercept` for TCP, `AcceptRaw` for UDP, `DnsAnswer` for DNS)
/// is a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    Deny,
    /// Splice the flow to a real host socket connected to `dst`.
    AcceptRaw,
    /// Answer the query with this message (the policy resolved it itself). It must
    /// answer the guest's question, or the guest gets SERVFAIL.
    DnsAnswer(Vec<u8>),
    /// TCP: splice the flow to the interceptor socket (`NetConfig::intercept_socket`).
    Intercept,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy error: {0}")]
pub struct PolicyError(pub String);

/// Decides flows. Implementations must not block: the stack awaits the future with a
/// deadline on a separate task, and every other flow keeps running meanwhile.
pub trait Policy: Send + Sync + 'static {
    fn decide(&self, flow: FlowInfo) -> BoxFuture<Result<Decision, PolicyError>>;
}

impl<F> Policy for F
where
    F: Fn(FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> + Send + Sync + 'static,
{
    fn decide(&self, flow: FlowInfo) -> BoxFuture<Result<Decision, PolicyError>> {
        self(flow)
    }
}

/// Why a flow was refused without asking the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreDeny {
    /// Protected destination not opted in by `NetConfig::allow_protected`.
    Protected(Category),
    /// The stack's own addresses (gateway, resolver) or the host's, other than DNS.
    OwnAddress,
}

/// Checks made before the policy: the guest never reaches protected space by default,
/// and never the host itself.
pub fn pre_check(cfg: &NetConfig, proto: Proto, dst: SocketAddr) -> Option<PreDeny> {
    let ip = dst.ip();
    let own = ip == IpAddr::V4(cfg.gateway_ip) || ip == IpAddr::V4(cfg.dns_ip) || ip == IpAddr::V6(cfg.gateway_ip6);
    if own && proto != Proto::Dns {
        return Some(PreDeny::OwnAddress);
    }
    if proto == Proto::Dns {
        // The sandbox resolver is the guest's DNS; any other address the guest sends a
        // query to must not be the host (a raw accept forwards to it). The resolvers a
        // policy chooses are checked on the Node side instead.
        return (!own && is_host_address(cfg, ip)).then_some(PreDeny::OwnAddress);
    }
    check_destination(cfg, ip)
}

/// Whether `ip` (any spelling) is one of the host's own addresses right now.
pub fn is_host_address(cfg: &NetConfig, ip: IpAddr) -> bool {
    // Cidr::contains compares IPv4-mapped spellings with plain IPv4.
    let host = |h: &IpAddr| addr::Cidr::new(*h, if h.is_ipv4() { 32 } else { 128 }).is_ok_and(|c| c.contains(ip));
    cfg.host_addrs.current().iter().any(host)
}

/// The protected-range rule for one destination address (also applied to resolvers).
/// The host's own addresses come first: `allow_protected` cannot open them.
pub fn check_destination(cfg: &NetConfig, ip: IpAddr) -> Option<PreDeny> {
    if is_host_address(cfg, ip) {
        return Some(PreDeny::OwnAddress);
    }
    if cfg.allow_protected.iter().any(|c| c.contains(ip)) {
        return None;
    }
    addr::is_protected(ip).then(|| PreDeny::Protected(addr::classify(ip)))
}

/// How asking the policy failed; every failure is a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyFailure {
    Error(String),
    Timeout(Duration),
}

/// Asks the policy with a deadline. Runs the policy's future in its own task so a
/// policy that panics is an error for this flow only.
pub async fn ask(policy: &dyn Policy, flow: FlowInfo, deadline: Duration) -> Result<Decision, PolicyFailure> {
    let fut = policy.decide(flow);
    let task = tokio::spawn(fut);
    let abort = task.abort_handle();
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(Ok(d))) => Ok(d),
        Ok(Ok(Err(e))) => Err(PolicyFailure::Error(e.0)),
        Ok(Err(join)) => Err(PolicyFailure::Error(format!("policy task failed: {join}"))),
        Err(_) => {
            abort.abort();
            Err(PolicyFailure::Timeout(deadline))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pre_check_rules() {
        let mut cfg = NetConfig::default();
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("203.0.113.1:443")), None);
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("169.254.169.254:80")), Some(PreDeny::Protected(Category::LinkLocal)));
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("[::ffff:127.0.0.1]:80")), Some(PreDeny::Protected(Category::Loopback)));
        assert_eq!(pre_check(&cfg, Proto::Udp, sa("10.0.2.3:53")), Some(PreDeny::OwnAddress));
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("10.0.2.2:22")), Some(PreDeny::OwnAddress));
        assert_eq!(pre_check(&cfg, Proto::Dns, sa("10.0.2.3:53")), None);
        // IPv6: the gateway is the stack's own; protected ranges as for IPv4.
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("[fd53:5342::2]:22")), Some(PreDeny::OwnAddress));
        assert_eq!(pre_check(&cfg, Proto::Dns, sa("[fd53:5342::2]:53")), None);
        for (dst, cat) in [
            ("[::1]:80", Category::Loopback),
            ("[::]:80", Category::Unspecified),
            ("[fd00::1]:80", Category::Private),
            ("[fe80::1]:80", Category::LinkLocal),
            ("[ff02::1]:80", Category::Multicast),
            ("[64:ff9b::a00:1]:80", Category::Private),
            ("[2002:7f00:1::]:80", Category::Loopback),
            ("[::ffff:169.254.169.254]:80", Category::LinkLocal),
        ] {
            assert_eq!(pre_check(&cfg, Proto::Tcp, sa(dst)), Some(PreDeny::Protected(cat)), "{dst}");
        }
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("[2606:4700::1111]:443")), None);
        cfg.allow_protected.push("127.0.0.0/8".parse().unwrap());
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("127.0.0.1:80")), None);
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("[::ffff:127.0.0.1]:80")), None);
        cfg.host_addrs = crate::config::HostAddrs::fixed(vec!["198.51.100.9".parse().unwrap(), "10.1.2.3".parse().unwrap()]);
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("198.51.100.9:80")), Some(PreDeny::OwnAddress));
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("[::ffff:198.51.100.9]:80")), Some(PreDeny::OwnAddress));
        // allowProtected covering the host's address does not open it.
        cfg.allow_protected.push("10.0.0.0/8".parse().unwrap());
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("10.1.2.4:80")), None);
        assert_eq!(pre_check(&cfg, Proto::Tcp, sa("10.1.2.3:80")), Some(PreDeny::OwnAddress));
        // DNS straight to the host's address is refused too; to the sandbox resolver it is not.
        assert_eq!(pre_check(&cfg, Proto::Dns, sa("10.1.2.3:53")), Some(PreDeny::OwnAddress));
        assert_eq!(pre_check(&cfg, Proto::Dns, sa("10.0.2.3:53")), None);
    }
}
