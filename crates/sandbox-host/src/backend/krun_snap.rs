//! krun checkpoints across the helper/VMM-child boundary.
//!
//! libkrun's `VmControl` (pause, capture, resume) lives in the forked VMM
//! child, next to `Vm::enter()`. The helper asks it over a private socketpair:
//! one JSON line `{"dir": …}` per checkpoint, answered by one JSON line
//! `{"pausedMs", "ramBytes"}` or `{"error"}`. The helper bounds what it reads
//! (the child runs the device emulation a hostile guest talks to).

use crate::snapshot::Capture;
use sandbox_protocol::{BackendKind, Launch};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A request or reply line is far below this.
const MAX_LINE: u64 = 64 * 1024;
/// A checkpoint writes guest RAM to disk: generous, but never forever.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Request {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum Reply {
    #[serde(rename_all = "camelCase")]
    Done { paused_ms: u64, ram_bytes: u64 },
    Failed { error: String },
}

/// Why a krun lane booted like `l` cannot be checkpointed, if it cannot.
pub fn refusal(l: &Launch) -> Option<String> {
    if l.network.is_some() {
        return Some(
            "a krun lane with a network cannot be checkpointed yet: libkrun 0.1.42 cannot pause its \
             Unix-stream network device at a frame boundary. Checkpoint it on the qemu backend, or boot it without network.policy"
                .into(),
        );
    }
    if !l.mounts.is_empty() {
        return Some("a krun lane with mounts cannot be checkpointed yet (its virtio-fs bridge has no state capture): boot it without mounts".into());
    }
    if l.disks.iter().any(|d| !d.read_only || d.cow.is_some()) {
        return Some(
            "a krun lane with a writable root cannot be checkpointed yet (krun disks are written in place, so a snapshot \
             would share them with the lane): use a read-only root; /tmp and other tmpfs are captured with RAM"
                .into(),
        );
    }
    None
}

/// Why a krun restore of `l` cannot work, if it cannot: the devices must be
/// the ones a checkpoint accepts ([`refusal`]).
pub fn restore_refusal(l: &Launch) -> Option<String> {
    l.restore.as_ref()?;
    refusal(l).map(|why| format!("this krun snapshot cannot be restored as asked: {why}"))
}

/// What libkrun is told to restore from.
pub fn krun_restore(l: &Launch) -> Option<sandbox_krun::KrunRestore> {
    debug_assert!(l.backend == BackendKind::Krun);
    l.restore.as_ref().map(|r| sandbox_krun::KrunRestore { dir: PathBuf::from(r.dir.as_str()), memory: sandbox_krun::MemoryRestore::PrivateMapping })
}

/// The helper's side: asks the VMM child for checkpoints.
pub struct KrunCapture {
    /// The reader keeps what it buffered past a line for the next reply.
    child: Mutex<Option<(UnixStream, BufReader<UnixStream>)>>,
    refuse: Option<String>,
}

impl KrunCapture {
    pub fn new(child: UnixStream, refuse: Option<String>) -> Self {
        let pair = child.try_clone().ok().map(|reader| (child, BufReader::new(reader)));
        Self { child: Mutex::new(pair), refuse }
    }
}

impl Capture for KrunCapture {
    fn refusal(&self) -> Option<String> {
        self.refuse.clone()
    }

    fn pause_capture_resume(&self, dir: &Path) -> Result<(u128, u64, u64), String> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let (child, reader) = guard.as_mut().ok_or("the krun VMM's checkpoint channel could not be opened")?;
        let gone = |e: std::io::Error| format!("the krun VMM did not answer the checkpoint ({e})");
        child.set_read_timeout(Some(CAPTURE_TIMEOUT)).map_err(gone)?;
        let mut line = serde_json::to_vec(&Request { dir: dir.to_path_buf() }).map_err(|e| e.to_string())?;
        line.push(b'\n');
        child.write_all(&line).map_err(gone)?;
        let mut reply = String::new();
        let n = reader.take(MAX_LINE).read_line(&mut reply).map_err(gone)?;
        if n == 0 || !reply.ends_with('\n') {
            return Err("the krun VMM closed its checkpoint channel (did it exit?) or sent an over-long reply".into());
        }
        match serde_json::from_str::<Reply>(&reply) {
            Ok(Reply::Done { paused_ms, ram_bytes }) => Ok((u128::from(paused_ms), ram_bytes, 0)),
            Ok(Reply::Failed { error }) => Err(error),
            Err(e) => Err(format!("the krun VMM sent an unreadable checkpoint reply ({e})")),
        }
    }
}

