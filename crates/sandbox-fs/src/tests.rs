use crate::abi::{self, op, Writer};
use crate::backend::*;
use crate::session::{decode, dirents, CachePolicy, Decoded, Kind, Session};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

/// Records every op and answers from a tiny fixed tree.
#[derive(Default)]
struct Mock {
    seen: Mutex<Vec<Op>>,
    forgotten: Mutex<Vec<(u64, u64)>>,
}

#[async_trait]
impl FsBackend for Mock {
    async fn call(&self, _caller: Caller, op: Op) -> Result<Reply, Errno> {
        self.seen.lock().unwrap().push(op.clone());
        match op {
            Op::Lookup { name, .. } if name == "a" => Ok(Reply::Entry(Entry { node: 7, attr: Attr { ino: 70, size: 3, mode: 0o100644, nlink: 1, mtime_ms: 1500.25, ..Attr::default() } })),
            Op::Lookup { .. } => Err(Errno::ENOENT),
            Op::Read { size, .. } => Ok(Reply::Data(vec![b'x'; size as usize + 10])),
            Op::Write { data, .. } => Ok(Reply::Written(data.len() as u32)),
            Op::Readdir { .. } => Ok(Reply::Dir((0..100).map(|i| DirEntry { ino: i, name: format!("entry-{i}"), kind: 8, off: i + 1 }).collect())),
            Op::Getattr { node: 1, .. } => Ok(Reply::Attr(Attr { ino: 1, mode: 0o040755, nlink: 2, ..Attr::default() })),
            Op::Getattr { node: 7, .. } => Ok(Reply::Attr(Attr { ino: 70, mode: 0o100644, nlink: 1, ..Attr::default() })),
            Op::Getattr { .. } => Err(Errno(99999)),
            _ => Ok(Reply::Empty),
        }
    }
    fn forget(&self, node: u64, count: u64) {
        self.forgotten.lock().unwrap().push((node, count));
    }
}

fn request(opcode: u32, unique: u64, node: u64, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32((abi::IN_HEADER_LEN + body.len()) as u32).u32(opcode).u64(unique).u64(node).u32(1000).u32(1000).u32(42).u16(0).u16(0).bytes(body);
    w.buf
}

fn init_body() -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(7).u32(36).u32(128 * 1024).u32(u32::MAX).u32(0).zeros(44);
    w.buf
}

fn header(reply: &[u8]) -> (u32, i32, u64) {
    let len = u32::from_le_bytes(reply[0..4].try_into().unwrap());
    let err = i32::from_le_bytes(reply[4..8].try_into().unwrap());
    let unique = u64::from_le_bytes(reply[8..16].try_into().unwrap());
    assert_eq!(len as usize, reply.len(), "declared length matches");
    (len, err, unique)
}

async fn session() -> (Session<Mock>, Arc<Mock>) {
    let mock = Arc::new(Mock::default());
    let s = Session::new(mock.clone(), CachePolicy::default());
    let r = s.handle(&request(op::INIT, 1, 0, &init_body())).await.unwrap();
    assert_eq!(header(&r), (16 + 64, 0, 1));
    (s, mock)
}

#[tokio::test]
async fn init_negotiates_our_minor_and_limits() {
    let (s, _) = session().await;
    let r = s.handle(&request(op::INIT, 2, 0, &init_body())).await.unwrap();
    let body = &r[16..];
    assert_eq!(u32::from_le_bytes(body[0..4].try_into().unwrap()), 7);
    assert_eq!(u32::from_le_bytes(body[4..8].try_into().unwrap()), abi::KERNEL_MINOR_VERSION);
    let flags = u32::from_le_bytes(body[12..16].try_into().unwrap());
    assert_ne!(flags & abi::init_flags::MAX_PAGES, 0);
    assert_eq!(flags & (1 << 10), 0, "no writeback cache: guest writes reach the backend before write() returns");
    assert_eq!(u32::from_le_bytes(body[20..24].try_into().unwrap()), crate::MAX_WRITE);
}

#[tokio::test]
async fn ops_before_init_fail_with_eio() {
    let s = Session::new(Arc::new(Mock::default()), CachePolicy::default());
    let r = s.handle(&request(op::LOOKUP, 5, 1, b"a\0")).await.unwrap();
    assert_eq!(header(&r).1, -libc::EIO);
}

