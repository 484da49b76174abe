//! Checkpoint and restore of a VM. The guest-side protocol (quiesce, capture,
//! resume) is the same on both backends; what a backend captures is behind
//! [`Capture`]: [`Capturable`] here for QEMU, `backend::krun_snap` for krun.
//!
//! QEMU:
//! Guest RAM is a memfd the helper creates and QEMU maps shared
//! (`memory-backend-file`, `share=on`), so a checkpoint migrates only device
//! state (`x-ignore-shared`) while the helper copies the RAM itself, sparse,
//! into the snapshot. A restore maps that file privately (`share=off`):
//! forks of one snapshot share its pages copy-on-write through the page cache.
//!
//! Around the capture the control channel is quiesced: the helper queues
//! `Quiesce` after Node's frames and holds the rest; the guest answers
//! `Quiesced` and writes nothing more. Both directions are then at a frame
//! boundary, which is where a restored guest resumes when it gets `Resume`.
//!
//! A snapshot directory holds `state` (QEMU's device state), `ram` and one
//! `disk<i>.blocks` per copy-on-write disk (`disk_capture.rs`): an ephemeral
//! root's changes, or a `rootfs.cow` root's stored and dirty blocks.

use crate::link::NodeTx;
use crate::qmp::{self, LazyQmp, Qmp};
use crate::relay::{GuestLink, GuestOut, NodeRequestHandler};
use crate::disk_capture::{CaptureDisk, PinnedDisk};
use sandbox_block::CowDisk;
use sandbox_protocol::{self as proto, JsU64, Text};
use serde_json::json;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the guest may take to acknowledge `Quiesce` or `Resume`.
const GUEST_ANSWER: Duration = Duration::from_secs(10);
/// Device state is a few MiB; a migration that takes longer is broken.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// RAM is copied in chunks this big; all-zero chunks stay holes.
const RAM_CHUNK: usize = 1 << 20;

const ZERO: JsU64 = match JsU64::new(0) {
    Some(z) => z,
    None => panic!("0 is a JsU64"),
};

pub const STATE_FILE: &str = "state";
pub const RAM_FILE: &str = "ram";

pub fn blocks_file(disk: usize) -> String {
    format!("disk{disk}.blocks")
}

/// A copy-on-write disk's overlay, set once its NBD thread opened it.
pub type DiskHandle = Arc<OnceLock<CowDisk>>;

/// What a backend does for a checkpoint once the guest is quiesced.
pub trait Capture: Send + Sync {
    /// Why this VM cannot be checkpointed, if it cannot (asked before the guest is quiesced).
    fn refusal(&self) -> Option<String>;
    /// Pauses the VM, writes its state into `dir` and lets it run again, even
    /// when the capture failed. Returns (ms paused, RAM bytes, disk bytes written).
    fn pause_capture_resume(&self, dir: &Path) -> Result<(u128, u64, u64), String>;
    /// After a capture, once the guest runs again (called whatever happened):
    /// writes what could wait for that into `dir` (`None`: the checkpoint
    /// failed, only let go of it); returns the disk bytes written.
    fn finish(&self, _dir: Option<&Path>) -> Result<u64, String> {
        Ok(0)
    }
}

/// What a running QEMU VM offers for checkpoints.
pub struct Capturable {
    pub qmp: Mutex<LazyQmp>,
    /// The guest RAM memfd; `None` for a restored VM (its RAM is private).
    pub ram: Option<File>,
    /// Every copy-on-write disk.
    pub disks: Vec<CaptureDisk>,
    /// The disks pinned by the last capture, until `finish` writes them out.
    pub pinned: Mutex<Vec<PinnedDisk>>,
    /// Why this VM cannot be checkpointed, if it cannot.
    pub refuse: Option<String>,
    /// The virtio-fs mounts, unplugged around each capture and plugged back.
    pub mounts: Option<crate::backend::fs::MountServer>,
}

