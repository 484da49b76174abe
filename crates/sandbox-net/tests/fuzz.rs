//! Hostile frames: 10k random and mutated frames, then the stack must still serve a flow.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::*;
use sandbox_net::frames::{encode, MAX_FRAME};
use sandbox_net::{packet, BoxFuture, Decision, FlowInfo, PolicyError, Stats};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::*;
use tokio::net::TcpListener;

const HOST_MAC: [u8; 6] = [0x02, 0x53, 0x42, 0x00, 0x00, 0x02];

fn syn_frame(dst: SocketAddrV4) -> Vec<u8> {
    let src = Ipv4Addr::new(10, 0, 2, 15);
    let tcp = TcpRepr {
        src_port: 33000,
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 1024,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr { src_addr: src, dst_addr: *dst.ip(), next_header: IpProtocol::Tcp, payload_len: tcp.buffer_len(), hop_limit: 64 };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr { src_addr: EthernetAddress(GUEST_MAC), dst_addr: EthernetAddress(HOST_MAC), ethertype: EthernetProtocol::Ipv4 }.emit(&mut eth);
    let mut p = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut p, &ChecksumCapabilities::default());
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(*dst.ip()));
    tcp.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &s, &d, &ChecksumCapabilities::default());
    buf
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: Ipv4Addr::new(10, 0, 2, 15),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut buf = vec![0u8; 14 + arp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr { src_addr: EthernetAddress(GUEST_MAC), dst_addr: EthernetAddress::BROADCAST, ethertype: EthernetProtocol::Arp }.emit(&mut eth);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    buf
}

#[tokio::test]
async fn survives_ten_thousand_hostile_frames() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = match l.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    // Only the echo server is reachable, so mutated frames cannot reach anything else.
    let policy = move |f: FlowInfo| -> BoxFuture<std::result::Result<Decision, PolicyError>> {
        let ok = f.dst == SocketAddr::V4(echo);
        Box::pin(async move { Ok(if ok { Decision::AcceptRaw } else { Decision::Deny }) })
    };
    let mut h = start(loopback_allowed(), policy);

    let seeds = [
        syn_frame(echo),
        syn_frame(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9)),
        packet::udp_datagram(EthernetAddress(GUEST_MAC), EthernetAddress(HOST_MAC), "10.0.2.15:4000".parse().unwrap(), "10.0.2.3:53".parse().unwrap(), &[0u8; 40]),
        packet::udp_datagram(EthernetAddress(GUEST_MAC), EthernetAddress(HOST_MAC), "10.0.2.15:4001".parse().unwrap(), "127.0.0.1:9".parse().unwrap(), b"x"),
        arp_request(Ipv4Addr::new(10, 0, 2, 2)),
        arp_request(Ipv4Addr::new(10, 0, 2, 15)),
    ];
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut wire = Vec::new();
    for i in 0..10_000 {
        let frame = match rng.below(4) {
            0 => {
                let len = 1 + rng.below(1600);
                rng.bytes(len)
            }
            _ => {
                let mut f = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(f.len());
                    f[at] = rng.next() as u8;
                }
                match rng.below(5) {
                    0 => {
                        let n = rng.below(f.len()) + 1;
                        f.truncate(n)
                    }
                    1 => {
                        let n = rng.below(64);
                        f.extend(rng.bytes(n))
                    }
                    _ => {}
                }
                f
            }
        };
        encode(&frame, &mut wire).unwrap();
        if i % 1000 == 0 {
            wire.extend_from_slice(&0u32.to_be_bytes()); // empty frame
            let over = (MAX_FRAME + 1 + rng.below(1000)) as u32;
            wire.extend_from_slice(&over.to_be_bytes());
            wire.extend(rng.bytes(over as usize));
        }
        if wire.len() > 256 * 1024 {
            h.guest.send_raw(&wire).await;
            wire.clear();
            h.guest.pump(Duration::from_millis(1)).await;
        }
    }
    h.guest.send_raw(&wire).await;
    h.guest.until(Duration::from_millis(300), |_| None::<()>).await;

    let malformed = Stats::get(&h.stats.malformed);
    assert!(malformed > 1000, "codec and parser rejects counted: {malformed}");

    // The stack still serves a real flow.
    let handle = h.guest.sockets.add(tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 8192]), tcp::SocketBuffer::new(vec![0; 8192])));
    let cx = h.guest.iface.context();
    h.guest.sockets.get_mut::<tcp::Socket>(handle).connect(cx, IpEndpoint::new(IpAddress::Ipv4(*echo.ip()), echo.port()), 45000).unwrap();
    let mut sent = false;
    let mut got = Vec::new();
    let ok = h
        .guest
        .until(Duration::from_secs(10), |g| {
            let s = g.sockets.get_mut::<tcp::Socket>(handle);
            if !sent && s.can_send() {
                s.send_slice(b"still alive").unwrap();
                sent = true;
            }
            if s.can_recv() {
                let mut b = [0u8; 64];
                let n = s.recv_slice(&mut b).unwrap();
                got.extend_from_slice(&b[..n]);
            }
            (got == b"still alive").then_some(())
        })
        .await;
    assert!(ok.is_some(), "echo after fuzzing, got {got:?}, state {:?}", h.guest.sockets.get::<tcp::Socket>(handle).state());
}
