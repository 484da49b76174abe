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
/// Frames at least this big are written on their own, without the gathering copy.
const DIRECT_WRITE: usize = 64 << 10;

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
        if first.len() >= DIRECT_WRITE {
            // A big frame (a 1 MiB filesystem WRITE, a block store batch) goes out as
            // it is: gathering it would copy a MiB to save one system call.
            out.write_all(&first).await?;
            continue;
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
                Ok(f) if f.len() >= DIRECT_WRITE => {
                    out.write_all(&batch).await?;
                    batch.clear();
                    out.write_all(&f).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_of_every_size_leave_whole_and_in_order() {
        let (tx, rx) = NodeTx::new(64);
        let (ours, mut theirs) = tokio::io::duplex(8 << 20);
        let sizes = [10, DIRECT_WRITE + 1, 20, 30, 2 * DIRECT_WRITE, DIRECT_WRITE - 1, 1];
        let frames: Vec<Vec<u8>> = sizes.iter().zip(1u8..).map(|(&n, b)| vec![b; n]).collect();
        for f in &frames {
            tx.send(f.clone()).await.unwrap();
        }
        tx.finish(vec![0xee; 3]).await;
        write_frames(ours, rx).await.unwrap();
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        let mut want: Vec<u8> = frames.concat();
        want.extend_from_slice(&[0xee; 3]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes out of order");
    }
}
