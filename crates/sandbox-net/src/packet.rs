//! Classifies guest frames before smoltcp sees them, and builds the few frames the
//! stack emits itself (resets for refused SYNs, UDP and DNS answers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet, Icmpv6Repr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

/// What a guest frame is, as far as the stack cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Ingress<'a> {
    Arp { target: Ipv4Addr },
    /// IPv6 neighbour discovery for `target`, a solicitation or (`solicit: false`) an
    /// advertisement: the only ICMPv6 handed to smoltcp, which resolves the guest's
    /// link address with it.
    Ndp { target: Ipv6Addr, solicit: bool },
    Tcp { src: SocketAddr, dst: SocketAddr, syn: bool, ack: bool, rst: bool, seq: u32, seg_len: u32 },
    Udp { src: SocketAddr, dst: SocketAddr, payload: &'a [u8] },
    /// Well-formed but unserved: ICMP, other protocols, frames for other MACs.
    Ignored(&'static str),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Malformed(&'static str),
    Spoofed,
}

/// The addresses a guest frame is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub our_mac: EthernetAddress,
    pub guest_mac: EthernetAddress,
    /// The only IPv4 source accepted from the guest.
    pub guest_ip: Ipv4Addr,
    /// The only IPv6 source accepted for TCP and UDP (neighbour discovery may also come
    /// from the guest's link-local address).
    pub guest_ip6: Ipv6Addr,
}

/// Parses and validates (lengths, checksums) one guest frame.
/// Only frames from the guest's own MAC and address are served, so a guest cannot
/// poison the stack's neighbour cache or pass as another host.
pub fn classify<'a>(frame: &'a [u8], link: &Link) -> Result<Ingress<'a>, ParseError> {
    use ParseError::*;
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Malformed("ethernet"))?;
    if eth.src_addr() != link.guest_mac {
        return Err(Spoofed);
    }
    let to_us = eth.dst_addr() == link.our_mac;
    let ingress = match eth.ethertype() {
        EthernetProtocol::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).map_err(|_| Malformed("arp"))?;
            let ArpRepr::EthernetIpv4 { source_hardware_addr, source_protocol_addr, target_protocol_addr, .. } =
                ArpRepr::parse(&arp).map_err(|_| Malformed("arp"))?
            else {
                return Err(Malformed("arp"));
            };
            if source_hardware_addr != link.guest_mac || source_protocol_addr != link.guest_ip {
                return Err(Spoofed);
            }
            Ingress::Arp { target: target_protocol_addr }
        }
        EthernetProtocol::Ipv4 if !to_us => Ingress::Ignored("ipv4 to another mac"),
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| Malformed("ipv4"))?;
            let caps = ChecksumCapabilities::default();
            let repr = Ipv4Repr::parse(&ip, &caps).map_err(|_| Malformed("ipv4"))?;
            // No reassembly: a fragment could not be classified by its first bytes alone.
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(Malformed("ipv4 fragment"));
            }
            if repr.src_addr != link.guest_ip {
                return Err(Spoofed);
            }
            transport(IpAddr::V4(repr.src_addr), IpAddr::V4(repr.dst_addr), repr.next_header, ip.payload())?
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| Malformed("ipv6"))?;
            let repr = Ipv6Repr::parse(&ip).map_err(|_| Malformed("ipv6"))?;
            // Extension headers (fragments included) are not followed: the first header
            // must be the transport, as for IPv4 without options that matter.
            match repr.next_header {
                IpProtocol::Icmpv6 => ndp(&repr, ip.payload(), link)?,
                _ if !to_us => Ingress::Ignored("ipv6 to another mac"),
                IpProtocol::Tcp | IpProtocol::Udp => {
                    if repr.src_addr != link.guest_ip6 {
                        return Err(Spoofed);
                    }
                    transport(IpAddr::V6(repr.src_addr), IpAddr::V6(repr.dst_addr), repr.next_header, ip.payload())?
                }
                _ => Ingress::Ignored("ipv6 next header"),
            }
        }
        _ => Ingress::Ignored("ethertype"),
    };
    Ok(ingress)
}

