//! JSON payloads of the control frames. Field names are camelCase so the
//! TypeScript side can use them as-is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub protocol: u32,
    /// Guest uptime when init sent this, from CLOCK_BOOTTIME.
    pub uptime_ms: u64,
    /// Guest uptime when init started (the kernel's share of boot).
    #[serde(default)]
    pub init_started_ms: u64,
    /// Guest uptime once the boot modules were loaded.
    #[serde(default)]
    pub modules_loaded_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RootSpec {
    /// Guest block device holding the root filesystem, e.g. `/dev/vda`.
    pub device: String,
    pub fstype: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Configure {
    pub hostname: String,
    pub root: RootSpec,
    /// Default working directory; boot fails in the guest if it does not exist.
    pub cwd: String,
    /// Environment every process starts with (before per-process overrides).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Public certificate (PEM) of the sandbox's HTTP interception CA; init
    /// installs it (writable root) or keeps it under /run (read-only root).
    /// Never a private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<String>,
    /// The guest NIC's addresses; absent: no network device, no DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GuestNet>,
    /// Virtual filesystems to mount, in order (later targets may lie inside earlier mounts).
    #[serde(default)]
    pub mounts: Vec<GuestMount>,
}

/// One virtio-fs mount as init performs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuestMount {
    /// virtio-fs tag of the device serving it.
    pub tag: String,
    /// Absolute guest path.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// Whether init may create a missing target on the root filesystem itself
    /// (true only for roots whose changes are discarded, i.e. `rootfs.ephemeral`).
    #[serde(default)]
    pub create_on_root: bool,
}

/// How init configures `eth0` (IPv4 only; the stack does not serve IPv6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuestNet {
    pub address: String,
    pub prefix_len: u8,
    pub gateway: String,
    /// Written to /etc/resolv.conf (through a bind mount from /run).
    pub nameserver: String,
    pub mtu: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub uptime_ms: u64,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InitError {
    /// Which boot step failed (`modules`, `control-port`, `root`, `cwd`…).
    pub stage: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Whether the host will send stdin; otherwise stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process group and report exit code 124 after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run under a new pseudo-terminal of this size (stdout carries the terminal output).
    #[serde(default)]
    pub pty: Option<PtySize>,
    /// Initial output window per stream in bytes; the host extends it with `Credit`.
    #[serde(default)]
    pub window: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Flow control for process output: more bytes the guest may send per stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Credit {
    #[serde(default)]
    pub stdout: u32,
    #[serde(default)]
    pub stderr: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StdinAck {
    pub bytes: u32,
}

pub type Resize = PtySize;

/// Output window a process starts with when `Start.window` is absent.
pub const DEFAULT_WINDOW: u32 = 1024 * 1024;
/// Stdin bytes the host may have in flight before an acknowledgement.
pub const STDIN_WINDOW: u32 = 256 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub pid: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StartFailed {
    /// errno name, e.g. `ENOENT`.
    pub code: String,
    pub errno: i32,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    /// Exit status; 128+signal when killed by a signal; 124 on timeout.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    pub signal: i32,
}

/// Node → helper: everything needed to start the VMM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Launch {
    pub backend: BackendKind,
    pub cpus: u8,
    pub memory_mib: u32,
    pub kernel: String,
    /// initramfs (qemu) — holds the init and kernel modules.
    #[serde(default)]
    pub initrd: Option<String>,
    /// libkrunfw shared object (krun).
    #[serde(default)]
    pub krunfw: Option<String>,
    /// Directory served as the virtio-fs root holding the init (krun).
    #[serde(default)]
    pub init_root: Option<String>,
    #[serde(default)]
    pub cmdline: Vec<String>,
    pub disks: Vec<Disk>,
    /// qemu only: path of qemu-system-x86_64.
    #[serde(default)]
    pub qemu: Option<String>,
    /// qemu only: accelerator ("kvm" or "tcg").
    #[serde(default)]
    pub accel: Option<String>,
    /// A virtio-net NIC served by the helper's userspace stack; absent: no NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetLaunch>,
    /// Virtual filesystems: one virtio-fs device each, served by the helper,
    /// whose operations go to Node as `FsRequest` frames.
    #[serde(default)]
    pub mounts: Vec<FsMount>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FsMount {
    /// virtio-fs tag (≤ 36 bytes) the guest mounts by.
    pub tag: String,
}

/// The helper's side of the guest network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetLaunch {
    /// Longest wait for a verdict from Node (the DNS forward included for DNS).
    pub policy_deadline_ms: u64,
    /// Concurrent TCP + UDP flows.
    pub max_flows: u32,
    /// Protected ranges (CIDR) the sandbox definition opts in; still subject to policy.
    #[serde(default)]
    pub allow_protected: Vec<String>,
    /// Unix socket of Node's interceptor for flows with the `intercept` verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercept_socket: Option<String>,
}

/// helper → Node: may this flow open? For DNS, the raw message to answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetRequest {
    pub id: u64,
    /// `tcp`, `udp` or `dns`.
    pub proto: String,
    pub src_ip: String,
    pub src_port: u16,
    pub dst_ip: String,
    pub dst_port: u16,
    /// dns: `udp` or `tcp`, how the guest sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// dns: the guest's query, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// Node → helper. `verdict`: `deny`, `accept` (raw splice), `intercept` (to the
/// interceptor socket) or `answer` (DNS: `answer` holds the reply, base64).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetReply {
    pub id: u64,
    pub verdict: String,
    #[serde(default)]
    pub answer: Option<String>,
}

