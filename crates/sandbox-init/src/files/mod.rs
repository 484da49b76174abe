//! `lane.fs`: file operations served by init itself, so they work on any
//! image (busybox, distroless) and need no guest tools. Each request is one
//! syscall-sized step (a range of at most `MAX_FILE_CHUNK` bytes, one
//! directory page), answered at once in the control loop: large files and
//! directories cross as a sequence of requests the host paces.
//!
//! Operations run as root (init's own identity); changes on a read-only
//! root fail with the kernel's EROFS, like any write there.

mod ops;
pub mod watch;

use sandbox_protocol::{self as proto, FileReply, Kind};

/// `{"result":"data","eof":false}` and the `true` form padded with a space to
/// the same length, so read data can be placed before we know which it is.
const DATA_EOF: &[u8] = br#"{"result":"data","eof":true} "#;
const DATA_MORE: &[u8] = br#"{"result":"data","eof":false}"#;

/// Serves one FileRequest frame; its whole reply frame is `out[..returned]`.
/// `out` is kept between calls so a read's buffer is not zero-filled again.
pub fn serve(channel: u32, payload: &[u8], out: &mut Vec<u8>) -> usize {
    let (req, bytes) = match proto::decode_framed::<proto::FileRequest>(payload) {
        Ok(r) => r,
        Err(_) => return error_reply(channel, libc::EINVAL, out),
    };
    match &req {
        proto::FileRequest::Read { path, offset, length } => return read_reply(channel, path, offset.get(), length.get(), out),
        proto::FileRequest::Put { entries } => {
            return match ops::put(entries, bytes) {
                Ok(()) => put(out, &proto::encode_framed(channel, &FileReply::Done {}, &[])),
                Err((entry, errno)) => error_reply_at(channel, errno, u32::try_from(entry).ok().and_then(proto::U32In::new), out),
            };
        }
        _ => {}
    }
    match ops::run(&req, bytes) {
        Ok(reply) => put(out, &proto::encode_framed(channel, &reply, &[])),
        Err(errno) => error_reply(channel, errno, out),
    }
}

/// Places a small frame at the start of `out`, keeping its capacity and length.
fn put(out: &mut Vec<u8>, frame: &[u8]) -> usize {
    if out.len() < frame.len() {
        out.resize(frame.len(), 0);
    }
    out[..frame.len()].copy_from_slice(frame);
    frame.len()
}

fn error_reply(channel: u32, errno: i32, out: &mut Vec<u8>) -> usize {
    error_reply_at(channel, errno, None, out)
}

/// An error reply; `entry` says which entry of a Put failed.
fn error_reply_at(channel: u32, errno: i32, entry: Option<proto::U32In<0, 1023>>, out: &mut Vec<u8>) -> usize {
    let errno = if (1..=4095).contains(&errno) { errno } else { libc::EIO };
    let reply = FileReply::Error {
        code: proto::Text::truncated(crate::sys::errno_name(errno)),
        errno: proto::I32In::saturating(errno),
        entry,
    };
    put(out, &proto::encode_framed(channel, &reply, &[]))
}