#[tokio::test]
async fn lookup_round_trips_entry_and_attr() {
    let (s, mock) = session().await;
    let r = s.handle(&request(op::LOOKUP, 9, 1, b"a\0")).await.unwrap();
    assert_eq!(header(&r), ((16 + abi::ENTRY_OUT_LEN) as u32, 0, 9));
    let e = &r[16..];
    assert_eq!(u64::from_le_bytes(e[0..8].try_into().unwrap()), 7, "nodeid");
    assert_eq!(u64::from_le_bytes(e[16..24].try_into().unwrap()), 1, "entry timeout 1 s");
    assert_eq!(u64::from_le_bytes(e[24..32].try_into().unwrap()), 0, "file attributes are not cached");
    let attr = &e[40..];
    assert_eq!(u64::from_le_bytes(attr[0..8].try_into().unwrap()), 70, "ino");
    assert_eq!(u64::from_le_bytes(attr[32..40].try_into().unwrap()), 1, "mtime seconds");
    assert_eq!(u32::from_le_bytes(attr[52..56].try_into().unwrap()), 500_250_000, "mtime nanoseconds");
    assert_eq!(u32::from_le_bytes(attr[60..64].try_into().unwrap()), 0o100644, "mode");
    let r = s.handle(&request(op::LOOKUP, 10, 1, b"missing\0")).await.unwrap();
    assert_eq!(header(&r), (16, -libc::ENOENT, 10));
    assert_eq!(mock.seen.lock().unwrap()[0], Op::Lookup { parent: 1, name: "a".into() });
}

#[tokio::test]
async fn directory_attributes_are_cached_briefly_file_attributes_not_at_all() {
    let (s, _) = session().await;
    let mut body = Writer::default();
    body.u32(0).u32(0).u64(0);
    for (node, valid) in [(1u64, 1u64), (7, 0)] {
        let r = s.handle(&request(op::GETATTR, 20, node, &body.buf)).await.unwrap();
        assert_eq!(header(&r), ((16 + abi::ATTR_OUT_LEN) as u32, 0, 20));
        assert_eq!(u64::from_le_bytes(r[16..24].try_into().unwrap()), valid, "attr_valid of node {node}");
    }
}

#[tokio::test]
async fn bad_errno_from_backend_becomes_eio() {
    let (s, _) = session().await;
    let mut body = Writer::default();
    body.u32(0).u32(0).u64(0);
    let r = s.handle(&request(op::GETATTR, 3, 9, &body.buf)).await.unwrap();
    assert_eq!(header(&r).1, -libc::EIO);
}

#[tokio::test]
async fn read_is_capped_at_the_requested_size_and_write_carries_data() {
    let (s, mock) = session().await;
    let mut body = Writer::default();
    body.u64(5).u64(0).u32(100).u32(0).u64(0).u32(0).u32(0);
    let r = s.handle(&request(op::READ, 4, 7, &body.buf)).await.unwrap();
    assert_eq!(header(&r).0, 16 + 100);
    let mut body = Writer::default();
    body.u64(5).u64(4096).u32(3).u32(0).u64(0).u32(0).u32(0).bytes(b"abc");
    let r = s.handle(&request(op::WRITE, 6, 7, &body.buf)).await.unwrap();
    assert_eq!(header(&r), (24, 0, 6));
    assert_eq!(u32::from_le_bytes(r[16..20].try_into().unwrap()), 3);
    assert!(mock.seen.lock().unwrap().contains(&Op::Write { node: 7, fh: 5, offset: 4096, data: b"abc".to_vec() }));
    // A write whose declared size disagrees with its payload is refused.
    let mut body = Writer::default();
    body.u64(5).u64(0).u32(10).u32(0).u64(0).u32(0).u32(0).bytes(b"abc");
    let r = s.handle(&request(op::WRITE, 7, 7, &body.buf)).await.unwrap();
    assert_eq!(header(&r).1, -libc::EINVAL);
}

#[tokio::test]
async fn readdir_packs_whole_entries_within_size() {
    let (s, _) = session().await;
    let mut body = Writer::default();
    body.u64(1).u64(0).u32(200).u32(0).u64(0).u32(0).u32(0);
    let r = s.handle(&request(op::READDIR, 8, 1, &body.buf)).await.unwrap();
    let (len, err, _) = header(&r);
    assert_eq!(err, 0);
    assert!(len as usize - 16 <= 200);
    // entry-N: 24 + 7 or 8 bytes, padded to 32 → 6 entries in 200 bytes.
    assert_eq!((len as usize - 16) / 32, 6);
    let d = dirents(&[DirEntry { ino: 1, name: "bad/name".into(), kind: 8, off: 1 }], 4096);
    assert!(d.is_empty(), "names with '/' are dropped");
}

