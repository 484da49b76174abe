//! The block store of `rootfs.cow`, implemented by Node: every call becomes a
//! `BlockRequest` frame that the relay writes to Node, and the matching
//! `BlockReply` frames are routed back here by id.
//!
//! Node is trusted less than our own state: every reply is checked (known id,
//! block indices inside the requested range, whole blocks) and a bad reply
//! fails that one call, which the guest sees as EIO. Each call has a deadline,
//! so a store that never answers fails its call without stalling others.

use async_trait::async_trait;
use sandbox_block::overlay::StoreError;
use sandbox_block::BlockStore;
use sandbox_protocol::{self as proto, BlockReply, BlockRequest, Kind, MAX_PAYLOAD};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long one store call may take before it fails, unless the launch says otherwise.
pub const STORE_DEADLINE: Duration = Duration::from_secs(30);
/// Upper bound on a launch-supplied deadline (one hour plus slack).
pub const MAX_STORE_DEADLINE_MS: u64 = 3_700_000;
/// Bound on the block indices a `list` may return (16 Mi blocks = 1 TiB at 64 KiB).
const MAX_LISTED: usize = 1 << 24;

type Answer = Result<Vec<(u64, Vec<u8>)>, String>;

struct Pending {
    /// read: replies carry bytes and must stay within `range`.
    range: Option<(u64, u64)>,
    block_size: usize,
    acc: Vec<(u64, Vec<u8>)>,
    tx: oneshot::Sender<Answer>,
}

/// One per helper: outgoing requests and the calls awaiting replies.
pub struct Bridge {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u32, Pending>>,
    next_id: AtomicU32,
    deadline: Duration,
}

impl Bridge {
    /// The bridge and the receiver of request frames the relay must send to Node.
    pub fn new(deadline: Duration) -> (Arc<Self>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (out, rx) = mpsc::unbounded_channel();
        let bridge = Bridge { out, pending: Mutex::new(HashMap::new()), next_id: AtomicU32::new(1), deadline };
        (Arc::new(bridge), rx)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes one `BlockReply` payload from Node to its call.
    pub fn deliver(&self, payload: &[u8]) {
        let (reply, bytes) = match proto::decode_block_payload::<BlockReply>(payload) {
            Ok(r) => r,
            Err(e) => return eprintln!("sandbox-host: ignoring malformed BlockReply: {e}"),
        };
        let mut pending = self.pending();
        let Some(call) = pending.get_mut(&reply.id) else {
            return eprintln!("sandbox-host: ignoring BlockReply for unknown id {}", reply.id);
        };
        let verdict = if reply.ok { absorb(call, &reply, bytes) } else { Err(reply.error.clone().unwrap_or_else(|| "the block store failed".into())) };
        match verdict {
            Ok(()) if reply.more => {}
            outcome => {
                if let Some(call) = pending.remove(&reply.id) {
                    let _ = call.tx.send(outcome.map(|()| call.acc));
                }
            }
        }
    }

    async fn call(&self, req: BlockRequest, bytes: &[&[u8]], range: Option<(u64, u64)>, block_size: usize) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = BlockRequest { id, ..req };
        let op = req.op.clone();
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, Pending { range, block_size, acc: Vec::new(), tx });
        let mut frame = Vec::new();
        proto::frame_into(&mut frame, Kind::BlockRequest, 0, &proto::encode_block_payload(&req, bytes));
        if self.out.send(frame).is_err() {
            self.pending().remove(&id);
            return Err("the connection to Node is gone".into());
        }
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(answer)) => answer.map_err(|e| format!("{op}: {e}")),
            Ok(Err(_)) => Err(format!("{op}: the reply was lost")),
            Err(_) => {
                self.pending().remove(&id);
                Err(format!("{op}: no answer within {} ms", self.deadline.as_millis()))
            }
        }
    }
}

/// Checks one reply frame against its call and adds its blocks.
fn absorb(call: &mut Pending, reply: &BlockReply, bytes: &[u8]) -> Result<(), String> {
    let blocks = reply.blocks.as_deref().unwrap_or_default();
    match call.range {
        None => {
            if !bytes.is_empty() {
                return Err("the reply carries unexpected block bytes".into());
            }
            if call.acc.len() + blocks.len() > MAX_LISTED {
                return Err(format!("the store lists more than {MAX_LISTED} blocks"));
            }
            call.acc.extend(blocks.iter().map(|&i| (i, Vec::new())));
        }
        Some((start, count)) => {
            let bs = call.block_size;
            if bytes.len() != blocks.len().saturating_mul(bs) {
                return Err(format!("the reply has {} bytes for {} blocks of {bs}", bytes.len(), blocks.len()));
            }
            if call.acc.len() + blocks.len() > count as usize {
                return Err("the reply has more blocks than requested".into());
            }
            for (&idx, data) in blocks.iter().zip(bytes.chunks_exact(bs)) {
                if idx < start || idx - start >= count {
                    return Err(format!("the reply has block {idx}, outside the requested {start}+{count}"));
                }
                call.acc.push((idx, data.to_vec()));
            }
        }
    }
    Ok(())
}

/// A [`BlockStore`] answered by Node's `SandboxBlockStore`.
pub struct NodeStore {
    bridge: Arc<Bridge>,
    block_size: u32,
}

