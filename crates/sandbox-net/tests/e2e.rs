//! End to end without a VM: a smoltcp "guest" talks to NetStack over a socketpair,
//! and accepted flows reach real servers on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sandbox_net::{dns, Decision, FlowInfo, NetConfig, NetEvent, PolicyError, PolicyFailure, Proto, Verdict};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};
use tokio::net::{TcpListener, UdpSocket};

async fn echo_server() -> SocketAddr {
    echo_server_on("127.0.0.1:0").await
}

async fn echo_server_on(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn ep(addr: SocketAddr) -> IpEndpoint {
    match addr {
        SocketAddr::V4(a) => IpEndpoint::new(IpAddress::Ipv4(*a.ip()), a.port()),
        SocketAddr::V6(a) => IpEndpoint::new(IpAddress::Ipv6(*a.ip()), a.port()),
    }
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]))
}

/// Connects from the guest and waits for the outcome: Some(true) established,
/// Some(false) reset/closed, None still pending at `limit`.
async fn connect(h: &mut Harness, dst: SocketAddr, limit: Duration) -> (smoltcp::iface::SocketHandle, Option<bool>) {
    let handle = h.guest.sockets.add(tcp_socket());
    let g = &mut h.guest;
    let cx = g.iface.context();
    g.sockets.get_mut::<tcp::Socket>(handle).connect(cx, ep(dst), 49152 + (dst.port() % 1000)).unwrap();
    let out = g
        .until(limit, |g| match g.sockets.get::<tcp::Socket>(handle).state() {
            tcp::State::Established => Some(true),
            tcp::State::Closed => Some(false),
            _ => None,
        })
        .await;
    (handle, out)
}

#[tokio::test]
async fn protected_destination_is_reset_without_asking() {
    let echo = echo_server().await;
    let mut h = start(NetConfig::default(), accept_all);
    let t0 = std::time::Instant::now();
    let (_, out) = connect(&mut h, echo, Duration::from_secs(3)).await;
    assert_eq!(out, Some(false), "guest must see a RST");
    assert!(t0.elapsed() < Duration::from_secs(1), "RST must be prompt: {:?}", t0.elapsed());
    assert_eq!(h.asked(), 0, "policy must not be asked for protected destinations");
    let ev = h.drain_events();
    assert!(ev.iter().any(|e| matches!(e, NetEvent::DeniedProtected { category: Some(sandbox_net::Category::Loopback), .. })), "{ev:?}");
}

#[tokio::test]
async fn ipv6_flows_are_policy_questions_and_splice_over_v6_sockets() {
    use std::net::IpAddr;
    let echo = echo_server().await;
    // Protected IPv6 forms are reset before the policy, as for IPv4. (Routed forms
    // only: a guest resolves ::1 and fe80::/10 on its own link, never via the gateway,
    // and NDP is answered for the gateway alone; flows::pre_check's unit test covers all.)
    for dst in ["[fd00::1]:80", "[2002:7f00:1::]:80", "[64:ff9b::a9fe:a9fe]:80", "[::ffff:127.0.0.1]:80"] {
        let mut h = start(NetConfig::default(), accept_all);
        let (_, out) = connect(&mut h, dst.parse().unwrap(), Duration::from_secs(3)).await;
        assert_eq!(out, Some(false), "{dst}: guest must see a RST {:?}", h.stats);
        assert_eq!(h.asked(), 0, "{dst}: policy must not be asked");
        assert!(h.drain_events().iter().any(|e| matches!(e, NetEvent::DeniedProtected { .. })), "{dst}");
    }
    // Opted in: the policy sees the v6 endpoints and the host side connects with an
    // IPv6 socket (to the IPv4-mapped spelling of the loopback echo server).
    let cfg = NetConfig { allow_protected: vec!["127.0.0.0/8".parse().unwrap()], ..NetConfig::default() };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let mut h = start(cfg, move |f: FlowInfo| -> sandbox_net::BoxFuture<Result<Decision, PolicyError>> {
        log.lock().unwrap().push((f.src, f.dst));
        Box::pin(async { Ok(Decision::AcceptRaw) })
    });
    let dst = SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), echo.port());
    let (handle, out) = connect(&mut h, dst, Duration::from_secs(5)).await;
    assert_eq!(out, Some(true), "v6 flow must establish: {:?}", h.drain_events());
    let got = h
        .guest
        .until(Duration::from_secs(5), |g| {
            let s = g.sockets.get_mut::<tcp::Socket>(handle);
            if s.can_send() && s.send_queue() == 0 && s.recv_queue() == 0 {
                let _ = s.send_slice(b"over v6");
            }
            let mut buf = [0u8; 16];
            let n = if s.can_recv() { s.recv_slice(&mut buf).unwrap() } else { 0 };
            (n > 0).then(|| buf[..n].to_vec())
        })
        .await;
    assert_eq!(got.as_deref(), Some(&b"over v6"[..]));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.ip(), "fd53:5342::15".parse::<IpAddr>().unwrap());
    assert_eq!(seen[0].1, dst);
}

