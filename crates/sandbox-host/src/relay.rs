//! Moves frames between Node and the guest control port.
//!
//! Guest frames are forwarded verbatim after validation (length bound, known
//! guest-side kind); helper-only kinds coming from the guest end the VM,
//! because only a hostile or broken guest would send them.

use crate::backend::RunningVm;
use crate::error::HostError;
use crate::net::NetBridge;
use crate::fs_bridge::FsBridge;
use crate::node_store::Bridge;
use sandbox_protocol::{self as proto, FrameDecoder, Kind};
use std::os::unix::net::UnixStream as StdUnixStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const CHUNK: usize = 64 * 1024;

enum End {
    NodeGone,
    NodeError(HostError),
    GuestError(HostError),
}

/// The block-store bridge: its requests go to Node, Node's replies come back to it.
pub struct Blocks {
    pub bridge: Arc<Bridge>,
    pub requests: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// The network bridge: its frames (questions, audit, port answers) go to Node,
/// Node's verdicts and port requests come back to it.
pub struct Net {
    pub bridge: Arc<NetBridge>,
    pub frames: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// The filesystem bridge: FUSE operations go to Node, its answers come back to it.
pub struct Files {
    pub bridge: Arc<FsBridge>,
    pub requests: mpsc::Receiver<Vec<u8>>,
}

/// The relay's single-threaded runtime; virtio-fs device tasks run on it too.
pub fn runtime() -> Result<tokio::runtime::Runtime, HostError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HostError::Setup(format!("tokio runtime: {e}")))
}

pub fn run(
    rt: tokio::runtime::Runtime,
    node: StdUnixStream,
    leftover: FrameDecoder,
    vm: RunningVm,
    blocks: Blocks,
    net: Net,
    files: Files,
) -> Result<(), HostError> {
    rt.block_on(relay(node, leftover, vm, blocks, net, files))
}

async fn relay(node: StdUnixStream, leftover: FrameDecoder, vm: RunningVm, blocks: Blocks, net: Net, files: Files) -> Result<(), HostError> {
    let Blocks { bridge, requests: mut block_rx } = blocks;
    let Net { bridge: net_bridge, frames: mut net_rx } = net;
    let Files { bridge: fs_bridge, requests: mut fs_rx } = files;
    let RunningVm { pid, wait, control, console, .. } = vm;
    let node = to_tokio(node)?;
    let guest = to_tokio(control)?;
    let (node_rx, mut node_tx) = node.into_split();
    let (guest_rx, guest_tx) = guest.into_split();

    // The VMM is waited for on a plain thread: Child::wait blocks.
    let (exit_tx, exit_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(wait());
    });

    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::channel::<End>(2);
    let node_pump = tokio::spawn(node_to_guest(node_rx, leftover, guest_tx, bridge, net_bridge, fs_bridge, ended_tx.clone()));
    let (fwd_tx, mut fwd_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let guest_pump = tokio::spawn(guest_to_node(guest_rx, fwd_tx, ended_tx));

    let mut exit_rx = exit_rx;
    let mut fatal: Option<HostError> = None;
    let status = loop {
        tokio::select! {
            Some(bytes) = block_rx.recv() => {
                if node_tx.write_all(&bytes).await.is_err() {
                    kill(pid);
                    return Ok(());
                }
            }
            Some(bytes) = net_rx.recv() => {
                if node_tx.write_all(&bytes).await.is_err() {
                    kill(pid);
                    return Ok(());
                }
            }
            Some(bytes) = fs_rx.recv() => {
                if node_tx.write_all(&bytes).await.is_err() {
                    kill(pid);
                    return Ok(());
                }
            }
            Some(bytes) = fwd_rx.recv() => {
                if node_tx.write_all(&bytes).await.is_err() {
                    kill(pid);
                    return Ok(());
                }
            }
            Some(end) = ended_rx.recv() => match end {
                End::NodeGone => { kill(pid); return Ok(()); }
                End::NodeError(e) => { kill(pid); return Err(e); }
                End::GuestError(e) => { kill(pid); fatal = Some(e); }
            },
            status = &mut exit_rx => break status.ok().flatten(),
        }
    };
    node_pump.abort();
    // Deliver what the guest wrote before the VMM ended.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        while let Some(bytes) = fwd_rx.recv().await {
            if node_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
    })
    .await;
    guest_pump.abort();
    if let Some(e) = fatal {
        return Err(e);
    }
    use std::os::unix::process::ExitStatusExt;
    let exited = proto::VmExited {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        console_tail: console.text(),
    };
    let mut out = Vec::new();
    proto::frame_into(&mut out, Kind::VmExited, 0, &proto::encode(&exited));
    let _ = node_tx.write_all(&out).await;
    Ok(())
}

async fn node_to_guest(
    mut rx: OwnedReadHalf,
    mut dec: FrameDecoder,
    mut guest: OwnedWriteHalf,
    bridge: Arc<Bridge>,
    net: Arc<NetBridge>,
    fs_bridge: Arc<FsBridge>,
    ended: tokio::sync::mpsc::Sender<End>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        loop {
            match dec.next_raw() {
                Ok(Some((kind, raw))) if kind == Kind::BlockReply as u8 => bridge.deliver(&raw[proto::HEADER_LEN..]),
                Ok(Some((kind, raw))) if kind == Kind::NetReply as u8 => net.deliver(&raw[proto::HEADER_LEN..]),
                Ok(Some((kind, raw))) if kind == Kind::PortForward as u8 => net.forward(&raw[proto::HEADER_LEN..]),
                Ok(Some((kind, raw))) if kind == Kind::FsReply as u8 => fs_bridge.deliver(&raw[proto::HEADER_LEN..]),
                Ok(Some((kind, raw))) => {
                    // Helper-only kinds are never relayed to the guest.
                    if kind < 0x80 && guest.write_all(&raw).await.is_err() {
                        // The VMM is going away; its exit is reported separately.
                        std::future::pending::<()>().await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = ended.send(End::NodeError(HostError::Protocol(e.to_string()))).await;
                    return;
                }
            }
        }
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = ended.send(End::NodeGone).await;
                return;
            }
            Ok(n) => dec.push(&buf[..n]),
        }
    }
}

async fn guest_to_node(
    mut rx: OwnedReadHalf,
    fwd: tokio::sync::mpsc::Sender<Vec<u8>>,
    ended: tokio::sync::mpsc::Sender<End>,
) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => dec.push(&buf[..n]),
        }
        let mut batch = Vec::new();
        loop {
            match dec.next_raw() {
                Ok(Some((kind, raw))) => match Kind::try_from(kind) {
                    Ok(k) if k.is_guest() => batch.extend_from_slice(&raw),
                    _ => {
                        let e = HostError::GuestProtocol(format!("frame kind 0x{kind:02x} is not allowed from the guest"));
                        let _ = ended.send(End::GuestError(e)).await;
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = ended.send(End::GuestError(HostError::GuestProtocol(e.to_string()))).await;
                    return;
                }
            }
        }
        if !batch.is_empty() && fwd.send(batch).await.is_err() {
            return;
        }
    }
}

fn to_tokio(s: StdUnixStream) -> Result<UnixStream, HostError> {
    s.set_nonblocking(true).map_err(|e| HostError::Setup(format!("nonblocking socket: {e}")))?;
    UnixStream::from_std(s).map_err(|e| HostError::Setup(format!("tokio socket: {e}")))
}

fn kill(pid: i32) {
    unsafe { libc::kill(pid, libc::SIGKILL) };
}