impl NodeStore {
    pub fn new(bridge: Arc<Bridge>, block_size: u32) -> Self {
        Self { bridge, block_size }
    }

    fn request(op: &str) -> BlockRequest {
        BlockRequest { id: 0, op: op.into(), start: None, count: None, blocks: None }
    }
}

#[async_trait]
impl BlockStore for NodeStore {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    async fn list(&self) -> Result<Vec<u64>, StoreError> {
        let answer = self.bridge.call(Self::request("list"), &[], None, 0).await.map_err(StoreError)?;
        Ok(answer.into_iter().map(|(i, _)| i).collect())
    }

    async fn read(&self, first_block: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let req = BlockRequest { start: Some(first_block), count: Some(count), ..Self::request("read") };
        self.bridge.call(req, &[], Some((first_block, count)), self.block_size as usize).await.map_err(StoreError)
    }

    async fn write(&self, blocks: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        // As many whole blocks per frame as fit; each frame is one store write.
        let per_frame = ((MAX_PAYLOAD - 64 * 1024) / self.block_size as usize).max(1);
        for part in blocks.chunks(per_frame) {
            let req = BlockRequest { blocks: Some(part.iter().map(|(i, _)| *i).collect()), ..Self::request("write") };
            let bytes: Vec<&[u8]> = part.iter().map(|(_, b)| b.as_slice()).collect();
            self.bridge.call(req, &bytes, None, 0).await.map_err(StoreError)?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.bridge.call(Self::request("flush"), &[], None, 0).await.map(drop).map_err(StoreError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_protocol::{FrameDecoder, HEADER_LEN};

    fn reply(id: u32, ok: bool, blocks: &[u64], more: bool, bytes: &[u8]) -> Vec<u8> {
        let r = BlockReply { id, ok, error: (!ok).then(|| "boom".into()), blocks: Some(blocks.to_vec()), more };
        proto::encode_block_payload(&r, &[bytes])
    }

    /// Answers each request with `answer(request, bytes)` (None: stay silent).
    fn serve(bridge: Arc<Bridge>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>, answer: impl Fn(&BlockRequest, &[u8]) -> Vec<Vec<u8>> + Send + 'static) {
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let mut dec = FrameDecoder::new();
                dec.push(&frame);
                let Ok(Some((_, raw))) = dec.next_raw() else { continue };
                let (req, bytes) = proto::decode_block_payload::<BlockRequest>(&raw[HEADER_LEN..]).unwrap();
                for r in answer(&req, bytes) {
                    bridge.deliver(&r);
                }
            }
        });
    }

    #[tokio::test]
    async fn reads_lists_and_writes_through_node() {
        let (bridge, rx) = Bridge::new(Duration::from_secs(5));
        serve(bridge.clone(), rx, |req, bytes| match req.op.as_str() {
            "list" => vec![reply(req.id, true, &[1], true, &[]), reply(req.id, true, &[5], false, &[])],
            "read" => vec![reply(req.id, true, &[req.start.unwrap()], false, &[9u8; 4096])],
            "write" => {
                assert_eq!(bytes.len(), req.blocks.as_ref().unwrap().len() * 4096);
                vec![reply(req.id, true, &[], false, &[])]
            }
            _ => vec![reply(req.id, false, &[], false, &[])],
        });
        let store = NodeStore::new(bridge, 4096);
        assert_eq!(store.list().await.unwrap(), vec![1, 5]);
        assert_eq!(store.read(5, 2).await.unwrap(), vec![(5, vec![9u8; 4096])]);
        store.write((0..300).map(|i| (i, vec![1u8; 4096])).collect()).await.unwrap();
        assert!(store.flush().await.unwrap_err().0.contains("boom"));
    }

    #[tokio::test]
    async fn malformed_replies_fail_the_call() {
        let (bridge, rx) = Bridge::new(Duration::from_secs(5));
        serve(bridge.clone(), rx, |req, _| match req.start {
            Some(0) => vec![reply(req.id, true, &[7], false, &[0u8; 4096])], // outside 0+2
            Some(1) => vec![reply(req.id, true, &[1], false, &[0u8; 100])],  // short block
            Some(2) => vec![reply(req.id + 100, true, &[], false, &[]), b"junk".to_vec(), reply(req.id, true, &[2, 2], false, &[0u8; 8192])],
            _ => vec![],
        });
        let store = NodeStore::new(bridge, 4096);
        assert!(store.read(0, 2).await.unwrap_err().0.contains("outside"));
        assert!(store.read(1, 1).await.unwrap_err().0.contains("bytes"));
        assert!(store.read(2, 1).await.unwrap_err().0.contains("more blocks"));
    }

    #[tokio::test]
    async fn a_silent_store_times_out_without_blocking_other_calls() {
        let (bridge, rx) = Bridge::new(Duration::from_millis(200));
        serve(bridge.clone(), rx, |req, _| if req.op == "flush" { vec![] } else { vec![reply(req.id, true, &[], false, &[])] });
        let store = Arc::new(NodeStore::new(bridge.clone(), 4096));
        let slow = tokio::spawn({
            let s = store.clone();
            async move { s.flush().await }
        });
        assert!(store.list().await.unwrap().is_empty());
        assert!(slow.await.unwrap().unwrap_err().0.contains("no answer"));
        assert!(bridge.pending().is_empty());
    }
}