#[tokio::test]
async fn accepted_tcp_echoes_one_megabyte() {
    let echo = echo_server().await;
    let mut h = start(loopback_allowed(), accept_all);
    let (handle, out) = connect(&mut h, echo, Duration::from_secs(5)).await;
    assert_eq!(out, Some(true));
    let data = Rng(42).bytes(1 << 20);
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 65536];
    let done = h
        .guest
        .until(Duration::from_secs(30), |g| {
            let s = g.sockets.get_mut::<tcp::Socket>(handle);
            if sent < data.len() && s.can_send() {
                sent += s.send_slice(&data[sent..]).unwrap();
            }
            while s.can_recv() {
                let n = s.recv_slice(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            (got.len() >= data.len()).then_some(())
        })
        .await;
    assert!(done.is_some(), "echoed {} of {} bytes", got.len(), data.len());
    assert!(got == data, "echo must be byte-exact");
    // Orderly close: the guest's FIN reaches the echo server, whose FIN comes back.
    h.guest.sockets.get_mut::<tcp::Socket>(handle).close();
    let closed = h
        .guest
        .until(Duration::from_secs(5), |g| {
            matches!(g.sockets.get::<tcp::Socket>(handle).state(), tcp::State::TimeWait | tcp::State::Closed).then_some(())
        })
        .await;
    assert!(closed.is_some(), "FIN must propagate both ways");
    assert_eq!(h.asked(), 1);
    assert!(h.drain_events().iter().any(|e| matches!(e, NetEvent::FlowDecided { verdict: Verdict::Accepted, .. })));
}

#[tokio::test]
async fn denying_policy_resets() {
    let echo = echo_server().await;
    let mut h = start(loopback_allowed(), deny_all);
    let (_, out) = connect(&mut h, echo, Duration::from_secs(3)).await;
    assert_eq!(out, Some(false));
    assert_eq!(h.asked(), 1);
    assert!(h.drain_events().iter().any(|e| matches!(e, NetEvent::FlowDecided { verdict: Verdict::Denied, .. })));
}

#[tokio::test]
async fn policy_error_resets() {
    let echo = echo_server().await;
    let mut h = start(loopback_allowed(), |_| Box::pin(async { Err(PolicyError("boom".into())) }));
    let (_, out) = connect(&mut h, echo, Duration::from_secs(3)).await;
    assert_eq!(out, Some(false));
    let ev = h.drain_events();
    assert!(ev.iter().any(|e| matches!(e, NetEvent::PolicyFailed { failure: PolicyFailure::Error(m), .. } if m == "boom")), "{ev:?}");
}

#[tokio::test]
async fn hung_policy_times_out_and_resets() {
    let echo = echo_server().await;
    let cfg = NetConfig { policy_deadline: Duration::from_millis(300), ..loopback_allowed() };
    let mut h = start(cfg, |_| Box::pin(std::future::pending()));
    let t0 = std::time::Instant::now();
    let (_, out) = connect(&mut h, echo, Duration::from_secs(3)).await;
    assert_eq!(out, Some(false));
    assert!(t0.elapsed() >= Duration::from_millis(250) && t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(h.drain_events().iter().any(|e| matches!(e, NetEvent::PolicyFailed { failure: PolicyFailure::Timeout(_), .. })));
}

#[tokio::test]
async fn refused_upstream_resets() {
    // A port nothing listens on: accepted by policy, refused by the host.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let mut h = start(loopback_allowed(), accept_all);
    let (_, out) = connect(&mut h, dead, Duration::from_secs(3)).await;
    assert_eq!(out, Some(false));
    assert!(h.drain_events().iter().any(|e| matches!(e, NetEvent::UpstreamFailed { .. })));
}

fn udp_socket(port: u16) -> udp::Socket<'static> {
    let mk = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
    let mut s = udp::Socket::new(mk(), mk());
    s.bind(port).unwrap();
    s
}

/// Sends one datagram from the guest and returns the first reply.
async fn udp_exchange(h: &mut Harness, dst: SocketAddr, payload: &[u8], limit: Duration) -> Option<Vec<u8>> {
    let handle = h.guest.sockets.add(udp_socket(5353));
    h.guest.sockets.get_mut::<udp::Socket>(handle).send_slice(payload, ep(dst)).unwrap();
    h.guest
        .until(limit, |g| {
            let s = g.sockets.get_mut::<udp::Socket>(handle);
            s.recv().ok().map(|(d, meta)| {
                assert_eq!(meta.endpoint, ep(dst), "reply must come from the flow's destination");
                d.to_vec()
            })
        })
        .await
}

#[tokio::test]
async fn udp_echo_round_trip() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let _ = server.send_to(&buf[..n], from).await;
        }
    });
    let mut h = start(loopback_allowed(), accept_all);
    let reply = udp_exchange(&mut h, addr, b"ping over udp", Duration::from_secs(3)).await;
    assert_eq!(reply.as_deref(), Some(&b"ping over udp"[..]));
    assert_eq!(h.asked(), 1);

    // Protected by default: dropped without asking.
    let mut h = start(NetConfig::default(), accept_all);
    assert_eq!(udp_exchange(&mut h, addr, b"x", Duration::from_millis(300)).await, None);
    assert_eq!(h.asked(), 0);
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

