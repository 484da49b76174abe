//! One FUSE session: decodes a request, answers INIT and the operations we
//! do not support locally, forwards the rest to the [`FsBackend`] and encodes
//! the answer. Pure bytes in, bytes out: testable without a VM.

use crate::abi::{self, fattr, op, DecodeError, Reader, Writer};
use crate::backend::{Attr, Caller, DirEntry, Entry, Errno, FsBackend, NowMarker, Op, Reply, SetAttr, Statfs, Time};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Cache policy given to the guest kernel (see docs/decisions.md):
/// - file attributes are never cached: sizes and modes the host changed are
///   seen by the next stat/open/read, and the page cache is dropped at open;
/// - directory attributes (what path-walk permission checks read) are kept
///   for `dir_attr_timeout`, names for `entry_timeout`: node ids are
///   path-based, so a cached name still opens whatever the host now has at
///   that path, and missing names are never cached (new host files appear at once).
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    pub entry_timeout: Duration,
    pub attr_timeout: Duration,
    pub dir_attr_timeout: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self { entry_timeout: Duration::from_secs(1), attr_timeout: Duration::ZERO, dir_attr_timeout: Duration::from_secs(1) }
    }
}

impl CachePolicy {
    /// Every lookup and attribute goes to the backend.
    pub fn uncached() -> Self {
        Self { entry_timeout: Duration::ZERO, attr_timeout: Duration::ZERO, dir_attr_timeout: Duration::ZERO }
    }

    fn attr_timeout_for(&self, mode: u32) -> Duration {
        if mode & 0o170000 == 0o040000 {
            self.dir_attr_timeout
        } else {
            self.attr_timeout
        }
    }
}

/// Largest WRITE payload (and READ size) we negotiate: the virtio-fs driver's
/// own cap (256 pages), so a sequential write costs half the round trips of
/// 512 KiB. The Node bridge's frame limit leaves 64 KiB for the JSON header.
pub const MAX_WRITE: u32 = 1024 * 1024;
const PAGE: u32 = 4096;

pub struct Session<B: FsBackend> {
    backend: Arc<B>,
    cache: CachePolicy,
    initialized: AtomicBool,
}

/// What came off the queue, decoded far enough to know how to answer.
pub enum Decoded {
    /// Answer locally or via the backend.
    Call { unique: u64, caller: Caller, kind: Kind },
    /// FORGET / BATCH_FORGET / INTERRUPT: no reply at all.
    NoReply,
    /// Malformed beyond a header we could reply to.
    Garbage,
}

/// A request after [`Session::prepare`].
pub enum Prepared {
    /// Answered without the backend: the reply, or `None` for none.
    Answered(Option<Vec<u8>>),
    /// Needs the backend.
    Call(BackendCall),
}

/// One operation for the backend, with what its reply needs.
pub struct BackendCall {
    unique: u64,
    caller: Caller,
    op: Op,
}

pub enum Kind {
    Init { major: u32, minor: u32, max_readahead: u32, flags: u32 },
    Destroy,
    Local(Result<(), Errno>),
    Backend(Op),
    Forget(Vec<(u64, u64)>),
}