/// helper → Node: an audit record (`kind` plus what it concerns).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetAudit {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    pub message: String,
}

/// Node → helper: listen on 127.0.0.1:`host_port` (0: any) and forward each
/// connection to the guest's `guest_port`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortForward {
    pub id: u32,
    pub guest_port: u16,
    #[serde(default)]
    pub host_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortForwarded {
    pub id: u32,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Qemu,
    Krun,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub path: String,
    pub format: String,
    pub read_only: bool,
    /// Serve the disk through the helper's copy-on-write engine instead of
    /// letting the VMM open the file (which stays untouched either way).
    #[serde(default)]
    pub cow: Option<CowSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CowSpec {
    /// `ephemeral`: dirty blocks live in helper memory and vanish with the VM;
    /// `persistent`: they are written back to Node's block store (`BlockRequest`).
    pub mode: String,
    /// Dirty-bytes budget; ephemeral writes past it fail in the guest.
    pub max_dirty_bytes: u64,
    pub block_size: u32,
    /// persistent: deadline of one store call in ms (default: the helper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Launched {
    pub vmm_pid: i32,
    pub backend: BackendKind,
    pub accel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmExited {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Last lines the VMM and the guest console printed (kernel panics land here).
    pub console_tail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelperError {
    pub message: String,
}

/// helper → Node: one call on the JavaScript block store. Payload layout of
/// both block kinds: `u32 BE header length | JSON header | block bytes`, the
/// bytes being whole blocks in the order of `blocks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockRequest {
    pub id: u32,
    /// `list`, `read`, `write` or `flush`.
    pub op: String,
    /// read: first block index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// read: number of blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// write: indices of the blocks whose bytes follow the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<u64>>,
}

/// Node → helper: the answer to one `BlockRequest`. A reply with `more`
/// is continued by further replies with the same id (replies are bounded by
/// the frame size); `blocks` lists block indices (list) or the blocks whose
/// bytes follow the header (read).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockReply {
    pub id: u32,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub blocks: Option<Vec<u64>>,
    #[serde(default)]
    pub more: bool,
}

/// Builds a block frame payload: length-prefixed JSON header, then bytes.
pub fn encode_block_payload<T: Serialize>(header: &T, bytes: &[&[u8]]) -> Vec<u8> {
    let json = encode(header);
    let total: usize = bytes.iter().map(|b| b.len()).sum();
    let mut out = Vec::with_capacity(4 + json.len() + total);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    for b in bytes {
        out.extend_from_slice(b);
    }
    out
}

/// Splits a block frame payload into its decoded header and trailing bytes.
pub fn decode_block_payload<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<(T, &[u8]), String> {
    let Some((len, rest)) = payload.split_first_chunk::<4>() else {
        return Err("block payload shorter than its header length".into());
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return Err(format!("block header length {len} exceeds the payload"));
    }
    let (json, bytes) = rest.split_at(len);
    let header = decode(json).map_err(|e| format!("block header: {e}"))?;
    Ok((header, bytes))
}

/// Decodes a JSON control payload into its message type.
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// Encodes a control message as a JSON payload.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_payload_round_trips_and_rejects_truncation() {
        let req = BlockRequest { id: 7, op: "write".into(), start: None, count: None, blocks: Some(vec![3]) };
        let p = encode_block_payload(&req, &[&[1, 2, 3]]);
        let (back, bytes): (BlockRequest, &[u8]) = decode_block_payload(&p).unwrap();
        assert_eq!(back, req);
        assert_eq!(bytes, &[1, 2, 3]);
        assert!(decode_block_payload::<BlockRequest>(&p[..2]).is_err());
        assert!(decode_block_payload::<BlockRequest>(&[0, 0, 1, 0, b'{']).is_err());
        let raw = encode_block_payload(&serde_json::json!({"id": 1, "ok": true}), &[]);
        let reply: (BlockReply, &[u8]) = decode_block_payload(&raw).unwrap();
        assert!(!reply.0.more && reply.0.blocks.is_none());
    }
}