/// The VMM child's side: serves checkpoint requests until the helper hangs
/// up, with `capture` (`sandbox_krun::checkpoint` on the VM's control handle).
pub fn serve<F>(sock: UnixStream, capture: F)
where
    F: Fn(&Path) -> Result<(u64, u64), String>,
{
    let Ok(mut out) = sock.try_clone() else { return };
    let mut input = BufReader::new(sock);
    loop {
        let mut line = String::new();
        match (&mut input).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::Failed { error: format!("bad checkpoint request: {e}") },
            Ok(req) => match capture(&req.dir) {
                Ok((paused_ms, ram_bytes)) => Reply::Done { paused_ms, ram_bytes },
                Err(error) => Reply::Failed { error },
            },
        };
        let Ok(mut bytes) = serde_json::to_vec(&reply) else { return };
        bytes.push(b'\n');
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn launch(extra: serde_json::Value) -> Launch {
        let mut l = json!({
            "backend": "krun", "cpus": 1, "memoryMib": 512, "kernel": "", "krunfw": "/fw", "initRoot": "/r",
            "cmdline": [], "mounts": [], "disks": [{ "path": "/root.ext4", "format": "raw", "readOnly": true }],
        });
        for (k, v) in extra.as_object().unwrap() {
            l[k] = v.clone();
        }
        serde_json::from_value(l).unwrap()
    }

    #[test]
    fn only_read_only_lanes_without_network_or_mounts_can_be_captured() {
        assert_eq!(refusal(&launch(json!({}))), None);
        let net = refusal(&launch(json!({ "network": { "policyDeadlineMs": 1000, "maxFlows": 4, "allowProtected": [] } }))).unwrap();
        assert!(net.contains("network") && net.contains("qemu"), "{net}");
        let m = refusal(&launch(json!({ "mounts": [{ "tag": "sbxfs0" }] }))).unwrap();
        assert!(m.contains("mounts"), "{m}");
        let w = refusal(&launch(json!({ "disks": [{ "path": "/root.ext4", "format": "raw", "readOnly": false }] }))).unwrap();
        assert!(w.contains("writable root"), "{w}");
        let cow = json!({ "mode": "ephemeral", "maxDirtyBytes": 1 << 26, "blockSize": 65536 });
        assert!(refusal(&launch(json!({ "disks": [{ "path": "/r", "format": "raw", "readOnly": true, "cow": cow }] }))).is_some());
    }

    #[test]
    fn a_restore_is_checked_like_a_checkpoint_and_maps_the_snapshot_privately() {
        let plain = launch(json!({}));
        assert_eq!(restore_refusal(&plain), None, "not a restore");
        assert!(krun_restore(&plain).is_none());
        let r = launch(json!({ "restore": { "dir": "/snaps/a", "hostname": "h" } }));
        assert_eq!(restore_refusal(&r), None);
        let k = krun_restore(&r).unwrap();
        assert_eq!(k.dir, PathBuf::from("/snaps/a"));
        assert_eq!(k.memory, sandbox_krun::MemoryRestore::PrivateMapping);
        let bad = launch(json!({ "restore": { "dir": "/snaps/a", "hostname": "h" }, "mounts": [{ "tag": "t" }] }));
        assert!(restore_refusal(&bad).unwrap().contains("cannot be restored"));
    }

    #[test]
    fn the_helper_gets_the_childs_answer() {
        let (helper, child) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            serve(child, |dir| if dir == Path::new("/ok") { Ok((12, 4096)) } else { Err(format!("cannot write {}", dir.display())) })
        });
        let cap = KrunCapture::new(helper, None);
        assert_eq!(cap.refusal(), None);
        assert_eq!(cap.pause_capture_resume(Path::new("/ok")).unwrap(), (12, 4096, 0));
        assert_eq!(cap.pause_capture_resume(Path::new("/full")).unwrap_err(), "cannot write /full");
        drop(cap);
        server.join().unwrap();
    }

    #[test]
    fn a_dead_or_babbling_child_is_an_error_not_a_hang() {
        let (helper, child) = UnixStream::pair().unwrap();
        drop(child);
        let e = KrunCapture::new(helper, None).pause_capture_resume(Path::new("/x")).unwrap_err();
        assert!(e.contains("krun VMM"), "{e}");

        let (helper, mut child) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let _ = child.read(&mut buf);
            let _ = child.write_all(b"{\"pausedMs\": \"soon\"}\n");
            // Then more than a line may hold, without a newline, and hang up.
            let _ = child.write_all(&[b'x'; 64 * 1024 + 10]);
        });
        let cap = KrunCapture::new(helper, None);
        let e = cap.pause_capture_resume(Path::new("/x")).unwrap_err();
        assert!(e.contains("unreadable"), "{e}");
        let e = cap.pause_capture_resume(Path::new("/x")).unwrap_err();
        assert!(e.contains("krun VMM"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn the_child_answers_garbage_with_an_error_and_keeps_serving() {
        let (mut helper, child) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(child, |_| Ok((1, 2))));
        helper.write_all(b"not json\n{\"dir\":\"/d\"}\n").unwrap();
        let mut r = BufReader::new(helper.try_clone().unwrap());
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        assert!(a.contains("bad checkpoint request"), "{a}");
        let mut b = String::new();
        r.read_line(&mut b).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&b).unwrap(), Reply::Done { paused_ms: 1, ram_bytes: 2 });
        drop(helper);
        drop(r);
        server.join().unwrap();
    }

    #[test]
    fn a_refused_capture_says_why() {
        let (helper, _child) = UnixStream::pair().unwrap();
        let cap = KrunCapture::new(helper, Some("because".into()));
        assert_eq!(cap.refusal().as_deref(), Some("because"));
    }
}