#[tokio::test]
async fn forgets_take_no_reply_and_batch_is_bounded_by_bytes() {
    let (s, mock) = session().await;
    let mut body = Writer::default();
    body.u64(3);
    assert!(s.handle(&request(op::FORGET, 11, 7, &body.buf)).await.is_none());
    let mut body = Writer::default();
    body.u32(1_000_000).u32(0).u64(8).u64(1).u64(9).u64(2);
    assert!(s.handle(&request(op::BATCH_FORGET, 12, 0, &body.buf)).await.is_none());
    assert_eq!(*mock.forgotten.lock().unwrap(), vec![(7, 3), (8, 1), (9, 2)]);
}

#[tokio::test]
async fn setattr_decodes_only_valid_fields() {
    let (s, mock) = session().await;
    let mut body = Writer::default();
    let valid = abi::fattr::MODE | abi::fattr::SIZE | abi::fattr::MTIME_NOW | abi::fattr::FH;
    body.u32(valid).u32(0).u64(77).u64(1234).u64(0).u64(0).u64(0).u64(0).u32(0).u32(0).u32(0).u32(0o104755).u32(0).u32(5).u32(6).u32(0);
    s.handle(&request(op::SETATTR, 13, 7, &body.buf)).await.unwrap();
    let seen = mock.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        seen,
        Op::Setattr {
            node: 7,
            fh: Some(77),
            set: SetAttr { mode: Some(0o4755), size: Some(1234), mtime: Some(Time::Now(NowMarker::Now)), ..SetAttr::default() }
        }
    );
}

#[tokio::test]
async fn rename_exchange_is_refused_locally_and_unsupported_ops_are_enosys() {
    let (s, mock) = session().await;
    let mut body = Writer::default();
    body.u64(1).u32(abi::RENAME_EXCHANGE).u32(0).bytes(b"a\0b\0");
    let r = s.handle(&request(op::RENAME2, 14, 1, &body.buf)).await.unwrap();
    assert_eq!(header(&r).1, -libc::EINVAL);
    for opcode in [op::GETXATTR, op::SETLK, op::ACCESS, op::FLUSH, 9999] {
        let r = s.handle(&request(opcode, 15, 1, &[0u8; 16])).await.unwrap();
        assert_eq!(header(&r).1, -libc::ENOSYS, "opcode {opcode}");
    }
    assert!(mock.seen.lock().unwrap().iter().all(|o| !matches!(o, Op::Rename { .. })));
}

#[test]
fn decode_rejects_truncated_and_mismatched_requests() {
    assert!(matches!(decode(&[1, 2, 3]), Decoded::Garbage));
    let mut r = request(op::LOOKUP, 1, 1, b"a\0");
    r[0] = 99; // declared length disagrees
    assert!(matches!(decode(&r), Decoded::Garbage));
    let r = request(op::LOOKUP, 1, 1, b"no-terminator");
    assert!(matches!(decode(&r), Decoded::Call { kind: Kind::Local(Err(Errno::EINVAL)), .. }));
    let r = request(op::SETATTR, 1, 1, &[0u8; 10]);
    assert!(matches!(decode(&r), Decoded::Call { kind: Kind::Local(Err(Errno::EINVAL)), .. }));
}

/// Deterministic fuzz: random and mutated requests never panic and every
/// reply's declared length matches its size.
#[tokio::test]
async fn fuzzed_requests_never_panic() {
    let (s, _) = session().await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let seeds: Vec<Vec<u8>> = vec![
        request(op::LOOKUP, 1, 1, b"a\0"),
        request(op::SYMLINK, 1, 1, b"l\0target\0"),
        request(op::RENAME2, 1, 1, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', 0, b'b', 0]),
        request(op::BATCH_FORGET, 1, 1, &[2, 0, 0, 0, 0, 0, 0, 0]),
    ];
    for i in 0..20_000u32 {
        let mut req = if i % 2 == 0 {
            let n = (next() % 200) as usize;
            (0..n).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            let mut r = seeds[(i as usize / 2) % seeds.len()].clone();
            let k = (next() % r.len() as u64) as usize;
            r[k] = next() as u8;
            r
        };
        if i % 3 == 0 && req.len() >= 8 {
            // Keep the header length consistent so the body decoders get exercised.
            let len = req.len() as u32;
            req[0..4].copy_from_slice(&len.to_le_bytes());
            req[4..8].copy_from_slice(&((next() % 53) as u32).to_le_bytes());
        }
        if let Some(reply) = s.handle(&req).await {
            header(&reply);
        }
    }
}
