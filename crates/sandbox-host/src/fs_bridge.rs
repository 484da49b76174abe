//! JavaScript filesystems behind the FUSE engine: every operation becomes an
//! `FsRequest` frame the relay writes to Node, and the matching `FsReply` is
//! routed back here by id.
//!
//! Node's answers are checked like any other input (known id, shape matching
//! the operation, sizes within what was asked); a bad or late answer fails
//! that one operation with EIO in the guest. Each call has a deadline, so a
//! hung JavaScript callback never stalls other operations or devices.

use async_trait::async_trait;
use sandbox_fs::{Attr, Caller, DirEntry, Entry, Errno, FsBackend, Op, Reply, Statfs};
use sandbox_protocol::{self as proto, Kind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long one filesystem call may take before the guest gets EIO.
pub const FS_DEADLINE: Duration = Duration::from_secs(30);
/// Directory entries one READDIR answer may carry.
const MAX_DIR_ENTRIES: usize = 16 * 1024;
/// Request frames queued for Node. Calls wait for room; forgets are dropped
/// when it is full (Node then keeps a few stale ids, which costs only memory).
const QUEUE: usize = 4096;

#[derive(Serialize)]
struct RequestHeader<'a> {
    id: u32,
    mount: u32,
    uid: u32,
    gid: u32,
    pid: u32,
    #[serde(flatten)]
    op: &'a Op,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ForgetHeader {
    id: u32,
    mount: u32,
    op: &'static str,
    node: u64,
    count: u64,
}

/// Node's answer; which fields must be present depends on the operation.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ReplyHeader {
    id: u32,
    errno: Option<i32>,
    node: Option<u64>,
    attr: Option<Attr>,
    fh: Option<u64>,
    size: Option<u32>,
    entries: Option<Vec<DirEntry>>,
    statfs: Option<Statfs>,
}

type Answer = Result<(ReplyHeader, Vec<u8>), String>;

/// One per helper, shared by every mount.
pub struct FsBridge {
    out: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u32, oneshot::Sender<Answer>>>,
    /// krun: the VMM child runs the calls; Node's replies are passed on to it as frames.
    relay: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    next_id: AtomicU32,
    deadline: Duration,
}

impl FsBridge {
    /// The bridge and the receiver of request frames the relay must send to Node.
    pub fn new(deadline: Duration) -> (Arc<Self>, mpsc::Receiver<Vec<u8>>) {
        let (out, rx) = mpsc::channel(QUEUE);
        (Arc::new(FsBridge { out, pending: Mutex::new(HashMap::new()), relay: Mutex::new(None), next_id: AtomicU32::new(1), deadline }), rx)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Answer>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, Node's replies go to `to` as `FsReply` frames instead of to
    /// calls made here (the krun child makes the calls; see backend/krun_fs.rs).
    pub fn relay_replies_to(&self, to: mpsc::UnboundedSender<Vec<u8>>) {
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
    }

    /// Queues a request frame made elsewhere (the krun child) for Node; false once Node is gone.
    pub async fn forward_request(&self, frame: Vec<u8>) -> bool {
        self.out.send(frame).await.is_ok()
    }

    /// Routes one `FsReply` payload from Node to its call.
    pub fn deliver(&self, payload: &[u8]) {
        if let Some(to) = self.relay.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let mut frame = Vec::with_capacity(payload.len() + proto::HEADER_LEN);
            proto::frame_into(&mut frame, Kind::FsReply, 0, payload);
            let _ = to.send(frame);
            return;
        }
        let (header, bytes) = match proto::decode_block_payload::<ReplyHeader>(payload) {
            Ok(r) => r,
            Err(e) => return eprintln!("sandbox-host: ignoring malformed FsReply: {e}"),
        };
        if let Some(tx) = self.pending().remove(&header.id) {
            let _ = tx.send(Ok((header, bytes.to_vec())));
        }
    }

    /// The backend of mount number `mount`.
    pub fn mount(self: &Arc<Self>, mount: u32) -> Arc<NodeFs> {
        Arc::new(NodeFs { bridge: self.clone(), mount })
    }