/// QEMU id of mount `i`'s PCIe root port: its virtio-fs device sits behind
/// one so it can be unplugged (devices on the q35 root bus cannot be).
pub fn mount_port_id(i: usize) -> String {
    format!("sbxrp{i}")
}

/// QEMU id of mount `i`'s vhost-user-fs device.
pub fn mount_device_id(i: usize) -> String {
    format!("sbxfs{i}")
}

/// QEMU id of mount `i`'s vhost-user socket.
pub fn mount_chardev_id(i: usize) -> String {
    format!("vfs{i}")
}

/// How long the guest may take to let go of its virtio-fs devices (ACPI eject).
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest's PCIe hotplug driver ignores a slot after powering it
/// off (Linux pciehp: 1 s, then pending presence changes are dropped), plus margin.
const SLOT_SETTLE: Duration = Duration::from_millis(1500);

/// Unplugs every mount's device (the guest init released the mounts before
/// it acknowledged `Quiesce`) and closes its socket: QEMU 7.2 refuses to
/// migrate vhost-user-fs. Waits until QEMU has really removed them.
fn unplug_mounts(qmp: &mut Qmp, count: usize) -> Result<(), String> {
    for i in 0..count {
        qmp.execute("device_del", json!({ "id": mount_device_id(i) }))?;
    }
    let deadline = Instant::now() + UNPLUG_TIMEOUT;
    loop {
        let devices = qmp.execute("qom-list", json!({ "path": "/machine/peripheral" }))?;
        let names: Vec<&str> = devices.as_array().map(|a| a.iter().filter_map(|d| d.get("name").and_then(serde_json::Value::as_str)).collect()).unwrap_or_default();
        let left = (0..count).filter(|i| names.contains(&mount_device_id(*i).as_str())).count();
        if left == 0 {
            // QEMU drops a device when the guest powers its slot off, but the
            // guest's pciehp then sleeps 1 s and discards the presence changes
            // that arrived meanwhile: a device plugged back in that window (right
            // after the capture, or in a fork of it) would never be enabled.
            std::thread::sleep(SLOT_SETTLE);
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the guest did not release {left} virtio-fs device(s) within {} s (hot-unplug needs the guest kernel's ACPI eject)", UNPLUG_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Closes the sockets of unplugged devices. QEMU frees a device (and lets go
/// of its chardev) a moment after it left the tree: retried briefly; one that
/// stays busy is left open (each plug uses a new chardev id).
fn close_mount_sockets(qmp: &mut Qmp, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for id in ids {
        while qmp.execute("chardev-remove", json!({ "id": id })).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Plugs a fresh device in for every mount, each on its root port; the guest
/// init mounts them again when it gets `Resume`.
pub fn plug_mounts(qmp: &mut Qmp, mounts: &crate::backend::fs::MountServer) -> Result<(), String> {
    let old = mounts.chardev_ids();
    close_mount_sockets(qmp, &old);
    for (i, tag) in mounts.tags().iter().enumerate() {
        let socket = mounts.serve(i)?;
        let chardev = mounts.next_chardev_id(i);
        let path = socket.to_str().ok_or_else(|| format!("socket path {} is not UTF-8", socket.display()))?;
        qmp.execute(
            "chardev-add",
            json!({ "id": chardev, "backend": { "type": "socket", "data": { "addr": { "type": "unix", "data": { "path": path } }, "server": false } } }),
        )?;
        qmp.execute(
            "device_add",
            json!({ "driver": "vhost-user-fs-pci", "id": mount_device_id(i), "bus": mount_port_id(i), "chardev": chardev, "tag": tag, "queue-size": sandbox_fs::device::QUEUE_SIZE }),
        )?;
    }
    Ok(())
}

/// Serves `Checkpoint` requests, one at a time.
pub struct Checkpointer {
    cap: Arc<dyn Capture>,
    link: Arc<GuestLink>,
    tx: NodeTx,
    busy: Arc<AtomicBool>,
}

impl Checkpointer {
    pub fn new(cap: Arc<dyn Capture>, link: Arc<GuestLink>, tx: NodeTx) -> Self {
        Self { cap, link, tx, busy: Arc::new(AtomicBool::new(false)) }
    }
}

impl NodeRequestHandler for Checkpointer {
    fn handle(&self, channel: u32, payload: Vec<u8>) {
        let (cap, link, tx, busy) = (self.cap.clone(), self.link.clone(), self.tx.clone(), self.busy.clone());
        // QMP and file copies block: a thread of its own, off the relay.
        let _ = std::thread::Builder::new().name("sandbox-checkpoint".into()).spawn(move || {
            let result = match proto::decode::<proto::Checkpoint>(&payload) {
                Err(e) => Err(format!("bad Checkpoint request: {e}")),
                Ok(_) if busy.swap(true, Ordering::AcqRel) => Err("a checkpoint of this lane is already being taken".into()),
                Ok(req) => {
                    let r = checkpoint(cap.as_ref(), &link, Path::new(req.dir.as_str()));
                    busy.store(false, Ordering::Release);
                    r
                }
            };
            let msg = match result {
                Ok(done) => done,
                Err(error) => proto::Checkpointed::Failed { error: Text::truncated(error) },
            };
            let _ = tx.blocking_send(proto::encode(channel, &msg));
        });
    }
}

fn checkpoint(cap: &dyn Capture, link: &GuestLink, dir: &Path) -> Result<proto::Checkpointed, String> {
    if let Some(why) = cap.refusal() {
        return Err(why);
    }
    if !dir.is_dir() {
        return Err(format!("snapshot directory {} does not exist", dir.display()));
    }
    // Quiesce: everything Node sent so far reaches the guest, the rest waits.
    let quiesced = link.expect_quiesced();
    let (release, hold) = tokio::sync::oneshot::channel();
    link.send(GuestOut::Own(proto::encode_raw(proto::Kind::Quiesce, 0, &[])));
    link.send(GuestOut::Hold(hold));
    let resumed = link.expect_resumed();
    let outcome = (|| -> Result<(u128, u64, u64), String> {
        quiesced.recv_timeout(GUEST_ANSWER).map_err(|_| format!("the guest did not acknowledge the checkpoint within {} s", GUEST_ANSWER.as_secs()))?;
        cap.pause_capture_resume(dir)
    })();
    let resume = proto::Resume { restored: false, entropy: Text::truncated(String::new()), realtime_us: ZERO, hostname: None, ca_cert_pem: None };
    let _ = release.send(proto::encode(0, &resume));
    let resumed = outcome.and_then(|captured| {
        resumed.recv_timeout(GUEST_ANSWER).map_err(|_| format!("the guest did not resume within {} s of the checkpoint", GUEST_ANSWER.as_secs()))?;
        Ok(captured)
    });
    // Always: a capture may hold disks pinned (their write-back waits for it).
    let finished = cap.finish(resumed.is_ok().then_some(dir));
    let (paused_ms, ram_bytes, disk_bytes) = resumed?;
    let disk_bytes = disk_bytes + finished?;
    // Milliseconds and byte counts of one VM stay far below 2^53.
    let js = |v: u128| JsU64::new(u64::try_from(v).unwrap_or(u64::MAX).min(proto::JS_SAFE_MAX)).expect("clamped to the range");
    Ok(proto::Checkpointed::Done { paused_ms: js(paused_ms), ram_bytes: js(ram_bytes.into()), disk_bytes: js(disk_bytes.into()) })
}

impl Capture for Capturable {
    fn refusal(&self) -> Option<String> {
        self.refuse.clone()
    }

    fn pause_capture_resume(&self, dir: &Path) -> Result<(u128, u64, u64), String> {
        // A fork's RAM is a private mapping of its snapshot (`None`): QEMU puts it in the stream.
        let ram = self.ram.as_ref();
        let mut monitor = self.qmp.lock().unwrap_or_else(|p| p.into_inner());
        let qmp = monitor.get()?;
        let paused = Instant::now();
        let mounts = self.mounts.as_ref().filter(|m| !m.tags().is_empty());
        let unplugged = mounts.map_or(Ok(()), |m| unplug_mounts(qmp, m.tags().len()));
        let captured = unplugged.and_then(|()| {
            qmp.execute("stop", json!({}))?;
            let ram_bytes = capture(qmp, ram, dir)?;
            *self.pinned.lock().unwrap_or_else(|p| p.into_inner()) = crate::disk_capture::pin_all(&self.disks)?;
            Ok(ram_bytes)
        });
        // The lane goes on whatever happened to the capture, with its mounts back.
        let cont = qmp.execute("cont", json!({}));
        let plugged = mounts.map_or(Ok(()), |m| plug_mounts(qmp, m));
        let paused_ms = paused.elapsed().as_millis();
        let ram_bytes = captured?;
        cont?;
        plugged.map_err(|e| format!("the mounts could not be plugged back after the capture: {e}"))?;
        Ok((paused_ms, ram_bytes, 0))
    }

    fn finish(&self, dir: Option<&Path>) -> Result<u64, String> {
        let pinned = std::mem::take(&mut *self.pinned.lock().unwrap_or_else(|p| p.into_inner()));
        // Dropping a pin releases the disk's write-back.
        dir.map_or(Ok(0), |dir| crate::disk_capture::save_all(pinned, dir))
    }
}

/// With the VM stopped: device state through QEMU, RAM by the helper; returns the RAM bytes.
///
/// A fork (RAM privately mapped from its snapshot, `ram` is `None`) is not
/// skipped by `x-ignore-shared`: its RAM travels in the device-state stream,
/// and the snapshot's `ram` file is an all-hole file of the right size that
/// the restore maps and the incoming stream fills.
fn capture(qmp: &mut Qmp, ram: Option<&File>, dir: &Path) -> Result<u64, String> {
    let state = dir.join(STATE_FILE);
    qmp.execute("migrate-set-capabilities", json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }))?;
    qmp.execute("migrate-set-parameters", json!({ "max-bandwidth": i64::MAX }))?;
    qmp.execute("migrate", json!({ "uri": format!("exec:cat > {}", qmp::shell_path(&state)?) }))?;
    qmp.wait_migration(MIGRATION_TIMEOUT)?;
    let ram_bytes = match ram {
        Some(ram) => copy_ram(ram, &dir.join(RAM_FILE)).map_err(|e| format!("copying guest RAM into {}: {e}", dir.display()))?,
        None => {
            let summary = qmp.execute("query-memory-size-summary", json!({}))?;
            let size = summary.get("base-memory").and_then(serde_json::Value::as_u64).ok_or_else(|| format!("QEMU reported no base memory size ({summary})"))?;
            let holes = File::create(dir.join(RAM_FILE)).and_then(|f| f.set_len(size).and_then(|()| f.sync_all()));
            holes.map_err(|e| format!("creating the RAM file in {}: {e}", dir.display()))?;
            std::fs::metadata(&state).map_err(|e| format!("{}: {e}", state.display()))?.len()
        }
    };
    Ok(ram_bytes)
}

/// Copies RAM leaving all-zero chunks as holes; returns the bytes written.
fn copy_ram(src: &File, dst: &Path) -> std::io::Result<u64> {
    let size = src.metadata()?.len();
    let out = File::create(dst)?;
    out.set_len(size)?;
    let mut buf = vec![0u8; RAM_CHUNK];
    let mut written = 0;
    let mut off = 0;
    while off < size {
        let n = usize::try_from((size - off).min(RAM_CHUNK as u64)).unwrap_or(RAM_CHUNK);
        src.read_exact_at(&mut buf[..n], off)?;
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], off)?;
            written += n as u64;
        }
        off += n as u64;
    }
    out.sync_all()?;
    Ok(written)
}

/// Loads device state into a QEMU started with `-incoming defer` and waits
/// until the VM runs.
pub fn restore(qmp: &mut Qmp, dir: &Path) -> Result<(), String> {
    let state = dir.join(STATE_FILE);
    if !state.is_file() {
        return Err(format!("snapshot {} has no device state file", dir.display()));
    }
    qmp.execute("migrate-set-capabilities", json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }))?;
    qmp.execute("migrate-incoming", json!({ "uri": format!("exec:cat {}", qmp::shell_path(&state)?) }))?;
    qmp.wait_migration(MIGRATION_TIMEOUT)?;
    // The source was stopped for the capture, and its run state travels with
    // the migration: the restored VM arrives paused until told to go on.
    qmp.execute("cont", json!({}))?;
    qmp.wait_running(GUEST_ANSWER)
}

