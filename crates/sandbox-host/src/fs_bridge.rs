//! JavaScript filesystems behind the FUSE engine: every operation is an
//! `FsRequest` on the filesystem service, answered by one `FsReply`.
//!
//! Node's answers are checked like any other input (the result must fit the
//! operation, sizes within what was asked); a bad or late answer fails that
//! one operation with EIO in the guest and is reported as a diagnostic. Each
//! call has a deadline, so a hung JavaScript callback never stalls other
//! operations or devices.

use crate::service::{CallError, Service, ServiceSpec, Step};
use async_trait::async_trait;
use sandbox_fs::{Caller, Entry, Errno, FsBackend, Op, Reply};
use sandbox_protocol::{self as proto, DiagnosticSource, FsForget, FsReply, FsRequest, Kind, MAX_DIR_ENTRIES};
use std::sync::Arc;
use std::time::Duration;

/// How long one filesystem call may take before the guest gets EIO.
pub const FS_DEADLINE: Duration = Duration::from_secs(30);
/// Operations in flight across all mounts (each virtqueue holds at most 1024).
const MAX_IN_FLIGHT: usize = 4096;
// A full-size READ reply or WRITE request, with its JSON header, is one frame.
const _: () = assert!(sandbox_fs::MAX_WRITE as usize + 64 * 1024 <= proto::MAX_PAYLOAD);

pub fn spec() -> ServiceSpec {
    ServiceSpec {
        name: "filesystem",
        request: Kind::FsRequest,
        reply: Kind::FsReply,
        deadline: FS_DEADLINE,
        max_in_flight: MAX_IN_FLIGHT,
        source: DiagnosticSource::Fs,
    }
}

/// One mount's filesystem, implemented by Node.
pub struct NodeFs {
    service: Arc<Service>,
    mount: u32,
}

impl NodeFs {
    pub fn new(service: Arc<Service>, mount: u32) -> Arc<Self> {
        Arc::new(Self { service, mount })
    }
}

#[async_trait]
impl FsBackend for NodeFs {
    async fn call(&self, caller: Caller, op: Op) -> Result<Reply, Errno> {
        let name = op.name();
        let req = FsRequest { mount: self.mount, uid: caller.uid, gid: caller.gid, pid: caller.pid, call: op };
        let data: &[u8] = match &req.call {
            Op::Write { data, .. } => data,
            _ => &[],
        };
        let answer = self
            .service
            .call(
                |id| proto::encode_framed(id, &req, &[data]),
                |payload| {
                    let (reply, bytes) = proto::decode_framed::<FsReply>(payload).map_err(|e| e.to_string())?;
                    Ok(Step::Done((reply, bytes.to_vec())))
                },
            )
            .await;
        let report = |why: String| self.service.diag().warn(DiagnosticSource::Fs, format!("filesystem {name} on mount {}: {why}; the guest got EIO", self.mount));
        let (reply, bytes) = match answer {
            Ok(a) => a,
            Err(e) => {
                report(match e {
                    CallError::Malformed(why) => format!("bad answer from Node: {why}"),
                    other => other.to_string(),
                });
                return Err(Errno::EIO);
            }
        };
        if let FsReply::Error { errno } = reply {
            return Err(Errno(errno.get()));
        }
        convert(&req.call, reply, bytes).map_err(|why| {
            report(format!("bad answer from Node: {why}"));
            Errno::EIO
        })
    }

    fn forget(&self, node: u64, count: u64) {
        let msg = FsForget { mount: self.mount, node, count };
        // A full queue drops it: Node then keeps a few stale ids, which costs only memory.
        let _ = self.service.notify(proto::encode(0, &msg));
    }
}

