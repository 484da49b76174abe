//! Flow accounting against real host sockets: the flow cap bounds the host sockets an
//! upstream sees at every instant, and the connection rate limit keeps a SYN flood
//! away from the policy and the host.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sandbox_net::{NetConfig, NetEvent, Stats};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Sockets the upstream holds open now, the most it ever held, and how many it accepted.
#[derive(Default)]
struct Upstream {
    open: AtomicUsize,
    max: AtomicUsize,
    accepted: AtomicUsize,
}

/// A server that keeps every connection until the client closes it, counting them
/// from its own side.
async fn counting_server() -> (SocketAddr, Arc<Upstream>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let up = Arc::new(Upstream::default());
    let u = up.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            u.accepted.fetch_add(1, Ordering::SeqCst);
            let now = u.open.fetch_add(1, Ordering::SeqCst) + 1;
            u.max.fetch_max(now, Ordering::SeqCst);
            let u = u.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                u.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, up)
}

fn open_many(h: &mut Harness, dst: SocketAddr, n: u16) -> Vec<SocketHandle> {
    let SocketAddr::V4(d) = dst else { unreachable!("IPv4 loopback") };
    (0..n)
        .map(|i| {
            let handle = h.guest.sockets.add(tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096])));
            let cx = h.guest.iface.context();
            h.guest.sockets.get_mut::<tcp::Socket>(handle).connect(cx, IpEndpoint::new(IpAddress::Ipv4(*d.ip()), d.port()), 20000 + i).unwrap();
            handle
        })
        .collect()
}

#[tokio::test]
async fn host_sockets_never_exceed_max_flows() {
    let (up_addr, up) = counting_server().await;
    let cfg = NetConfig { max_flows: 4, ..loopback_allowed() };
    let mut h = start(cfg, accept_all);
    let socks = open_many(&mut h, up_addr, 60);
    // Let the flood play out: SYNs evict half-open flows, retransmissions come back.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let mut peak_gauge = 0;
    while std::time::Instant::now() < deadline {
        h.guest.pump(Duration::from_millis(5)).await;
        peak_gauge = peak_gauge.max(Stats::get(&h.stats.host_sockets));
    }
    let established = socks.iter().filter(|s| h.guest.sockets.get::<tcp::Socket>(**s).state() == tcp::State::Established).count();
    assert!((1..=4).contains(&established), "established {established}");
    assert!(up.max.load(Ordering::SeqCst) <= 4, "the upstream saw {} sockets at once", up.max.load(Ordering::SeqCst));
    assert!(peak_gauge <= 4, "host socket gauge {peak_gauge}");
    // Closing the guest's sockets closes the host's, and the slots come back.
    for s in &socks {
        h.guest.sockets.get_mut::<tcp::Socket>(*s).close();
    }
    let closed = h.guest.until(Duration::from_secs(5), |_| (up.open.load(Ordering::SeqCst) == 0).then_some(())).await;
    assert!(closed.is_some(), "upstream still holds {}", up.open.load(Ordering::SeqCst));
    let freed = h.guest.until(Duration::from_secs(3), |_| (Stats::get(&h.stats.host_sockets) == 0).then_some(())).await;
    assert!(freed.is_some(), "slots not returned: {}", Stats::get(&h.stats.host_sockets));
    // ...and new flows get them.
    let again = open_many(&mut h, up_addr, 1);
    let ok = h.guest.until(Duration::from_secs(3), |g| (g.sockets.get::<tcp::Socket>(again[0]).state() == tcp::State::Established).then_some(())).await;
    assert!(ok.is_some(), "a new flow after the burst connects");
}

#[tokio::test]
async fn syn_flood_is_rate_limited_before_the_policy() {
    let (up_addr, up) = counting_server().await;
    let cfg = NetConfig { max_connects_per_second: 5, connect_burst: 5, ..loopback_allowed() };
    let mut h = start(cfg, accept_all);
    let _socks = open_many(&mut h, up_addr, 50);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        h.guest.pump(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    // The burst plus the refill (retransmitted SYNs are new attempts).
    let bound = 5 + (5.0 * secs).ceil() as usize;
    assert!(h.asked() <= bound, "policy asked {} times, bound {bound}", h.asked());
    assert!(up.accepted.load(Ordering::SeqCst) <= bound, "upstream accepted {}", up.accepted.load(Ordering::SeqCst));
    assert!(Stats::get(&h.stats.connects_rate_limited) >= 40);
    let ev = h.drain_events();
    let reports: Vec<_> = ev.iter().filter_map(|e| if let NetEvent::ConnectRateLimited { dropped, per_second: 5, burst: 5 } = e { Some(*dropped) } else { None }).collect();
    // Coalesced: a report per second at most, together counting what was dropped so far.
    assert!(!reports.is_empty() && reports.len() <= 2, "{reports:?}");
    assert!(reports.iter().sum::<u64>() >= 40, "{reports:?}");
}