/// A read's data goes straight into its place in the reply frame: under TCG
/// every guest copy is emulated, so one fewer pass is real time.
fn read_reply(channel: u32, path: &str, offset: u64, length: u32, out: &mut Vec<u8>) -> usize {
    let head = 4 + DATA_MORE.len();
    let start = proto::HEADER_LEN + head;
    let end = start + length as usize;
    if out.len() < end {
        out.resize(end, 0);
    }
    let (n, eof) = match ops::read_range(path, offset, &mut out[start..end]) {
        Ok(r) => r,
        Err(errno) => return error_reply(channel, errno, out),
    };
    let header = proto::frame_header(Kind::FileReply, channel, head + n);
    out[..proto::HEADER_LEN].copy_from_slice(&header);
    out[proto::HEADER_LEN..proto::HEADER_LEN + 4].copy_from_slice(&(DATA_MORE.len() as u32).to_be_bytes());
    out[proto::HEADER_LEN + 4..start].copy_from_slice(if eof { DATA_EOF } else { DATA_MORE });
    start + n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(channel: u32, json: &str, data: &[u8]) -> Vec<u8> {
        let req: proto::FileRequest = serde_json::from_str(json).unwrap();
        proto::encode_framed(channel, &req, &[data])[proto::HEADER_LEN..].to_vec()
    }

    fn answer(json: &str, data: &[u8]) -> (FileReply, Vec<u8>) {
        let mut out = Vec::new();
        let n = serve(7, &request(7, json, data), &mut out);
        let mut dec = proto::FrameDecoder::new();
        dec.push(&out[..n]);
        let f = dec.next_frame().unwrap().unwrap();
        assert_eq!((f.kind, f.channel), (Kind::FileReply, 7));
        let (r, b) = proto::decode_framed::<FileReply>(&f.payload).unwrap();
        (r, b.to_vec())
    }

    fn errno(r: &FileReply) -> &str {
        match r {
            FileReply::Error { code, .. } => code.as_str(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn operations_answer_with_results_and_errno_names() {
        let dir = std::env::temp_dir().join(format!("sandbox-init-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.to_str().unwrap();
        let (r, _) = answer(&format!(r#"{{"op":"write","path":"{d}/a/b.txt","offset":0,"create":true,"truncate":true,"createParents":false}}"#), b"x");
        assert_eq!(errno(&r), "ENOENT");
        let (r, _) = answer(&format!(r#"{{"op":"write","path":"{d}/a/b.txt","offset":0,"create":true,"truncate":true,"mode":384,"createParents":true}}"#), b"hello world");
        assert_eq!(r, FileReply::Done {});
        let (r, b) = answer(&format!(r#"{{"op":"read","path":"{d}/a/b.txt","offset":6,"length":100}}"#), b"");
        assert_eq!((r, b.as_slice()), (FileReply::Data { eof: true }, &b"world"[..]));
        let (r, b) = answer(&format!(r#"{{"op":"read","path":"{d}/a/b.txt","offset":0,"length":5}}"#), b"");
        assert_eq!((r, b.as_slice()), (FileReply::Data { eof: false }, &b"hello"[..]));
        let (r, _) = answer(&format!(r#"{{"op":"stat","path":"{d}/a/b.txt","follow":false}}"#), b"");
        let FileReply::Stat { stat } = r else { panic!("{r:?}") };
        assert_eq!((stat.kind, stat.mode.get(), stat.size.get()), (proto::FileType::File, 0o600, 11));
        let (r, _) = answer(&format!(r#"{{"op":"read","path":"{d}/a","offset":0,"length":5}}"#), b"");
        assert_eq!(errno(&r), "EISDIR");
        let (r, _) = answer(&format!(r#"{{"op":"readdir","path":"{d}/a/b.txt","skip":0}}"#), b"");
        assert_eq!(errno(&r), "ENOTDIR");
        let (r, _) = answer(&format!(r#"{{"op":"mkdir","path":"{d}/a","recursive":false}}"#), b"");
        assert_eq!(errno(&r), "EEXIST");
        let (r, _) = answer(&format!(r#"{{"op":"symlink","target":"b.txt","path":"{d}/a/link"}}"#), b"");
        assert_eq!(r, FileReply::Done {});
        let (r, _) = answer(&format!(r#"{{"op":"readlink","path":"{d}/a/link"}}"#), b"");
        assert_eq!(r, FileReply::Link { target: proto::Text::new("b.txt").unwrap() });
        let (r, _) = answer(&format!(r#"{{"op":"readdir","path":"{d}/a","skip":0}}"#), b"");
        let FileReply::Dir { entries, more } = r else { panic!("{r:?}") };
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(names, [("b.txt", proto::FileType::File), ("link", proto::FileType::Symlink)]);
        assert!(!more);
        let (r, _) = answer(&format!(r#"{{"op":"rm","path":"{d}/a","recursive":false,"force":false}}"#), b"");
        assert_eq!(errno(&r), "EISDIR");
        let (r, _) = answer(&format!(r#"{{"op":"rm","path":"{d}","recursive":true,"force":false}}"#), b"");
        assert_eq!(r, FileReply::Done {});
        let (r, _) = answer(&format!(r#"{{"op":"rm","path":"{d}","recursive":true,"force":true}}"#), b"");
        assert_eq!(r, FileReply::Done {});
        let (r, _) = answer(r#"{"op":"stat","path":"relative","follow":true}"#, b"");
        assert_eq!(errno(&r), "EINVAL");
    }
}