const RESOLVER: &str = "10.0.2.3:53";

/// The answer a resolver would give to `q`: one A record 192.0.2.7.
fn answer_for(q: &[u8]) -> Vec<u8> {
    let mut a = q.to_vec();
    a[2] |= 0x80; // QR
    a[7] = 1; // ANCOUNT
    a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
    a
}

#[tokio::test]
async fn dns_answered_by_the_policy_and_checked_against_the_question() {
    let policy = |f: FlowInfo| -> sandbox_net::BoxFuture<Result<Decision, PolicyError>> {
        let d = match (f.proto, f.query.as_deref()) {
            (Proto::Dns, Some(q)) => Decision::DnsAnswer(answer_for(q)),
            _ => Decision::Deny,
        };
        Box::pin(async move { Ok(d) })
    };
    let mut h = start(NetConfig::default(), policy);
    let q = query(0x1234, "example.com");
    let a = udp_exchange(&mut h, RESOLVER.parse().unwrap(), &q, Duration::from_secs(3)).await.expect("an answer");
    assert_eq!(&a[..2], &[0x12, 0x34]);
    assert_eq!(dns::rcode(&a), Some(0));
    assert_eq!(&a[a.len() - 4..], &[192, 0, 2, 7]);

    // An answer to another question (here: another id) is not passed on.
    let wrong = |f: FlowInfo| -> sandbox_net::BoxFuture<Result<Decision, PolicyError>> {
        let d = match f.query.as_deref() {
            Some(q) => {
                let mut a = answer_for(q);
                a[0] ^= 0xff;
                Decision::DnsAnswer(a)
            }
            None => Decision::Deny,
        };
        Box::pin(async move { Ok(d) })
    };
    let mut h = start(NetConfig::default(), wrong);
    let a = udp_exchange(&mut h, RESOLVER.parse().unwrap(), &q, Duration::from_secs(3)).await.expect("an answer");
    assert_eq!(dns::rcode(&a), Some(dns::RCODE_SERVFAIL));
}

#[tokio::test]
async fn dns_denied_is_refused() {
    let mut h = start(loopback_allowed(), deny_all);
    let q = query(0xabcd, "blocked.example");
    let a = udp_exchange(&mut h, RESOLVER.parse().unwrap(), &q, Duration::from_secs(3)).await.expect("an answer");
    assert_eq!(&a[..2], &[0xab, 0xcd]);
    assert_eq!(dns::rcode(&a), Some(dns::RCODE_REFUSED));
    assert_eq!(&a[12..], &q[12..], "question echoed");
    let ev = h.drain_events();
    assert!(ev.iter().any(|e| matches!(e, NetEvent::FlowDecided { flow, verdict: Verdict::Denied } if flow.proto == Proto::Dns)), "{ev:?}");
}

#[tokio::test]
async fn flow_cap_resets_excess_syns() {
    let echo = echo_server().await;
    let cfg = NetConfig { max_flows: 1, ..loopback_allowed() };
    let mut h = start(cfg, accept_all);
    let (_, first) = connect(&mut h, echo, Duration::from_secs(3)).await;
    assert_eq!(first, Some(true));
    let handle = h.guest.sockets.add(tcp_socket());
    let cx = h.guest.iface.context();
    h.guest.sockets.get_mut::<tcp::Socket>(handle).connect(cx, ep(echo), 40001).unwrap();
    let out = h
        .guest
        .until(Duration::from_secs(3), |g| match g.sockets.get::<tcp::Socket>(handle).state() {
            tcp::State::Established => Some(true),
            tcp::State::Closed => Some(false),
            _ => None,
        })
        .await;
    assert_eq!(out, Some(false));
    assert!(h.drain_events().iter().any(|e| matches!(e, NetEvent::FlowLimit { .. })));
}

