//! Destination classification from the contract's address table
//! (`sandbox_protocol::addr`), the same rows the JavaScript policy's
//! `Endpoint` helpers are generated from.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::OnceLock;

pub use sandbox_protocol::addr::Category;
use sandbox_protocol::addr::{Row, V4, V6};

/// An address prefix such as `127.0.0.0/8` or `fc00::/7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}")]
pub struct CidrError(String);

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError(format!("{addr}/{len}")));
        }
        Ok(Self { addr, len })
    }

    /// Whether `ip` is inside. IPv4-mapped IPv6 addresses match IPv4 prefixes (and the
    /// reverse), since both spellings reach the same host.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (unmap(self.addr), unmap(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                // A mapped IPv6 prefix shorter than 96 bits covers all of IPv4.
                let len = if self.addr.is_ipv6() { self.len.saturating_sub(96) } else { self.len };
                prefix_eq(&n.octets(), &a.octets(), len)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (a, l) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        Cidr::new(addr, l.parse().map_err(|_| err())?).map_err(|_| err())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(net: &[u8], addr: &[u8], len: u8) -> bool {
    let full = usize::from(len / 8);
    if net.len() != addr.len() || full > net.len() || net[..full] != addr[..full] {
        return false;
    }
    let rest = len % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (net[full] & mask) == (addr[full] & mask)
}

struct Range {
    net: Vec<u8>,
    len: u8,
    category: Category,
    embed_at: Option<usize>,
    protect: bool,
}

use Category::*;

fn tables() -> &'static (Vec<Range>, Vec<Range>) {
    static T: OnceLock<(Vec<Range>, Vec<Range>)> = OnceLock::new();
    T.get_or_init(|| {
        let build = |rows: &[Row]| {
            rows.iter()
                .filter_map(|&Row { cidr, category, embed_at, protect }| {
                    // The tables are constants checked by the unit tests; a typo would
                    // drop one row rather than bring the helper down.
                    let c: Cidr = cidr.parse().ok()?;
                    let net = match c.addr {
                        IpAddr::V4(a) => a.octets().to_vec(),
                        IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    Some(Range { net, len: c.len, category, embed_at, protect })
                })
                .collect()
        };
        (build(V4), build(V6))
    })
}

fn lookup(bytes: &[u8]) -> (Category, bool) {
    let (v4, v6) = tables();
    let table = if bytes.len() == 4 { v4 } else { v6 };
    for r in table {
        if !prefix_eq(&r.net, bytes, r.len) {
            continue;
        }
        if let Some(at) = r.embed_at {
            return lookup(&bytes[at..at + 4]);
        }
        let protect = r.protect || r.category.always_protected();
        return (r.category, protect);
    }
    (Public, false)
}

/// The category of an address, for audit events.
pub fn classify(ip: IpAddr) -> Category {
    match ip {
        IpAddr::V4(a) => lookup(&a.octets()).0,
        IpAddr::V6(a) => lookup(&a.octets()).0,
    }
}

/// Denied before the policy runs (see `Endpoint.isProtected` in endpoint.ts).
pub fn is_protected(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => lookup(&a.octets()).1,
        IpAddr::V6(a) => lookup(&a.octets()).1,
    }
}

/// Convenience for tests and configs.
pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> (Category, bool) {
        let ip: IpAddr = s.parse().unwrap();
        (classify(ip), is_protected(ip))
    }

    #[test]
    fn tables_parse_completely() {
        let (a, b) = tables();
        assert_eq!(a.len(), V4.len());
        assert_eq!(b.len(), V6.len());
    }

    #[test]
    fn ipv4_table() {
        let cases: &[(&str, Category, bool)] = &[
            ("0.0.0.0", Unspecified, true),
            ("0.1.2.3", Reserved, true),
            ("10.0.2.2", Private, true),
            ("100.64.0.1", Private, true),
            ("100.127.255.255", Private, true),
            ("100.128.0.0", Public, false),
            ("127.0.0.1", Loopback, true),
            ("127.255.255.254", Loopback, true),
            ("169.254.169.254", LinkLocal, true),
            ("172.16.0.1", Private, true),
            ("172.31.255.255", Private, true),
            ("172.32.0.0", Public, false),
            ("192.0.0.9", Public, false),
            ("192.0.0.10", Public, false),
            ("192.0.0.8", Reserved, false),
            ("192.0.2.1", Documentation, false),
            ("192.88.99.1", Reserved, false),
            ("192.168.1.1", Private, true),
            ("198.18.0.1", Reserved, false),
            ("198.51.100.7", Documentation, false),
            ("203.0.113.10", Documentation, false),
            ("224.0.0.1", Multicast, true),
            ("239.255.255.250", Multicast, true),
            ("240.0.0.1", Reserved, false),
            ("255.255.255.255", Broadcast, true),
            ("1.1.1.1", Public, false),
            ("8.8.8.8", Public, false),
        ];
        for &(ip, cat, prot) in cases {
            assert_eq!(c(ip), (cat, prot), "{ip}");
        }
    }

    #[test]
    fn ipv6_table_and_embedded_forms() {
        let cases: &[(&str, Category, bool)] = &[
            ("::", Unspecified, true),
            ("::1", Loopback, true),
            ("::ffff:127.0.0.1", Loopback, true),
            ("::ffff:10.1.2.3", Private, true),
            ("::ffff:169.254.169.254", LinkLocal, true),
            ("::ffff:100.64.0.1", Private, true),
            ("::ffff:0.0.0.0", Unspecified, true),
            ("::ffff:255.255.255.255", Broadcast, true),
            ("::ffff:8.8.8.8", Public, false),
            ("::127.0.0.1", Loopback, true),
            ("64:ff9b::10.0.0.1", Private, true),
            ("64:ff9b::1.1.1.1", Public, false),
            ("64:ff9b:1::1", Reserved, true),
            ("2002:7f00:1::", Loopback, true),
            ("2002:0808:0808::", Public, false),
            ("100::1", Reserved, false),
            ("2001:1::1", Public, false),
            ("2001:2::1", Reserved, false),
            ("2001:db8::1", Documentation, false),
            ("3fff::1", Documentation, false),
            ("2606:4700::1111", Public, false),
            ("fc00::1", Private, true),
            ("fd12:3456::1", Private, true),
            ("fe80::1", LinkLocal, true),
            ("fec0::1", Reserved, true),
            ("ff02::1", Multicast, true),
            ("5f00::1", Reserved, false),
        ];
        for &(ip, cat, prot) in cases {
            assert_eq!(c(ip), (cat, prot), "{ip}");
        }
    }

    #[test]
    fn cidr_parse_and_contains() {
        let lo: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(lo.contains("127.0.0.1".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        let ula: Cidr = "fc00::/7".parse().unwrap();
        assert!(ula.contains("fd00::1".parse().unwrap()));
        assert!(!ula.contains("fe80::1".parse().unwrap()));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        for bad in ["127.0.0.0", "127.0.0.0/33", "::/129", "x/8", "1.2.3.4/-1", "1.2.3.4/ 8", "1.2.3.4/0008"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_string(), "0.0.0.0/0");
    }
}