/// Checks Node's answer against the operation and builds the engine's reply.
fn convert(op: &Op, reply: FsReply, bytes: Vec<u8>) -> Result<Reply, String> {
    let entry = |node: u64, attr| if node > 1 { Ok(Entry { node, attr }) } else { Err(format!("entry node id {node} (must be > 1)")) };
    let no_bytes = |r: Reply| if bytes.is_empty() { Ok(r) } else { Err("unexpected data after the header".to_string()) };
    let want = |what: &str| Err(format!("{} answered with a {what} result", op.name()));
    match (op, reply) {
        (Op::Lookup { .. } | Op::Mknod { .. } | Op::Mkdir { .. } | Op::Symlink { .. } | Op::Link { .. }, FsReply::Entry { node, attr }) => no_bytes(Reply::Entry(entry(node, attr)?)),
        (Op::Getattr { .. } | Op::Setattr { .. }, FsReply::Attr { attr }) => no_bytes(Reply::Attr(attr)),
        (Op::Open { .. } | Op::Opendir { .. }, FsReply::Open { fh }) => no_bytes(Reply::Open { fh }),
        (Op::Create { .. }, FsReply::Created { node, attr, fh }) => no_bytes(Reply::Created { entry: entry(node, attr)?, fh }),
        (Op::Read { size, .. }, FsReply::Data) => {
            if bytes.len() > *size as usize {
                return Err(format!("{} bytes read, {size} asked", bytes.len()));
            }
            Ok(Reply::Data(bytes))
        }
        (Op::Readlink { .. }, FsReply::Data) => {
            if bytes.is_empty() || bytes.len() > 4096 {
                return Err("a link target must be 1..=4096 bytes".into());
            }
            Ok(Reply::Data(bytes))
        }
        (Op::Write { data, .. }, FsReply::Written { size }) => {
            if size as usize > data.len() {
                return Err(format!("{size} bytes written, {} given", data.len()));
            }
            no_bytes(Reply::Written(size))
        }
        (Op::Readdir { .. }, FsReply::Dir { entries }) => {
            if entries.len() > MAX_DIR_ENTRIES {
                return Err(format!("{} directory entries, at most {MAX_DIR_ENTRIES}", entries.len()));
            }
            no_bytes(Reply::Dir(entries))
        }
        (Op::Statfs { .. }, FsReply::Statfs { statfs }) => no_bytes(Reply::Statfs(statfs)),
        (Op::Unlink { .. } | Op::Rmdir { .. } | Op::Rename { .. } | Op::Flush { .. } | Op::Fsync { .. } | Op::Release { .. } | Op::Releasedir { .. }, FsReply::Done) => {
            no_bytes(Reply::Empty)
        }
        (_, r) => want(match r {
            FsReply::Entry { .. } => "entry",
            FsReply::Attr { .. } => "attr",
            FsReply::Open { .. } => "open",
            FsReply::Created { .. } => "created",
            FsReply::Data => "data",
            FsReply::Written { .. } => "written",
            FsReply::Dir { .. } => "dir",
            FsReply::Statfs { .. } => "statfs",
            FsReply::Done => "done",
            FsReply::Error { .. } => "error",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Diag;
    use crate::link::NodeTx;
    use crate::service::ReplySink;
    use sandbox_fs::Attr;
    use sandbox_protocol::FrameDecoder;
    use tokio::sync::mpsc;

    fn caller() -> Caller {
        Caller { uid: 0, gid: 0, pid: 1 }
    }

    fn reply(r: &FsReply, bytes: &[u8]) -> Vec<u8> {
        proto::encode_framed(1, r, &[bytes])[proto::HEADER_LEN..].to_vec()
    }

    /// Answers each request with `answer(request, data)`; None = stay silent.
    fn serve(svc: Arc<Service>, mut rx: mpsc::Receiver<Vec<u8>>, answer: impl Fn(&FsRequest, &[u8]) -> Option<Vec<u8>> + Send + 'static) {
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let mut dec = FrameDecoder::new();
                dec.push(&frame);
                let Ok(Some(f)) = dec.next_frame() else { continue };
                if f.kind != Kind::FsRequest {
                    continue;
                }
                let (req, data) = proto::decode_framed::<FsRequest>(&f.payload).unwrap();
                if let Some(r) = answer(&req, data) {
                    svc.deliver(f.channel, r);
                }
            }
        });
    }

    fn attr() -> Attr {
        Attr { ino: 9, size: 2, mode: 0o100644, nlink: 1, ..Attr::default() }
    }

    fn bridge(deadline: Duration) -> (Arc<Service>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = NodeTx::new(64);
        let spec = ServiceSpec { deadline, ..spec() };
        (Service::new(spec, tx, Diag::none(), None), rx)
    }

    #[tokio::test]
    async fn operations_round_trip_through_node() {
        let (svc, rx) = bridge(Duration::from_secs(5));
        serve(svc.clone(), rx, |req, data| {
            Some(match &req.call {
                Op::Lookup { name, .. } => {
                    assert_eq!(name, "a");
                    assert_eq!(req.mount, 3);
                    reply(&FsReply::Entry { node: 5, attr: attr() }, &[])
                }
                Op::Write { .. } => reply(&FsReply::Written { size: u32::try_from(data.len()).unwrap() }, &[]),
                Op::Read { .. } => reply(&FsReply::Data, b"hi"),
                Op::Unlink { .. } => reply(&FsReply::Error { errno: proto::I32In::saturating(2) }, &[]),
                _ => return None,
            })
        });
        let fs = NodeFs::new(svc, 3);
        let e = fs.call(caller(), Op::Lookup { parent: 1, name: "a".into() }).await.unwrap();
        assert!(matches!(e, Reply::Entry(Entry { node: 5, attr: Attr { ino: 9, size: 2, .. } })));
        let w = fs.call(caller(), Op::Write { node: 5, fh: 1, offset: 0, data: vec![1; 1000] }).await.unwrap();
        assert_eq!(w, Reply::Written(1000));
        let r = fs.call(caller(), Op::Read { node: 5, fh: 1, offset: 0, size: 10 }).await.unwrap();
        assert_eq!(r, Reply::Data(b"hi".to_vec()));
        assert_eq!(fs.call(caller(), Op::Unlink { parent: 1, name: "a".into() }).await, Err(Errno::ENOENT));
    }

    #[tokio::test]
    async fn bad_answers_fail_one_call_with_eio_at_once_and_silence_at_the_deadline() {
        let (svc, rx) = bridge(Duration::from_millis(300));
        serve(svc.clone(), rx, |req, _| match &req.call {
            Op::Lookup { .. } => Some(reply(&FsReply::Entry { node: 1, attr: attr() }, &[])), // root id as entry
            Op::Read { .. } => Some(reply(&FsReply::Data, &[0u8; 64])),                       // more than asked
            Op::Getattr { .. } => Some(reply(&FsReply::Done, &[])),                           // wrong result kind
            Op::Statfs { .. } => Some(b"junk".to_vec()),
            _ => None,
        });
        let fs = NodeFs::new(svc, 0);
        let t0 = std::time::Instant::now();
        assert_eq!(fs.call(caller(), Op::Lookup { parent: 1, name: "a".into() }).await, Err(Errno::EIO));
        assert_eq!(fs.call(caller(), Op::Read { node: 2, fh: 1, offset: 0, size: 10 }).await, Err(Errno::EIO));
        assert_eq!(fs.call(caller(), Op::Getattr { node: 2, fh: None }).await, Err(Errno::EIO));
        assert_eq!(fs.call(caller(), Op::Statfs { node: 1 }).await, Err(Errno::EIO));
        assert!(t0.elapsed() < Duration::from_millis(250), "bad answers cost no deadline");
        assert_eq!(fs.call(caller(), Op::Flush { node: 2, fh: 1 }).await, Err(Errno::EIO));
    }
}
