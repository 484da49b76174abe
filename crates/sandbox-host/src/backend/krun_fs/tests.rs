use super::*;
use sandbox_fs::{Attr, Caller, Errno, FsBackend, Op, Reply};
use sandbox_protocol as proto;
use serde_json::json;

/// The krun path end to end without a VM: a call made in the "child" bridge
/// travels over the socketpair through the parent's bridge to a stand-in Node,
/// and the answer comes back the same way.
#[test]
fn child_calls_reach_node_through_the_parent_and_answers_come_back() {
    let parent_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (parent_files, mut to_node) = FsBridge::new(FS_DEADLINE);
    let (parent_end, child_end) = StdUnixStream::pair().unwrap();
    serve_child(parent_end, &parent_files, parent_rt.handle()).unwrap();
    let (child_rt, child_bridge) = child_bridge(child_end).unwrap();
    let fs = child_bridge.mount(3);

    // The "guest" side: two calls from a plain thread, as libkrun's workers make them.
    let handle = child_rt.handle().clone();
    let caller = std::thread::spawn(move || {
        let ok = handle.block_on(fs.call(Caller { uid: 1000, gid: 1000, pid: 42 }, Op::Getattr { node: 1, fh: None }));
        let err = handle.block_on(fs.call(Caller { uid: 0, gid: 0, pid: 1 }, Op::Readlink { node: 7 }));
        (ok, err)
    });

    // Stand-in Node: reads what the parent forwards, answers through the parent.
    parent_rt.block_on(async {
        for _ in 0..2 {
            let frame = to_node.recv().await.unwrap();
            let mut dec = proto::FrameDecoder::new();
            dec.push(&frame);
            let (kind, raw) = dec.next_raw().unwrap().unwrap();
            assert_eq!(kind, Kind::FsRequest as u8);
            let (req, _) = proto::decode_block_payload::<serde_json::Value>(&raw[proto::HEADER_LEN..]).unwrap();
            assert_eq!(req["mount"], 3);
            let answer = if req["op"] == "getattr" {
                assert_eq!(req["uid"], 1000);
                json!({ "id": req["id"], "attr": { "ino": 1, "size": 4096, "blocks": 8, "atimeMs": 0.0, "mtimeMs": 0.0, "ctimeMs": 0.0, "mode": 0o40755, "nlink": 2, "uid": 0, "gid": 0, "rdev": 0 } })
            } else {
                json!({ "id": req["id"], "errno": 2 })
            };
            parent_files.deliver(&proto::encode_block_payload(&answer, &[]));
            // Let the parent's writer task run.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let (ok, err) = caller.join().unwrap();
    match ok {
        Ok(Reply::Attr(Attr { ino: 1, size: 4096, mode, .. })) => assert_eq!(mode, 0o40755),
        other => panic!("unexpected getattr answer: {other:?}"),
    }
    assert_eq!(err.unwrap_err(), Errno(2));
}
