use super::*;
use sandbox_protocol::{self as proto, Kind};

fn json<M: proto::Message>(m: &M) -> Vec<u8> {
    let frame = proto::encode(0, m);
    frame[proto::HEADER_LEN..].to_vec()
}

fn running() -> Session {
    let mut s = Session::new();
    s.check_guest(Kind::Hello as u8, 0, br#"{"protocol":2,"uptimeMs":1,"initStartedMs":1,"modulesLoadedMs":1}"#).unwrap();
    let cfg = br#"{"hostname":"h","root":{"device":"/dev/vda","fstype":"ext4","readOnly":true},"cwd":"/","env":{},"mounts":[],"limits":{"maxProcesses":1024,"workloadMemoryMib":448}}"#;
    s.check_node(Kind::Configure, 0, cfg).unwrap();
    s.check_guest(Kind::Ready as u8, 0, br#"{"uptimeMs":2,"kernel":"6.1"}"#).unwrap();
    s
}

fn start(s: &mut Session, ch: u32, window: u32, pty: bool) {
    let pty = if pty { r#","pty":{"rows":24,"cols":80}"# } else { "" };
    let body = format!(r#"{{"argv":["sh"],"env":{{}},"stdin":true,"window":{window}{pty}}}"#);
    s.check_node(Kind::Start, ch, body.as_bytes()).unwrap();
    s.check_guest(Kind::Started as u8, ch, br#"{"pid":42}"#).unwrap();
}

#[test]
fn handshake_order_is_enforced() {
    let mut s = Session::new();
    let err = s.check_guest(Kind::Ready as u8, 0, br#"{"uptimeMs":2,"kernel":"6.1"}"#).unwrap_err();
    assert!(err.reason.contains("not expected now"), "{err}");
    let mut s = Session::new();
    let old = s.check_guest(Kind::Hello as u8, 0, br#"{"protocol":1,"uptimeMs":1,"initStartedMs":1,"modulesLoadedMs":1}"#).unwrap_err();
    assert!(old.reason.contains("protocol 1"), "{old}");
    let mut s = running();
    assert!(s.check_guest(Kind::Hello as u8, 0, br#"{"protocol":2,"uptimeMs":1,"initStartedMs":1,"modulesLoadedMs":1}"#).is_err());
}

#[test]
fn output_beyond_the_granted_credit_is_a_violation() {
    let mut s = running();
    start(&mut s, 3, 10, false);
    s.check_guest(Kind::Stdout as u8, 3, &[0; 6]).unwrap();
    s.check_guest(Kind::Stderr as u8, 3, &[0; 10]).unwrap();
    let err = s.check_guest(Kind::Stdout as u8, 3, &[0; 5]).unwrap_err();
    assert!(err.reason.contains("granted only 4"), "{err}");
    s.check_node(Kind::Credit, 3, &json(&proto::Credit { stdout: 100, stderr: 0 })).unwrap();
    s.check_guest(Kind::Stdout as u8, 3, &[0; 104]).unwrap();
    assert!(s.check_guest(Kind::Stdout as u8, 3, &[0; 1]).is_err());
}

#[test]
fn stdin_acks_are_bounded_by_what_was_sent() {
    let mut s = running();
    start(&mut s, 1, 1024, false);
    s.check_node(Kind::Stdin, 1, &[7; 100]).unwrap();
    s.check_guest(Kind::StdinAck as u8, 1, br#"{"bytes":60}"#).unwrap();
    let err = s.check_guest(Kind::StdinAck as u8, 1, br#"{"bytes":41}"#).unwrap_err();
    assert!(err.reason.contains("only 40"), "{err}");
}

#[test]
fn channels_must_exist_and_end_once() {
    let mut s = running();
    assert!(s.check_guest(Kind::Exit as u8, 9, br#"{"exitCode":0,"signal":null,"timedOut":false}"#).is_err());
    start(&mut s, 2, 1024, true);
    assert!(s.check_guest(Kind::Stderr as u8, 2, b"x").unwrap_err().reason.contains("pty"));
    s.check_guest(Kind::Exit as u8, 2, br#"{"exitCode":0,"signal":null,"timedOut":false}"#).unwrap();
    assert!(s.check_guest(Kind::Exit as u8, 2, br#"{"exitCode":0,"signal":null,"timedOut":false}"#).is_err());
    assert!(s.check_guest(Kind::Stdout as u8, 2, b"late").is_err());
}

#[test]
fn hostile_payloads_and_kinds_are_refused() {
    let mut s = running();
    start(&mut s, 4, 1024, false);
    for (kind, payload) in [
        (Kind::Exit as u8, &b"not json"[..]),
        (Kind::Exit as u8, b"null"),
        (Kind::Exit as u8, br#"{"exitCode":-5,"signal":null,"timedOut":false}"#),
        (Kind::Exit as u8, br#"{"exitCode":1e99,"signal":null,"timedOut":false}"#),
        (Kind::StdinAck as u8, br#"{"bytes":4294967296}"#),
        (Kind::Started as u8, br#"{"pid":"1"}"#),
        (Kind::BlockRequest as u8, br#"{}"#),
        (Kind::FsRequest as u8, br#"{}"#),
        (Kind::Start as u8, br#"{}"#),
        (0x7f, b""),
    ] {
        let mut t = running();
        start(&mut t, 4, 1024, false);
        assert!(t.check_guest(kind, 4, payload).is_err(), "kind {kind:#x} {:?}", String::from_utf8_lossy(payload));
    }
    // Channel rules for channel-0 kinds.
    assert!(s.check_guest(Kind::InitError as u8, 5, br#"{"stage":"root","message":"x"}"#).is_err());
}

#[test]
fn pongs_answer_pings_only() {
    let mut s = running();
    assert!(s.check_guest(Kind::Pong as u8, 0, b"").unwrap_err().reason.contains("no Ping"));
    let mut s = running();
    s.check_node(Kind::Ping, 0, b"").unwrap();
    s.check_node(Kind::Ping, 0, b"").unwrap();
    s.check_guest(Kind::Pong as u8, 0, b"").unwrap();
    s.check_guest(Kind::Pong as u8, 0, b"").unwrap();
    assert!(s.check_guest(Kind::Pong as u8, 0, b"").is_err());
}

#[test]
fn node_frames_are_decoded_too() {
    let mut s = running();
    assert!(s.check_node(Kind::Start, 0, br#"{"argv":["sh"],"env":{},"stdin":false}"#).is_err(), "channel 0");
    assert!(s.check_node(Kind::Signal, 1, br#"{"signal":99}"#).is_err());
    assert!(s.check_node(Kind::Shutdown, 0, b"x").is_err());
    assert!(s.check_node(Kind::Exit, 1, b"{}").is_err(), "a guest kind from Node");
    s.check_node(Kind::Shutdown, 0, b"").unwrap();
}

#[test]
fn a_restored_session_starts_at_resumed_and_only_the_helper_quiesces() {
    let mut s = Session::resuming();
    let hello = br#"{"protocol":2,"uptimeMs":1,"initStartedMs":1,"modulesLoadedMs":1}"#;
    assert!(s.check_guest(Kind::Hello as u8, 0, hello).is_err(), "a restored guest does not boot again");
    assert!(s.check_guest(Kind::Quiesced as u8, 0, &[]).is_err(), "nobody asked it to quiesce");
    let resumed = json(&proto::Resumed { processes: 2, warnings: vec![] });
    s.check_guest(Kind::Resumed as u8, 0, &resumed).unwrap();
    assert!(s.check_guest(Kind::Resumed as u8, 0, &resumed).is_err(), "once");
    assert!(s.check_node(Kind::Quiesce, 0, &[]).is_err(), "Node may not quiesce the guest");
    assert!(s.check_node(Kind::Resume, 0, b"{}").is_err(), "Node may not resume it");
}

fn framed<M: proto::Message>(m: &M, bytes: &[u8]) -> Vec<u8> {
    let frame = proto::encode_framed(1, m, &[bytes]);
    frame[proto::HEADER_LEN..].to_vec()
}

#[test]
fn file_replies_must_answer_a_request_with_its_result_and_at_most_its_data() {
    let mut s = running();
    let read: proto::FileRequest =
        serde_json::from_str(r#"{"op":"read","path":"/etc/hostname","offset":0,"length":4}"#).unwrap();
    let data = proto::FileReply::Data { eof: true };
    // No request waits on channel 9.
    assert!(s.check_guest(Kind::FileReply as u8, 9, &framed(&data, b"ab")).is_err());
    s.check_node(Kind::FileRequest, 9, &framed(&read, b"")).unwrap();
    assert!(s.check_node(Kind::FileRequest, 9, &framed(&read, b"")).is_err(), "an id in use");
    let err = s.check_guest(Kind::FileReply as u8, 9, &framed(&data, b"abcde")).unwrap_err();
    assert!(err.reason.contains("5 bytes"), "{err}");
    s.check_node(Kind::FileRequest, 9, &framed(&read, b"")).unwrap();
    s.check_guest(Kind::FileReply as u8, 9, &framed(&data, b"abcd")).unwrap();
    // Answered: a second reply is refused.
    assert!(s.check_guest(Kind::FileReply as u8, 9, &framed(&data, b"")).is_err());

    let stat: proto::FileRequest = serde_json::from_str(r#"{"op":"stat","path":"/","follow":true}"#).unwrap();
    s.check_node(Kind::FileRequest, 10, &framed(&stat, b"")).unwrap();
    let err = s.check_guest(Kind::FileReply as u8, 10, &framed(&data, b"")).unwrap_err();
    assert!(err.reason.contains("expects stat"), "{err}");
    s.check_node(Kind::FileRequest, 10, &framed(&stat, b"")).unwrap();
    let bogus: proto::FileReply = serde_json::from_str(r#"{"result":"error","code":"enoent","errno":2}"#).unwrap();
    assert!(s.check_guest(Kind::FileReply as u8, 10, &framed(&bogus, b"")).is_err());

    let list: proto::FileRequest = serde_json::from_str(r#"{"op":"readdir","path":"/","skip":0}"#).unwrap();
    s.check_node(Kind::FileRequest, 11, &framed(&list, b"")).unwrap();
    let dir: proto::FileReply =
        serde_json::from_str(r#"{"result":"dir","entries":[{"name":"../etc","type":"file"}],"more":false}"#).unwrap();
    assert!(s.check_guest(Kind::FileReply as u8, 11, &framed(&dir, b"")).is_err());
}

#[test]
fn watch_frames_need_a_watch_and_stay_within_its_credit() {
    let mut s = running();
    let events = |n: usize| {
        let e = proto::WatchEvents {
            events: (0..n).map(|i| proto::WatchEvent { kind: proto::WatchEventType::Create, path: proto::Text::new(format!("/w/{i}")).unwrap() }).collect(),
        };
        json(&e)
    };
    assert!(s.check_guest(Kind::Watching as u8, 5, &[]).is_err(), "no watch on 5");
    let start: proto::WatchStart = serde_json::from_str(r#"{"path":"/w","recursive":true,"window":3,"maxQueued":10}"#).unwrap();
    s.check_node(Kind::WatchStart, 5, &json(&start)).unwrap();
    assert!(s.check_node(Kind::WatchStart, 5, &json(&start)).is_err(), "an id in use");
    assert!(s.check_guest(Kind::WatchEvents as u8, 5, &events(1)).is_err(), "events before Watching");
    s.check_guest(Kind::Watching as u8, 5, &[]).unwrap();
    assert!(s.check_guest(Kind::Watching as u8, 5, &[]).is_err(), "armed once");
    s.check_guest(Kind::WatchEvents as u8, 5, &events(2)).unwrap();
    let err = s.check_guest(Kind::WatchEvents as u8, 5, &events(2)).unwrap_err();
    assert!(err.reason.contains("granted only 1"), "{err}");
    s.check_node(Kind::WatchCredit, 5, br#"{"events":2}"#).unwrap();
    s.check_guest(Kind::WatchEvents as u8, 5, &events(3)).unwrap();
    let relative = br#"{"events":[{"type":"create","path":"w/x"}]}"#;
    s.check_node(Kind::WatchCredit, 5, br#"{"events":2}"#).unwrap();
    assert!(s.check_guest(Kind::WatchEvents as u8, 5, relative).is_err(), "a relative path");
    s.check_guest(Kind::WatchEnd as u8, 5, br#"{"reason":"stopped"}"#).unwrap();
    assert!(s.check_guest(Kind::WatchEnd as u8, 5, br#"{"reason":"stopped"}"#).is_err(), "ended once");
}
