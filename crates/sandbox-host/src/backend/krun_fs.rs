//! Virtual filesystem mounts on the krun backend.
//!
//! libkrun serves virtio-fs in the VMM process itself (`DynFileSystem`), and the
//! krun VMM is a forked child of the helper with no connection to Node. So the
//! child runs its own filesystem service whose request frames go to the parent
//! over a socketpair; the parent forwards them to Node unchanged (the call id
//! is the frame's channel, so nothing is rewritten) and routes Node's
//! `FsReply` frames back to the child. Same frames, same checks (the child's
//! `NodeFs` validates every answer), one more socket hop.

use crate::diag::Diag;
use crate::error::HostError;
use crate::faults::Faults;
use crate::fs_bridge::{self, NodeFs};
use crate::link::{self, NodeTx, NODE_QUEUE};
use crate::service::{ReplySink, Router, Service};
use sandbox_fs::CachePolicy;
use sandbox_krun::fs::KrunFs;
use sandbox_krun::KrunFsMount;
use sandbox_protocol::{self as proto, DiagnosticSource, FrameDecoder, HostDirMount, Kind, Launch};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const CHUNK: usize = 256 * 1024;

/// Kinds the child may send the parent; all are forwarded to Node as they are.
const FROM_CHILD: [Kind; 3] = [Kind::FsRequest, Kind::FsForget, Kind::Diagnostic];

/// In the forked VMM child: the libkrun filesystems for `l.mounts`, served through
/// `sock` to the parent. The runtime must outlive the VM (it never returns anyway).
pub fn child_mounts(l: &Launch, sock: StdUnixStream, faults: Option<Arc<Faults>>) -> Result<(tokio::runtime::Runtime, Vec<KrunFsMount>), HostError> {
    let (rt, service) = child_service(sock, faults)?;
    let mut mounts = Vec::with_capacity(l.mounts.len());
    for (i, m) in (0u32..).zip(&l.mounts) {
        let policy = super::fs::policy(m);
        let tag = m.tag.to_string();
        mounts.push(match &m.host_dir {
            Some(h) => host_dir(tag, h, rt.handle().clone(), policy)?,
            None => KrunFsMount { tag, fs: Box::new(KrunFs::new(NodeFs::new(service.clone(), i), rt.handle().clone(), policy)) },
        });
    }
    Ok((rt, mounts))
}

/// A host directory served in the VMM child itself: no request reaches Node.
#[cfg(target_os = "linux")]
fn host_dir(tag: String, h: &HostDirMount, rt: tokio::runtime::Handle, policy: CachePolicy) -> Result<KrunFsMount, HostError> {
    let dir = sandbox_fs::host_dir::HostDir::open(&h.path, h.read_only).map_err(|e| HostError::Setup(e.to_string()))?;
    Ok(KrunFsMount { tag, fs: Box::new(KrunFs::new(Arc::new(dir), rt, policy)) })
}

#[cfg(not(target_os = "linux"))]
fn host_dir(_tag: String, h: &HostDirMount, _rt: tokio::runtime::Handle, _policy: CachePolicy) -> Result<KrunFsMount, HostError> {
    Err(HostError::Setup(format!("host directory {}: the helper serves host directories on Linux only", &*h.path)))
}

/// The child's filesystem service, its frames pumped over `sock` by the returned runtime.
fn child_service(sock: StdUnixStream, faults: Option<Arc<Faults>>) -> Result<(tokio::runtime::Runtime, Arc<Service>), HostError> {
    // Multi-threaded: libkrun's worker threads block on calls while the runtime's
    // own thread drives the socket.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| HostError::Setup(format!("tokio runtime for krun mounts: {e}")))?;
    sock.set_nonblocking(true).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?;
    let sock = {
        let _guard = rt.enter();
        UnixStream::from_std(sock).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?
    };
    let (rx, wr) = sock.into_split();
    let (tx, frames) = NodeTx::new(NODE_QUEUE);
    let service = Service::new(fs_bridge::spec(), tx.clone(), Diag::new(tx), faults);
    rt.spawn(link::write_frames(wr, frames));
    let replies = service.clone();
    rt.spawn(async move {
        let mut frames = FrameReader::new(rx);
        while let Some(f) = frames.next().await {
            if f.kind == Kind::FsReply {
                replies.deliver(f.channel, f.payload);
            }
        }
        // Parent gone: pending calls fail at their deadline with EIO; the VMM dies with it anyway.
    });
    Ok((rt, service))
}

/// Node's `FsReply` frames, passed on to the child.
struct ToChild(mpsc::UnboundedSender<Vec<u8>>);

impl ReplySink for ToChild {
    fn deliver(&self, channel: u32, payload: Vec<u8>) {
        let mut frame = Vec::with_capacity(proto::HEADER_LEN + payload.len());
        frame.extend_from_slice(&proto::frame_header(Kind::FsReply, channel, payload.len()));
        frame.extend_from_slice(&payload);
        let _ = self.0.send(frame);
    }
}

/// Parent side: the child's frames go to Node through `tx`; Node's `FsReply`
/// frames are routed (through `router`) back to the child.
pub fn serve_child(sock: StdUnixStream, tx: NodeTx, diag: Diag, router: &mut Router, rt: &tokio::runtime::Handle) -> Result<(), HostError> {
    sock.set_nonblocking(true).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?;
    let sock = {
        let _guard = rt.enter();
        UnixStream::from_std(sock).map_err(|e| HostError::Setup(format!("krun mount socket: {e}")))?
    };
    let (rx, mut wr) = sock.into_split();
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<Vec<u8>>();
    router.add(Kind::FsReply, Arc::new(ToChild(replies_tx)));
    rt.spawn(async move {
        while let Some(frame) = replies.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    rt.spawn(async move {
        let mut frames = FrameReader::new(rx);
        while let Some(f) = frames.next().await {
            if !FROM_CHILD.contains(&f.kind) {
                diag.error(DiagnosticSource::Fs, format!("krun mount socket: a {} frame from the VMM child; ignored", f.kind.name()));
                continue;
            }
            let mut frame = Vec::with_capacity(proto::HEADER_LEN + f.payload.len());
            frame.extend_from_slice(&proto::frame_header(f.kind, f.channel, f.payload.len()));
            frame.extend_from_slice(&f.payload);
            if tx.send(frame).await.is_err() {
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

    async fn next(&mut self) -> Option<proto::Frame> {
        loop {
            match self.dec.next_frame() {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(_) => return None,
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