impl<B: FsBackend> Session<B> {
    pub fn new(backend: Arc<B>, cache: CachePolicy) -> Self {
        Self { backend, cache, initialized: AtomicBool::new(false) }
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Handles one request; `None` means the request takes no reply.
    pub async fn handle(&self, req: &[u8]) -> Option<Vec<u8>> {
        match self.prepare(req) {
            Prepared::Answered(reply) => reply,
            Prepared::Call(call) => Some(self.call(call).await),
        }
    }

    /// Answers what needs no backend call at once (INIT, FORGET, unsupported
    /// operations, malformed requests), so the device can answer those on its
    /// own thread; the rest is a [`BackendCall`] for [`Session::call`].
    pub fn prepare(&self, req: &[u8]) -> Prepared {
        let unique_hint = peek_unique(req);
        Prepared::Answered(match decode(req) {
            Decoded::NoReply => None,
            Decoded::Garbage => unique_hint.map(|u| error_reply(u, Errno::EINVAL)),
            Decoded::Call { unique, caller, kind } => Some(match kind {
                Kind::Init { major, minor, max_readahead, flags } => self.init(unique, major, minor, max_readahead, flags),
                Kind::Destroy => {
                    self.initialized.store(false, Ordering::Release);
                    ok_reply(unique, &[])
                }
                Kind::Local(Ok(())) => ok_reply(unique, &[]),
                Kind::Local(Err(e)) => error_reply(unique, e),
                Kind::Forget(items) => {
                    for (node, n) in items {
                        self.backend.forget(node, n);
                    }
                    return Prepared::Answered(None);
                }
                Kind::Backend(op) => {
                    if !self.initialized.load(Ordering::Acquire) {
                        error_reply(unique, Errno::EIO)
                    } else {
                        return Prepared::Call(BackendCall { unique, caller, op });
                    }
                }
            }),
        })
    }

    /// Makes the backend call and encodes its reply.
    pub async fn call(&self, call: BackendCall) -> Vec<u8> {
        let BackendCall { unique, caller, op } = call;
        let limit = reply_limit(&op);
        let result = self.backend.call(caller, op).await;
        self.finish(unique, result, limit)
    }

    /// The reply at once when the backend answers on this thread
    /// ([`FsBackend::call_now`]); else the call back, for [`Session::call`].
    pub fn call_now(&self, call: BackendCall) -> Result<Vec<u8>, BackendCall> {
        let BackendCall { unique, caller, op } = call;
        let limit = reply_limit(&op);
        match self.backend.call_now(caller, op) {
            Ok(result) => Ok(self.finish(unique, result, limit)),
            Err(op) => Err(BackendCall { unique, caller, op }),
        }
    }

    fn finish(&self, unique: u64, result: Result<Reply, Errno>, limit: Option<u32>) -> Vec<u8> {
        match result {
            Ok(reply) => self.encode(unique, reply, limit),
            Err(e) => error_reply(unique, e.sanitized()),
        }
    }

    fn init(&self, unique: u64, major: u32, minor: u32, max_readahead: u32, flags: u32) -> Vec<u8> {
        if major < abi::KERNEL_VERSION {
            return error_reply(unique, Errno::EPROTO);
        }
        if major > abi::KERNEL_VERSION {
            // The kernel retries with our major when we answer with it.
            let mut w = Writer::default();
            w.u32(abi::KERNEL_VERSION).u32(abi::KERNEL_MINOR_VERSION);
            return ok_reply(unique, &w.buf);
        }
        use abi::init_flags::*;
        // No AUTO_INVAL_DATA: it costs a GETATTR before every read. Coherence comes
        // from attributes never being cached for files and the page cache being
        // dropped at each open (no FOPEN_KEEP_CACHE).
        let wanted = ASYNC_READ | BIG_WRITES | PARALLEL_DIROPS | MAX_PAGES;
        let minor = minor.min(abi::KERNEL_MINOR_VERSION);
        let mut w = Writer::with_capacity(abi::INIT_OUT_LEN);
        w.u32(abi::KERNEL_VERSION)
            .u32(minor)
            .u32(max_readahead.min(MAX_WRITE))
            .u32(flags & wanted)
            .u16(16) // max_background
            .u16(12) // congestion_threshold
            .u32(MAX_WRITE)
            .u32(1) // time_gran: nanoseconds
            .u16((MAX_WRITE / PAGE) as u16) // max_pages
            .u16(0) // map_alignment
            .u32(0) // flags2
            .zeros(28); // unused[7]
        self.initialized.store(true, Ordering::Release);
        let body = if minor < 23 { &w.buf[..24] } else { &w.buf[..] };
        ok_reply(unique, body)
    }

    fn encode(&self, unique: u64, reply: Reply, read_size: Option<u32>) -> Vec<u8> {
        let mut w = Writer::default();
        match reply {
            Reply::Entry(e) => self.entry(&mut w, &e),
            Reply::Attr(a) => {
                let (s, ns) = split(self.cache.attr_timeout_for(a.mode));
                w.u64(s).u32(ns).u32(0);
                attr(&mut w, &a);
            }
            Reply::Open { fh } => {
                w.u64(fh).u32(0).u32(0);
            }
            Reply::Created { entry, fh } => {
                self.entry(&mut w, &entry);
                w.u64(fh).u32(0).u32(0);
            }
            Reply::Data(mut d) => {
                if let Some(max) = read_size {
                    d.truncate(max as usize);
                }
                return ok_reply(unique, &d);
            }
            Reply::Written(n) => {
                w.u32(n).u32(0);
            }
            Reply::Dir(entries) => return ok_reply(unique, &dirents(&entries, read_size.unwrap_or(u32::MAX))),
            Reply::Statfs(s) => statfs(&mut w, &s),
            Reply::Empty => {}
        }
        ok_reply(unique, &w.buf)
    }

    fn entry(&self, w: &mut Writer, e: &Entry) {
        let (es, ens) = split(self.cache.entry_timeout);
        let (as_, ans) = split(self.cache.attr_timeout_for(e.attr.mode));
        w.u64(e.node).u64(0).u64(es).u64(as_).u32(ens).u32(ans);
        attr(w, &e.attr);
    }
}

/// The guest's buffer size for the operations whose reply it bounds.
fn reply_limit(op: &Op) -> Option<u32> {
    match op {
        Op::Read { size, .. } | Op::Readdir { size, .. } => Some(*size),
        _ => None,
    }
}

/// Packs directory entries into at most `size` bytes (whole entries only).
pub fn dirents(entries: &[DirEntry], size: u32) -> Vec<u8> {
    let mut w = Writer::default();
    for e in entries {
        let name = e.name.as_bytes();
        if name.is_empty() || name.len() > 255 || name.contains(&b'/') || name.contains(&0) {
            continue; // a backend bug must not corrupt the guest's view
        }
        let len = abi::DIRENT_HEADER_LEN + name.len();
        let padded = (len + 7) & !7;
        if w.buf.len() + padded > size as usize {
            break;
        }
        w.u64(e.ino).u64(e.off).u32(name.len() as u32).u32(e.kind).bytes(name).zeros(padded - len);
    }
    w.buf
}

fn attr(w: &mut Writer, a: &Attr) {
    let (as_, ans) = ms(a.atime_ms);
    let (ms_, mns) = ms(a.mtime_ms);
    let (cs, cns) = ms(a.ctime_ms);
    w.u64(a.ino)
        .u64(a.size)
        .u64(a.blocks)
        .u64(as_)
        .u64(ms_)
        .u64(cs)
        .u32(ans)
        .u32(mns)
        .u32(cns)
        .u32(a.mode)
        .u32(a.nlink)
        .u32(a.uid)
        .u32(a.gid)
        .u32(a.rdev)
        .u32(4096)
        .u32(0);
}

fn statfs(w: &mut Writer, s: &Statfs) {
    let bsize = if s.bsize == 0 { 4096 } else { s.bsize };
    w.u64(s.blocks).u64(s.bfree).u64(s.bavail).u64(s.files).u64(s.ffree).u32(bsize).u32(s.namelen.max(1)).u32(bsize).u32(0).zeros(24);
}

/// Fractional milliseconds since the epoch → (seconds, nanoseconds); negative or non-finite → 0.
fn ms(v: f64) -> (u64, u32) {
    if !v.is_finite() || v <= 0.0 {
        return (0, 0);
    }
    let secs = (v / 1000.0).floor();
    let nanos = ((v - secs * 1000.0) * 1_000_000.0).round().clamp(0.0, 999_999_999.0);
    (secs as u64, nanos as u32)
}

fn split(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

pub fn ok_reply(unique: u64, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(abi::OUT_HEADER_LEN + body.len());
    w.u32((abi::OUT_HEADER_LEN + body.len()) as u32).i32(0).u64(unique).bytes(body);
    w.buf
}

pub fn error_reply(unique: u64, e: Errno) -> Vec<u8> {
    let mut w = Writer::with_capacity(abi::OUT_HEADER_LEN);
    w.u32(abi::OUT_HEADER_LEN as u32).i32(-e.sanitized().0).u64(unique);
    w.buf
}

fn peek_unique(req: &[u8]) -> Option<u64> {
    let mut r = Reader::new(req);
    r.u32("in_header").ok()?;
    r.u32("in_header").ok()?;
    r.u64("in_header").ok()
}

/// Decodes one request. Never panics, whatever the bytes.
pub fn decode(req: &[u8]) -> Decoded {
    let mut r = Reader::new(req);
    let Ok(header) = header(&mut r, req.len()) else { return Decoded::Garbage };
    let (_len, opcode, unique, nodeid, caller) = header;
    if opcode == op::FORGET {
        return match r.u64("forget_in") {
            Ok(n) => Decoded::Call { unique, caller, kind: Kind::Forget(vec![(nodeid, n)]) },
            Err(_) => Decoded::NoReply,
        };
    }
    if opcode == op::BATCH_FORGET {
        return match batch_forget(&mut r) {
            Ok(items) => Decoded::Call { unique, caller, kind: Kind::Forget(items) },
            Err(_) => Decoded::NoReply,
        };
    }
    if opcode == op::INTERRUPT {
        // Requests are answered as they finish; an interrupt changes nothing.
        return Decoded::NoReply;
    }
    match body(opcode, nodeid, &mut r) {
        Ok(kind) => Decoded::Call { unique, caller, kind },
        Err(_) => Decoded::Call { unique, caller, kind: Kind::Local(Err(Errno::EINVAL)) },
    }
}

type Header = (u32, u32, u64, u64, Caller);

fn header(r: &mut Reader<'_>, actual: usize) -> Result<Header, DecodeError> {
    let len = r.u32("in_header")?;
    let opcode = r.u32("in_header")?;
    let unique = r.u64("in_header")?;
    let nodeid = r.u64("in_header")?;
    let uid = r.u32("in_header")?;
    let gid = r.u32("in_header")?;
    let pid = r.u32("in_header")?;
    let _extlen = r.u16("in_header")?;
    let _pad = r.u16("in_header")?;
    if len as usize != actual {
        return Err(DecodeError::LengthMismatch { declared: len, actual });
    }
    Ok((len, opcode, unique, nodeid, Caller { uid, gid, pid }))
}

fn batch_forget(r: &mut Reader<'_>) -> Result<Vec<(u64, u64)>, DecodeError> {
    let count = r.u32("batch_forget_in")?;
    r.u32("batch_forget_in")?;
    // Bounded by the bytes actually present, not by the declared count.
    let n = (count as usize).min(r.remaining() / 16);
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push((r.u64("forget_one")?, r.u64("forget_one")?));
    }
    Ok(items)
}

fn body(opcode: u32, node: u64, r: &mut Reader<'_>) -> Result<Kind, DecodeError> {
    let backend = |op: Op| Ok(Kind::Backend(op));
    match opcode {
        op::INIT => {
            let major = r.u32("init_in")?;
            let minor = r.u32("init_in")?;
            let max_readahead = r.u32("init_in")?;
            let flags = r.u32("init_in")?;
            Ok(Kind::Init { major, minor, max_readahead, flags })
        }
        op::DESTROY => Ok(Kind::Destroy),
        op::LOOKUP => backend(Op::Lookup { parent: node, name: r.name()? }),
        op::GETATTR => {
            let flags = r.u32("getattr_in")?;
            r.u32("getattr_in")?;
            let fh = r.u64("getattr_in")?;
            backend(Op::Getattr { node, fh: (flags & abi::GETATTR_FH != 0).then_some(fh) })
        }
        op::SETATTR => {
            let valid = r.u32("setattr_in")?;
            r.u32("setattr_in")?;
            let fh = r.u64("setattr_in")?;
            let size = r.u64("setattr_in")?;
            r.u64("setattr_in")?; // lock_owner
            let atime = r.u64("setattr_in")?;
            let mtime = r.u64("setattr_in")?;
            r.u64("setattr_in")?; // ctime
            let atimensec = r.u32("setattr_in")?;
            let mtimensec = r.u32("setattr_in")?;
            r.u32("setattr_in")?; // ctimensec
            let mode = r.u32("setattr_in")?;
            r.u32("setattr_in")?;
            let uid = r.u32("setattr_in")?;
            let gid = r.u32("setattr_in")?;
            let has = |bit: u32| valid & bit != 0;
            let time = |now: u32, set: u32, s: u64, ns: u32| {
                if has(now) {
                    Some(Time::Now(NowMarker::Now))
                } else if has(set) {
                    Some(Time::Ms(s as f64 * 1000.0 + f64::from(ns.min(999_999_999)) / 1e6))
                } else {
                    None
                }
            };
            let set = SetAttr {
                mode: has(fattr::MODE).then_some(mode & 0o7777),
                uid: has(fattr::UID).then_some(uid),
                gid: has(fattr::GID).then_some(gid),
                size: has(fattr::SIZE).then_some(size),
                atime: time(fattr::ATIME_NOW, fattr::ATIME, atime, atimensec),
                mtime: time(fattr::MTIME_NOW, fattr::MTIME, mtime, mtimensec),
            };
            backend(Op::Setattr { node, fh: has(fattr::FH).then_some(fh), set })
        }
        op::READLINK => backend(Op::Readlink { node }),
        op::SYMLINK => {
            let name = r.name()?;
            let target = r.text()?;
            backend(Op::Symlink { parent: node, name, target })
        }
        op::MKNOD => {
            let mode = r.u32("mknod_in")?;
            let rdev = r.u32("mknod_in")?;
            r.u32("mknod_in")?;
            r.u32("mknod_in")?;
            backend(Op::Mknod { parent: node, name: r.name()?, mode, rdev })
        }
        op::MKDIR => {
            let mode = r.u32("mkdir_in")?;
            r.u32("mkdir_in")?; // umask: the kernel already applied it (no FUSE_DONT_MASK)
            backend(Op::Mkdir { parent: node, name: r.name()?, mode })
        }
        op::UNLINK => backend(Op::Unlink { parent: node, name: r.name()? }),
        op::RMDIR => backend(Op::Rmdir { parent: node, name: r.name()? }),
        op::RENAME | op::RENAME2 => {
            let new_parent = r.u64("rename_in")?;
            let flags = if opcode == op::RENAME2 {
                let f = r.u32("rename2_in")?;
                r.u32("rename2_in")?;
                f
            } else {
                0
            };
            let name = r.name()?;
            let new_name = r.name()?;
            if flags & abi::RENAME_EXCHANGE != 0 || flags & !(abi::RENAME_NOREPLACE | abi::RENAME_EXCHANGE) != 0 {
                return Ok(Kind::Local(Err(Errno::EINVAL)));
            }
            backend(Op::Rename { parent: node, name, new_parent, new_name, flags })
        }
        op::LINK => {
            let old = r.u64("link_in")?;
            backend(Op::Link { node: old, new_parent: node, new_name: r.name()? })
        }
        op::OPEN => {
            let flags = r.u32("open_in")?;
            backend(Op::Open { node, flags })
        }
        op::CREATE => {
            let flags = r.u32("create_in")?;
            let mode = r.u32("create_in")?;
            r.u32("create_in")?;
            r.u32("create_in")?;
            backend(Op::Create { parent: node, name: r.name()?, mode, flags })
        }
        op::READ => {
            let fh = r.u64("read_in")?;
            let offset = r.u64("read_in")?;
            let size = r.u32("read_in")?.min(MAX_WRITE);
            backend(Op::Read { node, fh, offset, size })
        }
        op::WRITE => {
            let fh = r.u64("write_in")?;
            let offset = r.u64("write_in")?;
            let size = r.u32("write_in")?;
            r.u32("write_in")?;
            r.u64("write_in")?;
            r.u32("write_in")?;
            r.u32("write_in")?;
            let data = r.rest();
            if data.len() != size as usize || size > MAX_WRITE {
                return Err(DecodeError::WriteSize { declared: size, actual: data.len() });
            }
            backend(Op::Write { node, fh, offset, data: data.to_vec() })
        }
        // Writes reach the backend before write() returns (no writeback cache),
        // so close has nothing to flush: ENOSYS makes the kernel stop sending FLUSH.
        op::FLUSH => Ok(Kind::Local(Err(Errno::ENOSYS))),
        op::FSYNC | op::FSYNCDIR => {
            let fh = r.u64("fsync_in")?;
            let flags = r.u32("fsync_in")?;
            if opcode == op::FSYNCDIR {
                return Ok(Kind::Local(Ok(())));
            }
            backend(Op::Fsync { node, fh, datasync: flags & 1 != 0 })
        }
        op::RELEASE => backend(Op::Release { node, fh: r.u64("release_in")? }),
        op::OPENDIR => backend(Op::Opendir { node }),
        op::READDIR => {
            let fh = r.u64("read_in")?;
            let offset = r.u64("read_in")?;
            let size = r.u32("read_in")?.min(MAX_WRITE);
            backend(Op::Readdir { node, fh, offset, size })
        }
        op::RELEASEDIR => backend(Op::Releasedir { node, fh: r.u64("release_in")? }),
        op::STATFS => backend(Op::Statfs { node }),
        op::SYNCFS => Ok(Kind::Local(Ok(()))),
        // Permission checks are the kernel's (virtio-fs mounts use default_permissions);
        // ENOSYS makes it stop asking. Locks stay local to the guest kernel; xattrs,
        // fallocate, lseek, copy_file_range, ioctl and poll are not offered.
        op::ACCESS
        | op::GETLK
        | op::SETLK
        | op::SETLKW
        | op::SETXATTR
        | op::GETXATTR
        | op::LISTXATTR
        | op::REMOVEXATTR
        | op::BMAP
        | op::IOCTL
        | op::POLL
        | op::FALLOCATE
        | op::READDIRPLUS
        | op::LSEEK
        | op::COPY_FILE_RANGE => Ok(Kind::Local(Err(Errno::ENOSYS))),
        _ => Ok(Kind::Local(Err(Errno::ENOSYS))),
    }
}