fn transport(src_ip: IpAddr, dst_ip: IpAddr, proto: IpProtocol, payload: &[u8]) -> Result<Ingress<'_>, ParseError> {
    use ParseError::*;
    let caps = ChecksumCapabilities::default();
    let (src, dst) = (IpAddress::from(src_ip), IpAddress::from(dst_ip));
    Ok(match proto {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| Malformed("tcp"))?;
            let t = TcpRepr::parse(&tcp, &src, &dst, &caps).map_err(|_| Malformed("tcp"))?;
            Ingress::Tcp {
                src: SocketAddr::new(src_ip, t.src_port),
                dst: SocketAddr::new(dst_ip, t.dst_port),
                syn: t.control == TcpControl::Syn,
                ack: t.ack_number.is_some(),
                rst: t.control == TcpControl::Rst,
                seq: t.seq_number.0 as u32,
                seg_len: t.segment_len() as u32,
            }
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| Malformed("udp"))?;
            let u = UdpRepr::parse(&udp, &src, &dst, &caps).map_err(|_| Malformed("udp"))?;
            Ingress::Udp { src: SocketAddr::new(src_ip, u.src_port), dst: SocketAddr::new(dst_ip, u.dst_port), payload: udp.payload() }
        }
        _ => Ingress::Ignored("ip protocol"),
    })
}

/// Neighbour solicitations and advertisements from the guest's own addresses (its
/// global one or a link-local one); router solicitations, MLD reports, echo and
/// everything else ICMPv6 are not served (the guest's address and route are static).
fn ndp<'a>(repr: &Ipv6Repr, payload: &'a [u8], link: &Link) -> Result<Ingress<'a>, ParseError> {
    use ParseError::*;
    let packet = Icmpv6Packet::new_checked(payload).map_err(|_| Malformed("icmpv6"))?;
    let caps = ChecksumCapabilities::default();
    let parsed = Icmpv6Repr::parse(&repr.src_addr, &repr.dst_addr, &packet, &caps).map_err(|_| Malformed("icmpv6"))?;
    let Icmpv6Repr::Ndisc(nd) = parsed else {
        return Ok(Ingress::Ignored("icmpv6"));
    };
    let (target, solicit) = match nd {
        NdiscRepr::NeighborSolicit { target_addr, .. } => (target_addr, true),
        NdiscRepr::NeighborAdvert { target_addr, .. } => (target_addr, false),
        _ => return Ok(Ingress::Ignored("ndp")),
    };
    // Duplicate address detection (unspecified source) needs no answer: nothing else
    // on this link ever holds the guest's address.
    if repr.src_addr.is_unspecified() {
        return Ok(Ingress::Ignored("ndp dad"));
    }
    if repr.src_addr != link.guest_ip6 && !repr.src_addr.is_unicast_link_local() {
        return Err(Spoofed);
    }
    // NDP is link-scoped: a router never forwards it, so a hop limit below 255 is forged.
    if repr.hop_limit != 255 {
        return Err(Malformed("ndp hop limit"));
    }
    Ok(Ingress::Ndp { target, solicit })
}

/// One IP frame to the guest; `src` and `dst` are of one family (the callers answer
/// a guest packet with its own addresses swapped).
fn ip_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    l4_len: usize,
    emit_l4: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr { src_addr: s, dst_addr: d, next_header: proto, payload_len: l4_len, hop_limit: 64 };
            let eth = EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv6 };
            let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + l4_len];
            let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
            eth.emit(&mut frame);
            let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
            ip.emit(&mut packet);
            emit_l4(packet.payload_mut());
            buf
        }
        _ => {
            let v4 = |a: IpAddr| match a {
                IpAddr::V4(a) => a,
                IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
            let ip = Ipv4Repr { src_addr: v4(src), dst_addr: v4(dst), next_header: proto, payload_len: l4_len, hop_limit: 64 };
            let eth = EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv4 };
            let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + l4_len];
            let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
            eth.emit(&mut frame);
            let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
            ip.emit(&mut packet, &caps);
            emit_l4(packet.payload_mut());
            buf
        }
    }
}