/// The first frame a restored guest gets: fresh entropy, clock, hostname.
pub fn resume_frame(restore: &proto::Restore) -> Result<Vec<u8>, String> {
    let mut entropy = [0u8; 64];
    getrandom(&mut entropy)?;
    let hex: String = entropy.iter().map(|b| format!("{b:02x}")).collect();
    let realtime_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_micros();
    let msg = proto::Resume {
        restored: true,
        entropy: Text::truncated(hex),
        realtime_us: JsU64::new(u64::try_from(realtime_us).unwrap_or(u64::MAX)).ok_or("the host clock is beyond 2^53 µs")?,
        hostname: Some(restore.hostname.clone()),
        ca_cert_pem: restore.ca_cert_pem.clone(),
    };
    Ok(proto::encode(0, &msg))
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len - filled` bytes into the rest of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            return Err(format!("getrandom: {}", std::io::Error::last_os_error()));
        }
        filled += n as usize;
    }
    Ok(())
}

/// Copies a snapshot's RAM file into a fresh guest RAM memfd (a restore
/// with mounts: vhost-user devices need RAM QEMU maps shared), leaving
/// all-zero chunks as holes.
pub fn fill_ram(src: &Path, dst: &File) -> std::io::Result<()> {
    let src = File::open(src)?;
    let size = src.metadata()?.len();
    let mut buf = vec![0u8; RAM_CHUNK];
    let mut off = 0;
    while off < size {
        let n = usize::try_from((size - off).min(RAM_CHUNK as u64)).unwrap_or(RAM_CHUNK);
        src.read_exact_at(&mut buf[..n], off)?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], off)?;
        }
        off += n as u64;
    }
    Ok(())
}

/// The snapshot file a restore maps as guest RAM, checked against the launch.
pub fn ram_path(dir: &Path, memory_mib: u32) -> Result<PathBuf, String> {
    let p = dir.join(RAM_FILE);
    let len = std::fs::metadata(&p).map_err(|e| format!("snapshot RAM file {}: {e}", p.display()))?.len();
    if len != u64::from(memory_mib) << 20 {
        return Err(format!("snapshot RAM file {} holds {len} bytes, the lane has {memory_mib} MiB: boot it with the memory it was taken with", p.display()));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_copy_keeps_holes() {
        let dir = std::env::temp_dir().join(format!("sbx-ram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let f = File::create(&src).unwrap();
        f.set_len(4 * RAM_CHUNK as u64).unwrap();
        f.write_all_at(b"hello", 2 * RAM_CHUNK as u64 + 5).unwrap();
        let n = copy_ram(&File::open(&src).unwrap(), &dir.join("dst")).unwrap();
        assert_eq!(n, RAM_CHUNK as u64, "only the chunk with data is written");
        let copy = std::fs::read(dir.join("dst")).unwrap();
        assert_eq!(copy.len(), 4 * RAM_CHUNK);
        assert_eq!(&copy[2 * RAM_CHUNK + 5..2 * RAM_CHUNK + 10], b"hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
