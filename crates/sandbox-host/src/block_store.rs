//! The block store of `rootfs.cow`, implemented by Node: every call is a
//! `BlockRequest` on the block service, answered by `BlockReply` frames.
//!
//! Node is trusted less than our own state: every reply is checked (block
//! indices inside the requested range, whole blocks, bounded lists) and a bad
//! reply fails that one call, which the guest sees as EIO.

use crate::service::{CallError, Service, ServiceSpec, Step};
use async_trait::async_trait;
use sandbox_block::overlay::StoreError;
use sandbox_block::BlockStore;
use sandbox_protocol::{self as proto, BlockReply, BlockRequest, DiagnosticSource, JsU64, Kind, MAX_PAYLOAD};
use std::sync::Arc;
use std::time::Duration;

/// How long one store call may take before it fails, unless the launch says otherwise.
pub const STORE_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on the block indices a `list` may return (16 Mi blocks = 1 TiB at 64 KiB).
const MAX_LISTED: usize = 1 << 24;
/// Block store calls in flight at once (the NBD server has at most a few dozen requests).
const MAX_IN_FLIGHT: usize = 64;

pub fn spec(deadline: Duration) -> ServiceSpec {
    ServiceSpec {
        name: "block store",
        request: Kind::BlockRequest,
        reply: Kind::BlockReply,
        deadline,
        max_in_flight: MAX_IN_FLIGHT,
        source: DiagnosticSource::Block,
    }
}

/// A [`BlockStore`] answered by Node's `SandboxBlockStore`.
pub struct NodeStore {
    service: Arc<Service>,
    block_size: u32,
}

impl NodeStore {
    pub fn new(service: Arc<Service>, block_size: u32) -> Self {
        Self { service, block_size }
    }

    /// One call; `absorb` sees each reply frame that is not a failure.
    async fn call<T>(&self, req: BlockRequest, bytes: &[&[u8]], mut absorb: impl FnMut(Vec<u64>, bool, &[u8]) -> Result<Step<T>, String>) -> Result<T, StoreError> {
        let op = req.op_name();
        let result = self
            .service
            .call(
                |id| proto::encode_framed(id, &req, bytes),
                |payload| {
                    let (reply, data) = proto::decode_framed::<BlockReply>(payload).map_err(|e| e.to_string())?;
                    match reply {
                        BlockReply::Ok { blocks, more } => absorb(blocks.into_iter().map(JsU64::get).collect(), more, data),
                        BlockReply::Failed { error } => Err(format!("the store failed: {error}")),
                    }
                },
            )
            .await;
        result.map_err(|e| {
            let why = match e {
                CallError::Malformed(why) => why,
                other => other.to_string(),
            };
            StoreError(format!("{op}: {why}"))
        })
    }

    /// One `Read` call; `snapshot` marks a checkpoint's copy of the store.
    async fn read_blocks(&self, first_block: u64, count: u64, snapshot: bool) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let bs = self.block_size as usize;
        let Some(n) = u32::try_from(count).ok().and_then(proto::U32In::new) else {
            return Err(StoreError(format!("read of {count} blocks at once is more than one request may ask")));
        };
        let mut acc: Vec<(u64, Vec<u8>)> = Vec::new();
        let req = BlockRequest::Read { start: index(first_block), count: n, snapshot };
        self.call(req, &[], |blocks, more, data| {
            if data.len() != blocks.len().saturating_mul(bs) {
                return Err(format!("the reply has {} bytes for {} blocks of {bs}", data.len(), blocks.len()));
            }
            if acc.len() + blocks.len() > n.get() as usize {
                return Err("the reply has more blocks than requested".into());
            }
            for (&idx, bytes) in blocks.iter().zip(data.chunks_exact(bs)) {
                if idx < first_block || idx - first_block >= count {
                    return Err(format!("the reply has block {idx}, outside the requested {first_block}+{count}"));
                }
                acc.push((idx, bytes.to_vec()));
            }
            Ok(if more { Step::More } else { Step::Done(std::mem::take(&mut acc)) })
        })
        .await
    }
}

fn index(i: u64) -> JsU64 {
    JsU64::saturating(i)
}

#[async_trait]
impl BlockStore for NodeStore {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    async fn list(&self) -> Result<Vec<u64>, StoreError> {
        let mut acc = Vec::new();
        self.call(BlockRequest::List, &[], |blocks, more, data| {
            if !data.is_empty() {
                return Err("the reply carries unexpected block bytes".into());
            }
            if acc.len() + blocks.len() > MAX_LISTED {
                return Err(format!("the store lists more than {MAX_LISTED} blocks"));
            }
            acc.extend(blocks);
            Ok(if more { Step::More } else { Step::Done(std::mem::take(&mut acc)) })
        })
        .await
    }

    async fn read(&self, first_block: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read_blocks(first_block, count, false).await
    }

    async fn read_for_snapshot(&self, first_block: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read_blocks(first_block, count, true).await
    }

