use super::*;
use sandbox_fs::{Attr, Caller, Errno, FsBackend, Op, Reply};
use sandbox_protocol::{self as proto, FsReply, FsRequest};

/// The krun path end to end without a VM: a call made in the "child" service
/// travels over the socketpair through the parent to a stand-in Node, and the
/// answer comes back the same way.
#[test]
fn child_calls_reach_node_through_the_parent_and_answers_come_back() {
    let parent_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (to_node, mut node_rx) = NodeTx::new(64);
    let (parent_end, child_end) = StdUnixStream::pair().unwrap();
    let mut router = Router::default();
    serve_child(parent_end, to_node, Diag::none(), &mut router, parent_rt.handle()).unwrap();
    let (child_rt, service) = child_service(child_end, None).unwrap();
    let fs = NodeFs::new(service, 3);

    // The "guest" side: two calls from a plain thread, as libkrun's workers make them.
    let handle = child_rt.handle().clone();
    let caller = std::thread::spawn(move || {
        let ok = handle.block_on(fs.call(Caller { uid: 1000, gid: 1000, pid: 42 }, Op::Getattr { node: 1, fh: None }));
        let err = handle.block_on(fs.call(Caller { uid: 0, gid: 0, pid: 1 }, Op::Readlink { node: 7 }));
        (ok, err)
    });

    // Stand-in Node: reads what the parent forwards, answers through the router.
    parent_rt.block_on(async {
        for _ in 0..2 {
            let frame = node_rx.recv().await.unwrap();
            let mut dec = proto::FrameDecoder::new();
            dec.push(&frame);
            let f = dec.next_frame().unwrap().unwrap();
            assert_eq!(f.kind, Kind::FsRequest);
            let (req, _) = proto::decode_framed::<FsRequest>(&f.payload).unwrap();
            assert_eq!(req.mount, 3);
            let answer = match req.call {
                Op::Getattr { .. } => {
                    assert_eq!(req.uid, 1000);
                    FsReply::Attr { attr: Attr { ino: 1, size: 4096, blocks: 8, mode: 0o40755, nlink: 2, ..Attr::default() } }
                }
                _ => FsReply::Error { errno: proto::I32In::saturating(2) },
            };
            let payload = proto::encode_framed(f.channel, &answer, &[])[proto::HEADER_LEN..].to_vec();
            assert!(router.deliver(Kind::FsReply, f.channel, payload));
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

/// A host directory mount is served in the VMM child itself; a directory that
/// cannot be opened fails the launch with the path in the message.
#[test]
fn host_directory_mounts_are_served_in_the_child_and_bad_ones_fail_the_launch() {
    let dir = std::env::temp_dir().join(format!("sandbox-krun-hostdir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let launch = |path: &str| -> Launch {
        serde_json::from_value(serde_json::json!({
            "backend": "krun", "cpus": 1, "memoryMib": 256, "kernel": "/k", "cmdline": [], "disks": [],
            "mounts": [{ "tag": "sandbox-fs-0" }, { "tag": "sandbox-fs-1", "hostDir": { "path": path, "readOnly": false } }],
        }))
        .unwrap()
    };
    let (_, child_end) = StdUnixStream::pair().unwrap();
    let (_rt, mounts) = child_mounts(&launch(dir.to_str().unwrap()), child_end, None).unwrap();
    assert_eq!(mounts.iter().map(|m| m.tag.as_str()).collect::<Vec<_>>(), ["sandbox-fs-0", "sandbox-fs-1"]);
    let (_, child_end) = StdUnixStream::pair().unwrap();
    let missing = dir.join("missing");
    let err = child_mounts(&launch(missing.to_str().unwrap()), child_end, None).expect_err("a missing directory fails");
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