/// RST|ACK answering a guest SYN (or any segment) that no flow will take.
pub fn tcp_reset(our_mac: EthernetAddress, guest_mac: EthernetAddress, guest: SocketAddr, remote: SocketAddr, ack: u32) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: remote.port(),
        dst_port: guest.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(TcpSeqNumber(ack as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (s, d) = (IpAddress::from(remote.ip()), IpAddress::from(guest.ip()));
    ip_frame(our_mac, guest_mac, remote.ip(), guest.ip(), IpProtocol::Tcp, repr.buffer_len(), |b| {
        repr.emit(&mut TcpPacket::new_unchecked(b), &s, &d, &ChecksumCapabilities::default());
    })
}

/// A UDP datagram from `from` to the guest. The caller bounds `payload` by the MTU.
pub fn udp_datagram(our_mac: EthernetAddress, guest_mac: EthernetAddress, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr { src_port: from.port(), dst_port: to.port() };
    let (s, d) = (IpAddress::from(from.ip()), IpAddress::from(to.ip()));
    ip_frame(our_mac, guest_mac, from.ip(), to.ip(), IpProtocol::Udp, 8 + payload.len(), |b| {
        repr.emit(
            &mut UdpPacket::new_unchecked(b),
            &s,
            &d,
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const GUEST: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 15]);

    fn link(our_mac: EthernetAddress, guest_mac: EthernetAddress, guest_ip: Ipv4Addr) -> Link {
        Link { our_mac, guest_mac, guest_ip, guest_ip6: "fd00::15".parse().unwrap() }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn udp_round_trips_through_classify() {
        let from = sa("10.0.2.15:4000");
        let to = sa("1.2.3.4:53");
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        // Build as if the guest sent it (to our MAC), then parse it back.
        let f = udp_datagram(GUEST, US, from, to, b"payload");
        let ing = classify(&f, &link(US, GUEST, ip)).unwrap();
        assert_eq!(ing, Ingress::Udp { src: from, dst: to, payload: b"payload" });
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(classify(&bad, &link(US, GUEST, ip)), Err(ParseError::Malformed("udp")));
        let other = Ipv4Addr::new(10, 0, 2, 16);
        assert_eq!(classify(&f, &link(US, GUEST, other)), Err(ParseError::Spoofed));
        assert_eq!(classify(&f, &link(US, US, ip)), Err(ParseError::Spoofed), "other source MAC");
    }

    #[test]
    fn ipv6_udp_round_trips_and_source_is_checked() {
        let from = sa("[fd00::15]:4000");
        let to = sa("[2001:db8::1]:443");
        let f = udp_datagram(GUEST, US, from, to, b"v6");
        let l = link(US, GUEST, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(classify(&f, &l).unwrap(), Ingress::Udp { src: from, dst: to, payload: b"v6" });
        let spoof = udp_datagram(GUEST, US, sa("[fd00::16]:4000"), to, b"v6");
        assert_eq!(classify(&spoof, &l), Err(ParseError::Spoofed));
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(classify(&bad, &l), Err(ParseError::Malformed("udp")));
    }

    #[test]
    fn reset_is_valid_tcp() {
        for (guest, remote) in [("10.0.2.15:40000", "10.0.2.15:80"), ("[fd00::15]:40000", "[fd00::15]:80")] {
            let (guest, remote) = (sa(guest), sa(remote));
            let f = tcp_reset(US, GUEST, guest, remote, 1234);
            // Parse with roles reversed: the "guest" address is the source here.
            let ing = classify(&f, &link(GUEST, US, Ipv4Addr::new(10, 0, 2, 15))).unwrap();
            assert!(matches!(ing, Ingress::Tcp { rst: true, ack: true, .. }), "{guest}");
        }
    }

    fn neighbor_solicit(src: Ipv6Addr, target: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
        let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr: target, lladdr: Some(GUEST.into()) });
        let dst: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
        let ip = Ipv6Repr { src_addr: src, dst_addr: dst, next_header: IpProtocol::Icmpv6, payload_len: icmp.buffer_len(), hop_limit };
        let eth = EthernetRepr { src_addr: GUEST, dst_addr: EthernetAddress([0x33, 0x33, 0xff, 0, 0, 2]), ethertype: EthernetProtocol::Ipv6 };
        let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet);
        let mut p = Icmpv6Packet::new_unchecked(packet.payload_mut());
        icmp.emit(&src, &dst, &mut p, &ChecksumCapabilities::default());
        buf
    }

    #[test]
    fn neighbour_discovery_only_from_the_guest() {
        let l = link(US, GUEST, Ipv4Addr::new(10, 0, 2, 15));
        let gw: Ipv6Addr = "fd00::2".parse().unwrap();
        let own = neighbor_solicit(l.guest_ip6, gw, 255);
        assert_eq!(classify(&own, &l), Ok(Ingress::Ndp { target: gw, solicit: true }));
        let ll = neighbor_solicit("fe80::53ff:fe42:f".parse().unwrap(), gw, 255);
        assert_eq!(classify(&ll, &l), Ok(Ingress::Ndp { target: gw, solicit: true }));
        let other = neighbor_solicit("2001:db8::9".parse().unwrap(), gw, 255);
        assert_eq!(classify(&other, &l), Err(ParseError::Spoofed));
        let routed = neighbor_solicit(l.guest_ip6, gw, 64);
        assert_eq!(classify(&routed, &l), Err(ParseError::Malformed("ndp hop limit")));
        let dad = neighbor_solicit(Ipv6Addr::UNSPECIFIED, l.guest_ip6, 255);
        assert_eq!(classify(&dad, &l), Ok(Ingress::Ignored("ndp dad")));
    }

    #[test]
    fn short_and_garbage_frames_are_errors() {
        let l = link(US, GUEST, Ipv4Addr::new(10, 0, 2, 15));
        for f in [&[][..], &[0u8; 13], &[0xffu8; 60]] {
            let _ = classify(f, &l);
        }
        assert!(classify(&[0u8; 5], &l).is_err());
    }
}