    async fn write(&self, blocks: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        // As many whole blocks per frame as fit; each frame is one store write.
        let per_frame = ((MAX_PAYLOAD - 64 * 1024) / self.block_size as usize).max(1);
        for part in blocks.chunks(per_frame) {
            let req = BlockRequest::Write { blocks: part.iter().map(|(i, _)| index(*i)).collect() };
            let bytes: Vec<&[u8]> = part.iter().map(|(_, b)| b.as_slice()).collect();
            self.call(req, &bytes, |_, _, _| Ok(Step::Done(()))).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.call(BlockRequest::Flush, &[], |_, _, _| Ok(Step::Done(()))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Diag;
    use crate::link::NodeTx;
    use crate::service::ReplySink;
    use sandbox_protocol::FrameDecoder;
    use tokio::sync::mpsc;

    fn ok(blocks: &[u64], more: bool) -> BlockReply {
        BlockReply::Ok { blocks: blocks.iter().map(|&b| index(b)).collect(), more }
    }

    fn payload(r: &BlockReply, bytes: &[u8]) -> Vec<u8> {
        proto::encode_framed(1, r, &[bytes])[proto::HEADER_LEN..].to_vec()
    }

    /// Answers each request with `answer(request, bytes)` (empty: stay silent).
    fn serve(svc: Arc<Service>, mut rx: mpsc::Receiver<Vec<u8>>, answer: impl Fn(&BlockRequest, &[u8]) -> Vec<Vec<u8>> + Send + 'static) {
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let mut dec = FrameDecoder::new();
                dec.push(&frame);
                let Ok(Some(f)) = dec.next_frame() else { continue };
                let (req, bytes) = proto::decode_framed::<BlockRequest>(&f.payload).unwrap();
                for r in answer(&req, bytes) {
                    svc.deliver(f.channel, r);
                }
            }
        });
    }

    fn store(deadline: Duration) -> (NodeStore, Arc<Service>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = NodeTx::new(64);
        let svc = Service::new(spec(deadline), tx, Diag::none(), None);
        (NodeStore::new(svc.clone(), 4096), svc, rx)
    }

    #[tokio::test]
    async fn reads_lists_and_writes_through_node() {
        let (store, svc, rx) = store(Duration::from_secs(5));
        serve(svc, rx, |req, bytes| match req {
            BlockRequest::List => vec![payload(&ok(&[1], true), &[]), payload(&ok(&[5], false), &[])],
            BlockRequest::Read { start, .. } => vec![payload(&ok(&[start.get()], false), &[9u8; 4096])],
            BlockRequest::Write { blocks } => {
                assert_eq!(bytes.len(), blocks.len() * 4096);
                vec![payload(&ok(&[], false), &[])]
            }
            BlockRequest::Flush => vec![payload(&BlockReply::Failed { error: proto::Text::truncated("boom") }, &[])],
        });
        assert_eq!(store.list().await.unwrap(), vec![1, 5]);
        assert_eq!(store.read(5, 2).await.unwrap(), vec![(5, vec![9u8; 4096])]);
        store.write((0..300).map(|i| (i, vec![1u8; 4096])).collect()).await.unwrap();
        assert!(store.flush().await.unwrap_err().0.contains("boom"));
    }

    #[tokio::test]
    async fn malformed_replies_fail_the_call_at_once() {
        let (store, svc, rx) = store(Duration::from_secs(5));
        serve(svc, rx, |req, _| match req {
            BlockRequest::Read { start, .. } if start.get() == 0 => vec![payload(&ok(&[7], false), &[0u8; 4096])], // outside 0+2
            BlockRequest::Read { start, .. } if start.get() == 1 => vec![payload(&ok(&[1], false), &[0u8; 100])], // short block
            BlockRequest::Read { .. } => vec![payload(&ok(&[2, 2], false), &[0u8; 8192])],
            _ => vec![b"junk".to_vec()],
        });
        let t0 = std::time::Instant::now();
        assert!(store.read(0, 2).await.unwrap_err().0.contains("outside"));
        assert!(store.read(1, 1).await.unwrap_err().0.contains("bytes"));
        assert!(store.read(2, 1).await.unwrap_err().0.contains("more blocks"));
        assert!(store.flush().await.unwrap_err().0.contains("flush"));
        assert!(t0.elapsed() < Duration::from_secs(1), "bad answers fail without waiting for the deadline");
    }

    #[tokio::test]
    async fn a_silent_store_times_out_without_blocking_other_calls() {
        let (store, svc, rx) = store(Duration::from_millis(200));
        serve(svc, rx, |req, _| if matches!(req, BlockRequest::Flush) { vec![] } else { vec![payload(&ok(&[], false), &[])] });
        let store = Arc::new(store);
        let slow = tokio::spawn({
            let s = store.clone();
            async move { s.flush().await }
        });
        assert!(store.list().await.unwrap().is_empty());
        assert!(slow.await.unwrap().unwrap_err().0.contains("no answer"));
    }
}
