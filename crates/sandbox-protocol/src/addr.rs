//! The address classification both sides apply: which destinations are
//! protected (denied before the policy runs unless opted in) and what
//! category an address belongs to. The helper's network stack and the
//! TypeScript `Endpoint` helpers are built from these rows.

use serde::{Deserialize, Serialize};

/// One category per address (embedded-IPv4 forms take the embedded address's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Multicast,
    Broadcast,
    Documentation,
    Reserved,
    Public,
}

impl Category {
    pub const ALL: [Category; 9] = [
        Category::Unspecified,
        Category::Loopback,
        Category::Private,
        Category::LinkLocal,
        Category::Multicast,
        Category::Broadcast,
        Category::Documentation,
        Category::Reserved,
        Category::Public,
    ];

    /// Categories that are protected whatever the row says: the classes the
    /// architecture denies before the JavaScript policy runs.
    pub fn always_protected(self) -> bool {
        matches!(
            self,
            Category::Unspecified | Category::Loopback | Category::Private | Category::LinkLocal | Category::Multicast | Category::Broadcast
        )
    }
}

/// A prefix of the classification table; the first matching row wins, so
/// exceptions precede their blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub cidr: &'static str,
    pub category: Category,
    /// Byte offset of an embedded IPv4 address that decides the class instead.
    pub embed_at: Option<usize>,
    /// Protected although its category is not.
    pub protect: bool,
}

const fn row(cidr: &'static str, category: Category) -> Row {
    Row { cidr, category, embed_at: None, protect: false }
}

const fn protected(cidr: &'static str, category: Category) -> Row {
    Row { cidr, category, embed_at: None, protect: true }
}

const fn embedded(cidr: &'static str, at: usize) -> Row {
    Row { cidr, category: Category::Reserved, embed_at: Some(at), protect: false }
}

use Category::*;

pub const V4: &[Row] = &[
    row("255.255.255.255/32", Broadcast), // limited broadcast, RFC 919 / RFC 8190
    row("0.0.0.0/32", Unspecified),       // RFC 1122
    // Linux routes 0.0.0.0 to the host itself; nothing else in the block is usable, so deny it all.
    protected("0.0.0.0/8", Reserved),     // "this network", RFC 791 / RFC 1122
    row("10.0.0.0/8", Private),           // RFC 1918
    row("100.64.0.0/10", Private),        // carrier-grade NAT shared space, RFC 6598
    row("127.0.0.0/8", Loopback),         // RFC 1122
    row("169.254.0.0/16", LinkLocal),     // RFC 3927 (incl. cloud metadata 169.254.169.254)
    row("172.16.0.0/12", Private),        // RFC 1918
    row("192.0.0.9/32", Public),          // PCP anycast, RFC 7723 (globally reachable exception)
    row("192.0.0.10/32", Public),         // TURN anycast, RFC 8155 (globally reachable exception)
    row("192.0.0.0/24", Reserved),        // IETF protocol assignments, RFC 6890
    row("192.0.2.0/24", Documentation),   // TEST-NET-1, RFC 5737
    row("192.88.99.0/24", Reserved),      // deprecated 6to4 relay anycast, RFC 7526
    row("192.168.0.0/16", Private),       // RFC 1918
    row("198.18.0.0/15", Reserved),       // benchmarking, RFC 2544
    row("198.51.100.0/24", Documentation), // TEST-NET-2, RFC 5737
    row("203.0.113.0/24", Documentation), // TEST-NET-3, RFC 5737
    row("224.0.0.0/4", Multicast),        // RFC 5771
    row("240.0.0.0/4", Reserved),         // future use, RFC 1112
];

pub const V6: &[Row] = &[
    row("::/128", Unspecified),    // RFC 4291
    row("::1/128", Loopback),      // RFC 4291
    embedded("::ffff:0:0/96", 12), // IPv4-mapped, RFC 4291
    embedded("::/96", 12),         // IPv4-compatible (deprecated), RFC 4291
    embedded("64:ff9b::/96", 12),  // NAT64 well-known prefix, RFC 6052
    // A local NAT64 may translate to any IPv4 (private too) at a site-chosen offset, so deny it.
    protected("64:ff9b:1::/48", Reserved), // local-use IPv4/IPv6 translation, RFC 8215
    row("100::/64", Reserved),             // discard-only, RFC 6666
    row("2001:1::1/128", Public),          // PCP anycast, RFC 7723
    row("2001:1::2/128", Public),          // TURN anycast, RFC 8155
    row("2001:1::3/128", Public),          // DNS-SD SRP anycast, RFC 9665
    row("2001:3::/32", Public),            // AMT, RFC 7450
    row("2001:4:112::/48", Public),        // AS112-v6, RFC 7535
    row("2001:20::/28", Public),           // ORCHIDv2, RFC 7343
    row("2001:30::/28", Public),           // drone remote ID DETs, RFC 9374
    row("2001::/23", Reserved),            // IETF protocol assignments (Teredo, benchmarking, ...), RFC 2928
    row("2001:db8::/32", Documentation),   // RFC 3849
    embedded("2002::/16", 2),              // 6to4, RFC 3056
    row("3fff::/20", Documentation),       // RFC 9637
    row("2000::/3", Public),               // global unicast, RFC 4291 / IANA IPv6 address space
    row("fc00::/7", Private),              // unique local, RFC 4193
    row("fe80::/10", LinkLocal),           // RFC 4291
    // Still routed like private space where it survives.
    protected("fec0::/10", Reserved), // deprecated site-local, RFC 3879
    row("ff00::/8", Multicast),       // RFC 4291
    // Everything else in IPv6 is unassigned or reserved by the IETF (e.g. 5f00::/16 SRv6, RFC 9602).
    row("::/0", Reserved),
];
