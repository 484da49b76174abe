//! helper ⇄ Node: network policy questions, audit records and port forwards.

use crate::bounded::{JsU64, Text, U16In};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NetProto {
    Tcp,
    Udp,
    Dns,
}

impl NetProto {
    pub fn as_str(self) -> &'static str {
        match self {
            NetProto::Tcp => "tcp",
            NetProto::Udp => "udp",
            NetProto::Dns => "dns",
        }
    }
}

/// How the guest sent a DNS message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// helper → Node (framed; the guest's DNS query, if any, follows the header):
/// may this flow open? The channel carries the question's id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetRequest {
    /// The stack's flow id; an intercepted flow's socket header names it.
    pub flow: JsU64,
    pub proto: NetProto,
    pub src_ip: Text<45>,
    pub src_port: u16,
    pub dst_ip: Text<45>,
    pub dst_port: u16,
    /// dns: how the guest sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<DnsTransport>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NetVerdict {
    Deny,
    /// Splice the flow to its destination.
    Accept,
    /// Hand the flow to Node's interceptor socket.
    Intercept,
    /// DNS: the answer follows the header.
    Answer,
}

/// Node → helper (framed; a DNS answer follows the header for `answer`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReply {
    pub verdict: NetVerdict,
}

/// What the stack decided on its own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// Denied before the policy: a protected destination.
    Protected,
    /// The policy question failed (deadline, lost verdict).
    PolicyFailed,
    /// Denied: the concurrent flow limit is reached.
    FlowLimit,
    /// Accepted, but the destination could not be reached.
    UpstreamFailed,
    /// A guest frame the stack refused.
    Malformed,
    /// Audit records were dropped (rate limit).
    AuditDropped,
    /// New flows dropped by the connection rate limit (coalesced, one per second).
    ConnectRate,
}

/// helper → Node: an audit record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetAudit {
    pub kind: AuditKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<NetProto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Text<64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Text<64>>,
    pub message: Text<4096>,
}

/// Node → helper: listen on 127.0.0.1:`host_port` (0: any) and forward each
/// connection to the guest's `guest_port`. The channel carries the request id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForward {
    pub guest_port: U16In<1, 65535>,
    pub host_port: u16,
}

/// helper → Node: the answer to one `PortForward`, on its channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "status", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum PortForwarded {
    Listening { port: U16In<1, 65535> },
    Failed { error: Text<4096> },
}