#[tokio::test]
async fn half_open_flows_give_way_at_the_cap() {
    let echo = echo_server().await;
    // Port 9 hangs in the policy forever: its flow stays half-open.
    let policy = |f: FlowInfo| -> sandbox_net::BoxFuture<Result<Decision, PolicyError>> {
        if f.dst.port() == 9 {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Ok(Decision::AcceptRaw) })
        }
    };
    let cfg = NetConfig { max_flows: 1, policy_deadline: Duration::from_secs(30), ..loopback_allowed() };
    let mut h = start(cfg, policy);
    let (stuck, out) = connect(&mut h, "127.0.0.1:9".parse().unwrap(), Duration::from_millis(300)).await;
    assert_eq!(out, None, "still waiting for the policy");
    let (_, out) = connect(&mut h, echo, Duration::from_secs(3)).await;
    assert_eq!(out, Some(true), "the new flow displaced the half-open one");
    let gone = h.guest.until(Duration::from_secs(3), |g| (g.sockets.get::<tcp::Socket>(stuck).state() == tcp::State::Closed).then_some(())).await;
    assert!(gone.is_some(), "the evicted flow was reset");
}

#[tokio::test]
async fn dns_to_any_address_and_over_tcp_is_answered_by_the_policy() {
    let policy = |f: FlowInfo| -> sandbox_net::BoxFuture<Result<Decision, PolicyError>> {
        let q = f.query.clone();
        Box::pin(async move {
            let q = q.expect("DNS questions carry the query");
            let mut a = q.to_vec();
            a[2] |= 0x80; // a response: the question echoed, no records
            if q.windows(5).any(|w| w == b"wrong") {
                a[0] ^= 0xff; // an answer to some other query
            }
            Ok(Decision::DnsAnswer(a))
        })
    };
    let mut h = start(loopback_allowed(), policy);
    // UDP to an address the guest picked itself.
    let q = query(0x4242, "example.com");
    let a = udp_exchange(&mut h, "192.0.2.1:53".parse().unwrap(), &q, Duration::from_secs(3)).await.expect("an answer");
    assert_eq!((&a[..2], dns::rcode(&a)), (&[0x42, 0x42][..], Some(0)));
    let q = query(0x4343, "wrong.example");
    let mut h = start(loopback_allowed(), policy); // a fresh guest: udp_exchange binds one port
    let a = udp_exchange(&mut h, "10.0.2.3:53".parse().unwrap(), &q, Duration::from_secs(3)).await.expect("an answer");
    assert_eq!(dns::rcode(&a), Some(dns::RCODE_SERVFAIL), "a mismatched answer is not passed on");
    // TCP: two length-prefixed messages on one connection.
    let (handle, out) = connect(&mut h, "10.0.2.3:53".parse().unwrap(), Duration::from_secs(3)).await;
    assert_eq!(out, Some(true));
    for id in [0x0101u16, 0x0202] {
        let q = query(id, "example.org");
        let mut msg = (q.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&q);
        h.guest.sockets.get_mut::<tcp::Socket>(handle).send_slice(&msg).unwrap();
        let mut got = Vec::new();
        let answer = h
            .guest
            .until(Duration::from_secs(3), |g| {
                let s = g.sockets.get_mut::<tcp::Socket>(handle);
                while s.can_recv() {
                    let _ = s.recv(|b| {
                        got.extend_from_slice(b);
                        (b.len(), ())
                    });
                }
                (got.len() >= 2 && got.len() == 2 + u16::from_be_bytes([got[0], got[1]]) as usize).then(|| got[2..].to_vec())
            })
            .await
            .expect("a TCP answer");
        assert_eq!(&answer[..2], &id.to_be_bytes());
        assert_eq!(dns::rcode(&answer), Some(0));
    }
    assert_eq!(h.asked(), 3, "every message is its own question");
}

#[tokio::test]
async fn forwarded_port_reaches_the_guest_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = start(loopback_allowed(), deny_all);
    let listener = h.guest.sockets.add(tcp_socket());
    h.guest.sockets.get_mut::<tcp::Socket>(listener).listen(8080).unwrap();
    let port = h.control.forward_port(8080, 0).await.unwrap();
    let client = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"hello guest").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        buf
    });
    let got = h
        .guest
        .until(Duration::from_secs(5), |g| {
            let s = g.sockets.get_mut::<tcp::Socket>(listener);
            if s.can_recv() {
                let mut b = [0u8; 64];
                let n = s.recv_slice(&mut b).unwrap();
                s.send_slice(b"howdy").unwrap();
                return Some(b[..n].to_vec());
            }
            None
        })
        .await
        .expect("the host connection reached the guest");
    assert_eq!(got, b"hello guest");
    // Keep pumping so the reply reaches the host client.
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if client.is_finished() {
                return client.await.unwrap();
            }
            h.guest.pump(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(&reply, b"howdy");
    assert!(h.control.forward_port(0, 0).await.is_err(), "guest port 0 is refused");
}
