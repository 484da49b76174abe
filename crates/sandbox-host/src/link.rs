//! The helper's side of the Node socket: one bounded queue of frames bound for
//! Node, drained by a single writer task that coalesces what is queued into
//! few writes. Every producer (guest output, service requests, diagnostics,
//! audit records) goes through it, so frames never interleave.

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Frames queued for Node before producers wait (or, for events, drop).
pub const NODE_QUEUE: usize = 1024;
/// Bytes one write to Node gathers at most.
const WRITE_BATCH: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection to Node is gone")]
pub struct Closed;

/// A handle for sending frames to Node.
#[derive(Clone)]
pub struct NodeTx(mpsc::Sender<Vec<u8>>);

impl NodeTx {
    /// The handle and the receiver the writer task drains.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self(tx), rx)
    }

    /// Queues a frame, waiting for room.
    pub async fn send(&self, frame: Vec<u8>) -> Result<(), Closed> {
        self.0.send(frame).await.map_err(|_| Closed)
    }

    /// Queues a frame from a plain thread (never from the runtime's own).
    pub fn blocking_send(&self, frame: Vec<u8>) -> Result<(), Closed> {
        self.0.blocking_send(frame).map_err(|_| Closed)
    }

    /// Queues a frame if there is room; false when full or closed (the caller drops it).
    pub fn try_send(&self, frame: Vec<u8>) -> bool {
        !frame.is_empty() && self.0.try_send(frame).is_ok()
    }

    /// Queues `last`, after which the writer flushes and stops (services may
    /// still hold handles; what they send afterwards is dropped).
    pub async fn finish(&self, last: Vec<u8>) {
        let _ = self.0.send(last).await;
        let _ = self.0.send(Vec::new()).await;
    }
}

/// Writes queued frames to Node until the queue closes, the empty frame
/// queued by [`NodeTx::finish`] arrives, or a write fails.
pub async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(mut out: W, mut rx: mpsc::Receiver<Vec<u8>>) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        if first.is_empty() {
            break;
        }
        batch.clear();
        batch.extend_from_slice(&first);
        let mut stop = false;
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) if f.is_empty() => {
                    stop = true;
                    break;
                }
                Ok(f) => batch.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        out.write_all(&batch).await?;
        if stop {
            break;
        }
    }
    out.flush().await
}