    fn frame(header: &impl Serialize, data: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        proto::frame_into(&mut frame, Kind::FsRequest, 0, &proto::encode_block_payload(header, &[data]));
        frame
    }

    async fn call(&self, mount: u32, caller: Caller, op: &Op) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        let data: &[u8] = match op {
            Op::Write { data, .. } => data,
            _ => &[],
        };
        let header = RequestHeader { id, mount, uid: caller.uid, gid: caller.gid, pid: caller.pid, op };
        let frame = Self::frame(&header, data);
        let exchange = async {
            if self.out.send(frame).await.is_err() {
                return Err("the connection to Node is gone".to_string());
            }
            rx.await.map_err(|_| "the reply was lost".to_string())?
        };
        match tokio::time::timeout(self.deadline, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.pending().remove(&id);
                Err(e)
            }
            Err(_) => {
                self.pending().remove(&id);
                Err(format!("no answer within {} s", self.deadline.as_secs()))
            }
        }
    }
}

/// One mount's filesystem, implemented by Node.
pub struct NodeFs {
    bridge: Arc<FsBridge>,
    mount: u32,
}

#[async_trait]
impl FsBackend for NodeFs {
    async fn call(&self, caller: Caller, op: Op) -> Result<Reply, Errno> {
        let name = op.name();
        let (header, bytes) = match self.bridge.call(self.mount, caller, &op).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("sandbox-host: filesystem {name} on mount {}: {e}", self.mount);
                return Err(Errno::EIO);
            }
        };
        if let Some(errno) = header.errno {
            return Err(Errno(errno).sanitized());
        }
        convert(&op, header, bytes).map_err(|why| {
            eprintln!("sandbox-host: filesystem {name} on mount {}: bad answer from Node: {why}", self.mount);
            Errno::EIO
        })
    }

    fn forget(&self, node: u64, count: u64) {
        let _ = self.bridge.out.try_send(FsBridge::frame(&ForgetHeader { id: 0, mount: self.mount, op: "forget", node, count }, &[]));
    }
}

