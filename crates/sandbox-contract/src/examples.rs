//! One example of every message, as Rust serialises it. Each is written as
//! JSON, decoded into its Rust type (so it is valid by Rust's rules) and
//! serialised again; the TypeScript validators must accept every one.

use sandbox_protocol as proto;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

fn ex<T: Serialize + DeserializeOwned>(name: &str, v: Value) -> (String, Value) {
    let typed: T = match serde_json::from_value(v) {
        Ok(t) => t,
        Err(e) => panic!("the example of {name} is not valid for its Rust type: {e}"),
    };
    (name.to_string(), serde_json::to_value(&typed).unwrap_or(Value::Null))
}

pub fn all() -> Vec<(String, Value)> {
    use proto::*;
    let attr = json!({"ino": 9, "size": 2, "blocks": 1, "atimeMs": 1.5, "mtimeMs": 2.0, "ctimeMs": 3.0, "mode": 33188, "nlink": 1, "uid": 0, "gid": 0, "rdev": 0});
    vec![
        ex::<Hello>("Hello", json!({"protocol": PROTOCOL_VERSION, "uptimeMs": 1200, "initStartedMs": 1100, "modulesLoadedMs": 1150})),
        ex::<Configure>("Configure", json!({
            "hostname": "sandbox", "root": {"device": "/dev/vda", "fstype": "ext4", "readOnly": true}, "cwd": "/",
            "env": {"CI": "1"}, "network": {"address": "10.0.2.15", "prefixLen": 24, "gateway": "10.0.2.2", "nameserver": "10.0.2.3", "mtu": 1500},
            "mounts": [{"tag": "sandbox-fs-0", "target": "/workspace", "readOnly": false, "createOnRoot": false}],
            "limits": {"maxProcesses": 1024, "workloadMemoryMib": 448}
        })),
        ex::<Ready>("Ready", json!({"uptimeMs": 1300, "kernel": "6.1.0-57-cloud-amd64", "warnings": []})),
        ex::<InitError>("InitError", json!({"stage": "cwd", "message": "/nope does not exist"})),
        ex::<Start>("Start", json!({"argv": ["sh", "-c", "echo hi"], "env": {}, "stdin": true, "timeoutMs": 1000, "pty": {"rows": 24, "cols": 80}, "window": 1048576})),
        ex::<Started>("Started", json!({"pid": 42})),
        ex::<StartFailed>("StartFailed", json!({"code": "ENOENT", "errno": 2, "message": "no-such-cmd: not found"})),
        ex::<Exit>("Exit", json!({"exitCode": 137, "signal": 9, "timedOut": false, "oomKilled": true})),
        ex::<Signal>("Signal", json!({"signal": 15})),
        ex::<Credit>("Credit", json!({"stdout": 65536})),
        ex::<StdinAck>("StdinAck", json!({"bytes": 4096})),
        ex::<Resize>("Resize", json!({"rows": 50, "cols": 132})),
        ex::<FileRequest>("FileRequest", json!({"op": "write", "path": "/tmp/a/b.txt", "offset": 0, "create": true, "truncate": true, "mode": 420, "createParents": true})),
        ex::<FileReply>("FileReply", json!({"result": "stat", "stat": {"type": "file", "mode": 420, "size": 5, "uid": 0, "gid": 0, "nlink": 1, "ino": 12, "mtimeMs": 1700000000123u64, "mtimeNs": 456789, "atimeMs": 1700000000000u64, "ctimeMs": 1700000000123u64}})),
        ex::<WatchStart>("WatchStart", json!({"path": "/workspace", "recursive": true, "window": 256, "maxQueued": 4096})),
        ex::<WatchEvents>("WatchEvents", json!({"events": [{"type": "create", "path": "/workspace/a.txt"}, {"type": "overflow", "path": "/workspace"}]})),
        ex::<WatchCredit>("WatchCredit", json!({"events": 128})),
        ex::<WatchEnd>("WatchEnd", json!({"reason": "error", "code": "ENOENT", "errno": 2})),
        ex::<Launch>("Launch", json!({
            "backend": "qemu", "cpus": 1, "memoryMib": 512, "kernel": "/k/vmlinuz", "initrd": "/k/initrd", "cmdline": [],
            "disks": [{"path": "/i/debian.qcow2", "format": "qcow2", "readOnly": false, "cow": {"mode": "persistent", "maxDirtyBytes": 67108864, "blockSize": 65536, "storeTimeoutMs": 31000}}],
            "qemu": "/usr/bin/qemu-system-x86_64", "accel": "tcg",
            "network": {"policyDeadlineMs": 12000, "maxFlows": 256, "allowProtected": ["10.0.0.0/8"], "interceptSocket": "/tmp/x.sock"},
            "mounts": [{"tag": "sandbox-fs-0"}]
        })),
        ex::<Launched>("Launched", json!({"vmmPid": 4242, "backend": "qemu", "accel": "tcg"})),
        ex::<VmExited>("VmExited", json!({"exitCode": 0, "signal": null, "consoleTail": "reboot: Power down"})),
        ex::<HelperError>("HelperError", json!({"cause": "guest-protocol", "message": "Exit on channel 3 is not JSON", "frameKind": 0x17, "channel": 3})),
        ex::<BlockRequest>("BlockRequest", json!({"op": "read", "start": 12345, "count": 2})),
        ex::<BlockReply>("BlockReply", json!({"status": "ok", "blocks": [12345], "more": false})),
        ex::<Diagnostic>("Diagnostic", json!({"level": "warn", "source": "fs", "message": "lookup on mount 0: no answer within 30 s"})),
        ex::<NetRequest>("NetRequest", json!({"flow": 7, "proto": "dns", "srcIp": "10.0.2.15", "srcPort": 40000, "dstIp": "10.0.2.3", "dstPort": 53, "transport": "udp"})),
        ex::<NetReply>("NetReply", json!({"verdict": "answer"})),
        ex::<NetAudit>("NetAudit", json!({"kind": "protected", "proto": "tcp", "src": "10.0.2.15:40000", "dst": "127.0.0.1:22", "message": "denied before the policy"})),
        ex::<PortForward>("PortForward", json!({"guestPort": 8000, "hostPort": 0})),
        ex::<PortForwarded>("PortForwarded", json!({"status": "listening", "port": 41234})),
        ex::<Checkpoint>("Checkpoint", json!({"dir": "/tmp/snap-1"})),
        ex::<Checkpointed>("Checkpointed", json!({"status": "done", "pausedMs": 180, "ramBytes": 104857600, "diskBytes": 65536})),
        ex::<Resume>("Resume", json!({"restored": true, "entropy": "ab".repeat(64), "realtimeUs": 1_700_000_000_000_000u64, "hostname": "fork-1"})),
        ex::<Resumed>("Resumed", json!({"processes": 2, "warnings": []})),
        ex::<FsRequest>("FsRequest", json!({"mount": 0, "uid": 0, "gid": 0, "pid": 321, "call": {"op": "setattr", "node": 5, "set": {"mode": 420, "mtime": "now", "atime": 1700000000000.5}}})),
        ex::<FsReply>("FsReply", json!({"result": "created", "node": 5, "attr": attr, "fh": 3})),
        ex::<FsForget>("FsForget", json!({"mount": 0, "node": 5, "count": 1})),
    ]
}
