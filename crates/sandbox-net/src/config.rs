//! Addresses and limits of one guest network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::Cidr;

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The host side's MAC (answers ARP for the gateway and resolver addresses).
    pub gateway_mac: [u8; 6],
    pub gateway_ip: Ipv4Addr,
    /// The guest NIC's MAC (QEMU `virtio-net-pci,mac=`); frames from any other are dropped.
    pub guest_mac: [u8; 6],
    pub prefix_len: u8,
    /// The only source address accepted from the guest.
    pub guest_ip: Ipv4Addr,
    /// UDP 53 here is the sandbox resolver.
    pub dns_ip: Ipv4Addr,
    /// The host side's IPv6 address: the guest's IPv6 default route (answers neighbour
    /// solicitations). A ULA: never routed, never a destination the policy sees.
    pub gateway_ip6: Ipv6Addr,
    /// The only IPv6 source accepted from the guest (init configures it statically).
    pub guest_ip6: Ipv6Addr,
    pub prefix_len6: u8,
    /// The guest's MTU; UDP answers that do not fit are dropped (DNS: truncated).
    pub mtu: usize,
    /// Protected ranges opted in by the sandbox definition.
    pub allow_protected: Vec<Cidr>,
    /// The host's own addresses, refused before the policy (whatever `allow_protected` says).
    pub host_addrs: HostAddrs,
    /// Longest wait for a policy answer; past it the flow is denied.
    pub policy_deadline: Duration,
    /// Concurrent TCP + UDP flows, and host sockets held for them at any instant
    /// (connecting, established, half-closed or being torn down); SYNs beyond it are
    /// reset, datagrams dropped.
    pub max_flows: usize,
    /// New guest-opened flows (TCP SYN, UDP 4-tuple) admitted per second on average;
    /// past it (and the burst) they are dropped before the policy is asked.
    pub max_connects_per_second: u32,
    /// New flows admitted at once from a full bucket.
    pub connect_burst: u32,
    /// Concurrent DNS queries being decided.
    pub max_dns_inflight: usize,
    /// From SYN to established (policy, upstream connect and handshake included).
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub udp_idle_timeout: Duration,
    /// smoltcp socket buffer per direction per TCP flow (bounds memory and the window).
    pub tcp_buffer: usize,
    /// Unix socket receiving `Decision::Intercept` flows (header line `{"flow":<id>}\n`).
    pub intercept_socket: Option<PathBuf>,
    /// Host ports forwarded into the guest at once (`NetStack::forward_port`).
    pub max_port_forwards: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            gateway_mac: [0x02, 0x53, 0x42, 0x00, 0x00, 0x02],
            gateway_ip: Ipv4Addr::new(10, 0, 2, 2),
            guest_mac: [0x02, 0x53, 0x42, 0x00, 0x00, 0x0f],
            prefix_len: 24,
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            dns_ip: Ipv4Addr::new(10, 0, 2, 3),
            gateway_ip6: Ipv6Addr::new(0xfd53, 0x5342, 0, 0, 0, 0, 0, 2),
            guest_ip6: Ipv6Addr::new(0xfd53, 0x5342, 0, 0, 0, 0, 0, 0x15),
            prefix_len6: 64,
            mtu: 1500,
            allow_protected: Vec::new(),
            host_addrs: HostAddrs::fixed(Vec::new()),
            policy_deadline: Duration::from_secs(5),
            max_flows: 256,
            max_connects_per_second: 100,
            connect_burst: 200,
            max_dns_inflight: 64,
            handshake_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(60),
            tcp_buffer: 256 * 1024,
            intercept_socket: None,
            max_port_forwards: 64,
        }
    }
}

/// The host's own addresses as of now: a fixed list, or a source tracking them live
/// (the helper re-reads them whenever the kernel reports an address change).
#[derive(Clone)]
pub struct HostAddrs(Arc<dyn Fn() -> Arc<Vec<IpAddr>> + Send + Sync>);

impl HostAddrs {
    /// Always these addresses (tests, platforms without change notifications).
    pub fn fixed(addrs: Vec<IpAddr>) -> Self {
        let addrs = Arc::new(addrs);
        Self(Arc::new(move || addrs.clone()))
    }

    /// Asks `source` at every check; it must be cheap when nothing changed.
    pub fn live(source: impl Fn() -> Arc<Vec<IpAddr>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(source))
    }

    /// The addresses in force now.
    pub fn current(&self) -> Arc<Vec<IpAddr>> {
        (self.0)()
    }
}

impl fmt::Debug for HostAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HostAddrs").field(&self.current()).finish()
    }
}
