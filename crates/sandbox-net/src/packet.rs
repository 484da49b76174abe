//! Classifies guest frames before smoltcp sees them, and builds the few frames the
//! stack emits itself (resets for refused SYNs, UDP and DNS answers).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

/// What a guest frame is, as far as the stack cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Ingress<'a> {
    Arp { target: Ipv4Addr },
    Tcp { src: SocketAddrV4, dst: SocketAddrV4, syn: bool, ack: bool, rst: bool, seq: u32, seg_len: u32 },
    Udp { src: SocketAddrV4, dst: SocketAddrV4, payload: &'a [u8] },
    /// Well-formed but unserved: IPv6, ICMP, other protocols, frames for other MACs.
    Ignored(&'static str),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Malformed(&'static str),
    Spoofed,
}

/// Parses and validates (lengths, checksums) one guest frame.
/// Only frames from the guest's own MAC and address are served, so a guest cannot
/// poison the stack's neighbour cache or pass as another host.
pub fn classify<'a>(frame: &'a [u8], our_mac: EthernetAddress, guest_mac: EthernetAddress, guest_ip: Ipv4Addr) -> Result<Ingress<'a>, ParseError> {
    use ParseError::*;
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Malformed("ethernet"))?;
    if eth.src_addr() != guest_mac {
        return Err(Spoofed);
    }
    let to_us = eth.dst_addr() == our_mac;
    let ingress = match eth.ethertype() {
        EthernetProtocol::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).map_err(|_| Malformed("arp"))?;
            let ArpRepr::EthernetIpv4 { source_hardware_addr, source_protocol_addr, target_protocol_addr, .. } =
                ArpRepr::parse(&arp).map_err(|_| Malformed("arp"))?
            else {
                return Err(Malformed("arp"));
            };
            if source_hardware_addr != guest_mac || source_protocol_addr != guest_ip {
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
            if repr.src_addr != guest_ip {
                return Err(Spoofed);
            }
            let (src, dst) = (IpAddress::Ipv4(repr.src_addr), IpAddress::Ipv4(repr.dst_addr));
            let payload = ip.payload();
            match repr.next_header {
                IpProtocol::Tcp => {
                    let tcp = TcpPacket::new_checked(payload).map_err(|_| Malformed("tcp"))?;
                    let t = TcpRepr::parse(&tcp, &src, &dst, &caps).map_err(|_| Malformed("tcp"))?;
                    Ingress::Tcp {
                        src: SocketAddrV4::new(repr.src_addr, t.src_port),
                        dst: SocketAddrV4::new(repr.dst_addr, t.dst_port),
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
                    Ingress::Udp {
                        src: SocketAddrV4::new(repr.src_addr, u.src_port),
                        dst: SocketAddrV4::new(repr.dst_addr, u.dst_port),
                        payload: udp.payload(),
                    }
                }
                _ => Ingress::Ignored("ip protocol"),
            }
        }
        EthernetProtocol::Ipv6 => Ingress::Ignored("ipv6"),
        _ => Ingress::Ignored("ethertype"),
    };
    Ok(ingress)
}

fn ipv4_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    l4_len: usize,
    emit_l4: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let ip = Ipv4Repr { src_addr: src, dst_addr: dst, next_header: proto, payload_len: l4_len, hop_limit: 64 };
    let eth = EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv4 };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + l4_len];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    emit_l4(packet.payload_mut());
    buf
}

/// RST|ACK answering a guest SYN (or any segment) that no flow will take.
pub fn tcp_reset(our_mac: EthernetAddress, guest_mac: EthernetAddress, guest: SocketAddrV4, remote: SocketAddrV4, ack: u32) -> Vec<u8> {
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
    let (s, d) = (IpAddress::Ipv4(*remote.ip()), IpAddress::Ipv4(*guest.ip()));
    ipv4_frame(our_mac, guest_mac, *remote.ip(), *guest.ip(), IpProtocol::Tcp, repr.buffer_len(), |b| {
        repr.emit(&mut TcpPacket::new_unchecked(b), &s, &d, &ChecksumCapabilities::default());
    })
}

/// A UDP datagram from `from` to the guest. The caller bounds `payload` by the MTU.
pub fn udp_datagram(our_mac: EthernetAddress, guest_mac: EthernetAddress, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr { src_port: from.port(), dst_port: to.port() };
    let (s, d) = (IpAddress::Ipv4(*from.ip()), IpAddress::Ipv4(*to.ip()));
    ipv4_frame(our_mac, guest_mac, *from.ip(), *to.ip(), IpProtocol::Udp, 8 + payload.len(), |b| {
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

    #[test]
    fn udp_round_trips_through_classify() {
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 4000);
        let to = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 53);
        // Build as if the guest sent it (to our MAC), then parse it back.
        let f = udp_datagram(GUEST, US, from, to, b"payload");
        let ing = classify(&f, US, GUEST, *from.ip()).unwrap();
        assert_eq!(ing, Ingress::Udp { src: from, dst: to, payload: b"payload" });
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(classify(&bad, US, GUEST, *from.ip()), Err(ParseError::Malformed("udp")));
        let other = Ipv4Addr::new(10, 0, 2, 16);
        assert_eq!(classify(&f, US, GUEST, other), Err(ParseError::Spoofed));
        assert_eq!(classify(&f, US, US, *from.ip()), Err(ParseError::Spoofed), "other source MAC");
    }

    #[test]
    fn reset_is_valid_tcp() {
        let guest = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 40000);
        let remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 80);
        let f = tcp_reset(US, GUEST, guest, remote, 1234);
        // Parse with roles reversed: the "guest" address is the source here.
        let ing = classify(&f, GUEST, US, *remote.ip()).unwrap();
        assert!(matches!(ing, Ingress::Tcp { rst: true, ack: true, .. }));
    }

    #[test]
    fn short_and_garbage_frames_are_errors() {
        for f in [&[][..], &[0u8; 13], &[0xffu8; 60]] {
            let _ = classify(f, US, GUEST, Ipv4Addr::new(10, 0, 2, 15));
        }
        assert!(classify(&[0u8; 5], US, GUEST, Ipv4Addr::new(10, 0, 2, 15)).is_err());
    }
}
