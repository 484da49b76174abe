//! Virtual filesystem mounts on the krun backend.
//!
//! libkrun serves virtio-fs in the VMM process itself (`DynFileSystem`), and the
//! krun VMM is a forked child of the helper with no connection to Node. So the
//! child runs its own [`FsBridge`] whose request frames go to the parent over a
//! socketpair; the parent forwards them to Node with the qemu path's frames and
//! sends Node's replies back. Same frames, same checks (the child's `NodeFs`
//! validates every answer), one more socket hop.

use crate::error::HostError;
use crate::fs_bridge::{FsBridge, FS_DEADLINE};
use sandbox_fs::CachePolicy;
use sandbox_krun::fs::KrunFs;
use sandbox_krun::KrunFsMount;
use sandbox_protocol::{FrameDecoder, Kind, Launch};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const CHUNK: usize = 256 * 1024;

/// In the forked VMM child: the libkrun filesystems for `l.mounts`, served through
/// `sock` to the parent. The runtime must outlive the VM (it never returns anyway).
pub fn child_mounts(l: &Launch, sock: StdUnixStream) -> Result<(tokio::runtime::Runtime, Vec<KrunFsMount>), HostError> {
    let (rt, bridge) = child_bridge(sock)?;
    let mounts = l
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| KrunFsMount {
            tag: m.tag.clone(),
            fs: Box::new(KrunFs::new(bridge.mount(i as u32), rt.handle().clone(), CachePolicy::default())),
        })
        .collect();
    Ok((rt, mounts))
}

/// The child's bridge, its frames pumped over `sock` by the returned runtime.
fn child_bridge(sock: StdUnixStream) -> Result<(tokio::runtime::Runtime, Arc<FsBridge>), HostError> {
    // Multi-threaded: libkrun's worker threads block on calls while the runtime's
    // own thread drives the socket.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| HostError::Setup(format!("tokio runtime for krun mounts: {e}")))?;
    let (bridge, requests) = FsBridge::new(FS_DEADLINE);
    sock.set_nonblocking(true).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?;
    let sock = {
        let _guard = rt.enter();
        UnixStream::from_std(sock).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?
    };
    rt.spawn(child_pump(sock, bridge.clone(), requests));
    Ok((rt, bridge))
}

/// Child side: requests out to the parent, `FsReply` frames back to the bridge.
async fn child_pump(sock: UnixStream, bridge: Arc<FsBridge>, mut requests: mpsc::Receiver<Vec<u8>>) {
    let (rx, mut tx) = sock.into_split();
    let writer = tokio::spawn(async move {
        while let Some(frame) = requests.recv().await {
            if tx.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut frames = FrameReader::new(rx);
    while let Some((kind, raw)) = frames.next().await {
        if kind == Kind::FsReply as u8 {
            bridge.deliver(&raw[sandbox_protocol::HEADER_LEN..]);
        }
    }
    // Parent gone: pending calls fail at their deadline with EIO; the VMM dies with it anyway.
    writer.abort();
}

/// Parent side: the child's `FsRequest` frames go to Node through `files`; Node's
/// `FsReply` frames come back through `files` and are written to the child.
pub fn serve_child(sock: StdUnixStream, files: &Arc<FsBridge>, rt: &tokio::runtime::Handle) -> Result<(), HostError> {
    sock.set_nonblocking(true).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?;
    let sock = {
        let _guard = rt.enter();
        UnixStream::from_std(sock).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?
    };
    let (rx, mut tx) = sock.into_split();
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<Vec<u8>>();
    files.relay_replies_to(replies_tx);
    rt.spawn(async move {
        while let Some(frame) = replies.recv().await {
            if tx.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let files = files.clone();
    rt.spawn(async move {
        let mut frames = FrameReader::new(rx);
        while let Some((kind, raw)) = frames.next().await {
            // Only filesystem requests may come this way; the frame is forwarded as is.
            if kind != Kind::FsRequest as u8 {
                eprintln!("sandbox-host: krun mount socket: ignoring frame kind {kind:#x}");
            } else if !files.forward_request(raw).await {
                break;
            }
        }
    });
    Ok(())
}

/// Whole frames from a byte stream; ends at EOF, on an error or on a malformed frame.
struct FrameReader<R> {
    rx: R,
    dec: FrameDecoder,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    fn new(rx: R) -> Self {
        Self { rx, dec: FrameDecoder::new(), buf: vec![0u8; CHUNK] }
    }

    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            match self.dec.next_raw() {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("sandbox-host: krun mount socket: {e}");
                    return None;
                }
            }
            match self.rx.read(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.dec.push(&self.buf[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests;