/// Checks Node's answer against the operation and builds the engine's reply.
fn convert(op: &Op, h: ReplyHeader, bytes: Vec<u8>) -> Result<Reply, &'static str> {
    let entry = |h: ReplyHeader| -> Result<Entry, &'static str> {
        match (h.node, h.attr) {
            (Some(node), Some(attr)) if node > 1 => Ok(Entry { node, attr }),
            _ => Err("an entry needs node (> 1) and attr"),
        }
    };
    Ok(match op {
        Op::Lookup { .. } | Op::Mknod { .. } | Op::Mkdir { .. } | Op::Symlink { .. } | Op::Link { .. } => Reply::Entry(entry(h)?),
        Op::Getattr { .. } | Op::Setattr { .. } => Reply::Attr(h.attr.ok_or("attr missing")?),
        Op::Open { .. } | Op::Opendir { .. } => Reply::Open { fh: h.fh.ok_or("fh missing")? },
        Op::Create { .. } => {
            let fh = h.fh.ok_or("fh missing")?;
            Reply::Created { entry: entry(h)?, fh }
        }
        Op::Read { size, .. } => {
            if bytes.len() > *size as usize {
                return Err("more bytes than requested");
            }
            Reply::Data(bytes)
        }
        Op::Readlink { .. } => {
            if bytes.is_empty() || bytes.len() > 4096 {
                return Err("a link target must be 1..=4096 bytes");
            }
            Reply::Data(bytes)
        }
        Op::Write { data, .. } => {
            let n = h.size.ok_or("size missing")?;
            if n as usize > data.len() {
                return Err("wrote more bytes than given");
            }
            Reply::Written(n)
        }
        Op::Readdir { .. } => {
            let entries = h.entries.ok_or("entries missing")?;
            if entries.len() > MAX_DIR_ENTRIES {
                return Err("too many directory entries");
            }
            Reply::Dir(entries)
        }
        Op::Statfs { .. } => Reply::Statfs(h.statfs.unwrap_or_default()),
        Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::Flush { .. }
        | Op::Fsync { .. }
        | Op::Release { .. }
        | Op::Releasedir { .. } => Reply::Empty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_protocol::{FrameDecoder, HEADER_LEN};

    fn caller() -> Caller {
        Caller { uid: 0, gid: 0, pid: 1 }
    }

    /// Answers each request frame with `answer(header json, data)`; None = stay silent.
    fn serve(bridge: Arc<FsBridge>, mut rx: mpsc::Receiver<Vec<u8>>, answer: impl Fn(&serde_json::Value, &[u8]) -> Option<Vec<u8>> + Send + 'static) {
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let mut dec = FrameDecoder::new();
                dec.push(&frame);
                let Ok(Some((kind, raw))) = dec.next_raw() else { continue };
                assert_eq!(kind, Kind::FsRequest as u8);
                let (req, data) = proto::decode_block_payload::<serde_json::Value>(&raw[HEADER_LEN..]).unwrap();
                if let Some(reply) = answer(&req, data) {
                    bridge.deliver(&reply);
                }
            }
        });
    }

    fn reply(v: serde_json::Value, bytes: &[u8]) -> Vec<u8> {
        proto::encode_block_payload(&v, &[bytes])
    }

    #[tokio::test]
    async fn operations_round_trip_through_node() {
        let (bridge, rx) = FsBridge::new(Duration::from_secs(5));
        serve(bridge.clone(), rx, |req, data| {
            let id = &req["id"];
            Some(match req["op"].as_str().unwrap() {
                "lookup" => {
                    assert_eq!(req["name"], "a");
                    assert_eq!(req["mount"], 3);
                    reply(serde_json::json!({"id": id, "node": 5, "attr": {"ino": 9, "mode": 33188, "size": 2}}), &[])
                }
                "write" => reply(serde_json::json!({"id": id, "size": data.len()}), &[]),
                "read" => reply(serde_json::json!({"id": id}), b"hi"),
                "unlink" => reply(serde_json::json!({"id": id, "errno": 2}), &[]),
                _ => return None,
            })
        });
        let fs = bridge.mount(3);
        let e = fs.call(caller(), Op::Lookup { parent: 1, name: "a".into() }).await.unwrap();
        assert!(matches!(e, Reply::Entry(Entry { node: 5, attr: Attr { ino: 9, size: 2, .. } })));
        let w = fs.call(caller(), Op::Write { node: 5, fh: 1, offset: 0, data: vec![1; 1000] }).await.unwrap();
        assert_eq!(w, Reply::Written(1000));
        let r = fs.call(caller(), Op::Read { node: 5, fh: 1, offset: 0, size: 10 }).await.unwrap();
        assert_eq!(r, Reply::Data(b"hi".to_vec()));
        assert_eq!(fs.call(caller(), Op::Unlink { parent: 1, name: "a".into() }).await, Err(Errno::ENOENT));
    }

    #[tokio::test]
    async fn bad_answers_and_silence_fail_one_call_with_eio() {
        let (bridge, rx) = FsBridge::new(Duration::from_millis(300));
        serve(bridge.clone(), rx, |req, _| {
            let id = &req["id"];
            match req["op"].as_str().unwrap() {
                "lookup" => Some(reply(serde_json::json!({"id": id, "node": 1, "attr": {}}), &[])), // root id as entry
                "read" => Some(reply(serde_json::json!({"id": id}), &[0u8; 64])),                // more than asked
                "getattr" => Some(reply(serde_json::json!({"id": id, "errno": -5}), &[])),      // not an errno
                "statfs" => Some(b"junk".to_vec()),
                _ => None,
            }
        });
        let fs = bridge.mount(0);
        assert_eq!(fs.call(caller(), Op::Lookup { parent: 1, name: "a".into() }).await, Err(Errno::EIO));
        assert_eq!(fs.call(caller(), Op::Read { node: 2, fh: 1, offset: 0, size: 10 }).await, Err(Errno::EIO));
        assert_eq!(fs.call(caller(), Op::Getattr { node: 2, fh: None }).await, Err(Errno::EIO));
        assert_eq!(fs.call(caller(), Op::Statfs { node: 1 }).await, Err(Errno::EIO));
        assert_eq!(fs.call(caller(), Op::Flush { node: 2, fh: 1 }).await, Err(Errno::EIO));
        assert!(bridge.pending().is_empty());
    }
}
