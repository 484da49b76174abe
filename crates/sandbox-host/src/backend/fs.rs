//! Starts one vhost-user-fs device per mount, each answering from Node's
//! JavaScript filesystem through the [`FsBridge`], or, for an `fs.hostDir`,
//! from the host directory itself ([`HostDir`]).
//!
//! QEMU connects to each device over a Unix socket in a directory only this
//! helper can enter (0700, random name); every device removes its socket as
//! soon as QEMU is connected, and the last one removes the directory.

use crate::diag::Diag;
use crate::error::HostError;
use crate::fs_bridge::NodeFs;
use crate::service::Service;
use sandbox_fs::device;
use sandbox_fs::host_dir::HostDir;
use sandbox_fs::CachePolicy;
use sandbox_protocol::{HostDirMount, Launch};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Starts a fresh vhost-user-fs device for a mount: at boot, and again each
/// time a checkpoint unplugged the old one (QEMU 7.2 cannot migrate them).
pub struct MountServer {
    tags: Vec<String>,
    /// Each mount's cache policy (its attribute timeout comes from the Launch).
    policies: Vec<CachePolicy>,
    /// The host directory the helper serves itself, per mount (`None`: Node's filesystem).
    host_dirs: Vec<Option<HostDirMount>>,
    files: Arc<Service>,
    diag: Diag,
    rt: tokio::runtime::Handle,
    /// The QEMU chardev id each mount's device uses now (`None`: none plugged).
    chardevs: std::sync::Mutex<Vec<Option<String>>>,
    plugs: std::sync::atomic::AtomicU64,
}

impl MountServer {
    pub fn new(l: &Launch, files: &Arc<Service>, diag: &Diag, rt: &tokio::runtime::Handle) -> Self {
        // A boot's devices are on the command line with `vfs<i>`; a restore plugs its own later.
        let booted = |i: usize| l.restore.is_none().then(|| crate::snapshot::mount_chardev_id(i));
        Self {
            tags: l.mounts.iter().map(|m| m.tag.to_string()).collect(),
            policies: l.mounts.iter().map(policy).collect(),
            host_dirs: l.mounts.iter().map(|m| m.host_dir.clone()).collect(),
            files: files.clone(),
            diag: diag.clone(),
            rt: rt.clone(),
            chardevs: std::sync::Mutex::new((0..l.mounts.len()).map(booted).collect()),
            plugs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The chardevs of the devices plugged now (to close once they are unplugged).
    pub fn chardev_ids(&self) -> Vec<String> {
        self.chardevs.lock().unwrap_or_else(|p| p.into_inner()).iter().flatten().cloned().collect()
    }

    /// A chardev id never used before in this VM, recorded as mount `i`'s.
    pub fn next_chardev_id(&self, i: usize) -> String {
        let n = self.plugs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let id = format!("{}p{n}", crate::snapshot::mount_chardev_id(i));
        if let Some(slot) = self.chardevs.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
            *slot = Some(id.clone());
        }
        id
    }

    /// The mounts' virtio-fs tags, in mount order.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// A new device for mount `i`, listening for QEMU on the returned socket
    /// in a directory of its own that only this helper can enter.
    pub fn serve(&self, i: usize) -> Result<PathBuf, String> {
        let tag = self.tags.get(i).ok_or_else(|| format!("there is no mount {i}"))?.clone();
        let index = u32::try_from(i).map_err(|_| format!("mount index {i}"))?;
        let dir = private_dir().map_err(|e| e.to_string())?;
        let d = self.diag.clone();
        let report = move |e: String| d.error(sandbox_protocol::DiagnosticSource::Fs, format!("virtio-fs device of mount {tag}: {e}"));
        let policy = self.policies.get(i).copied().unwrap_or_default();
        let name = format!("fs{i}");
        let served = match self.host_dirs.get(i).cloned().flatten() {
            // Served here, on the device thread: no request of this mount reaches Node.
            Some(h) => {
                let backend = Arc::new(HostDir::open(&h.path, h.read_only).map_err(|e| format!("mount {i}: {e}"))?);
                device::serve(&dir, &name, backend, policy, self.rt.clone(), report)
            }
            None => device::serve(&dir, &name, NodeFs::new(self.files.clone(), index), policy, self.rt.clone(), report),
        }
        .map_err(|e| format!("virtio-fs device for mount {i}: {e}"))?;
        // The socket disappears once QEMU connected; the directory goes when empty.
        std::thread::spawn(move || {
            for _ in 0..600 {
                if std::fs::remove_dir(&dir).is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Ok(served.socket)
    }
}

/// The default policy, with file attributes kept as long as the mount allows.
pub(crate) fn policy(m: &sandbox_protocol::FsMount) -> CachePolicy {
    let mut p = CachePolicy::default();
    if let Some(ms) = m.attr_cache_ms {
        p.attr_timeout = std::time::Duration::from_millis(u64::from(ms.get()));
    }
    p
}

fn private_dir() -> Result<PathBuf, HostError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_dir()).unwrap_or_else(std::env::temp_dir);
    let mut seed = [0u8; 8];
    // Unpredictable name; create() fails rather than reusing an existing path.
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let dir = base.join(format!("sandbox-fs-{}-{:016x}", std::process::id(), u64::from_le_bytes(seed)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| HostError::Setup(format!("private socket directory {}: {e}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn file_attributes_are_cached_only_as_long_as_the_mount_allows() {
        let m: sandbox_protocol::FsMount = serde_json::from_value(serde_json::json!({ "tag": "t" })).unwrap();
        assert_eq!(policy(&m).attr_timeout, Duration::ZERO, "default: never cached");
        let m: sandbox_protocol::FsMount = serde_json::from_value(serde_json::json!({ "tag": "t", "attrCacheMs": 1500 })).unwrap();
        let p = policy(&m);
        assert_eq!(p.attr_timeout, Duration::from_millis(1500));
        assert_eq!(p.entry_timeout, CachePolicy::default().entry_timeout);
        assert!(serde_json::from_value::<sandbox_protocol::FsMount>(serde_json::json!({ "tag": "t", "attrCacheMs": 60001 })).is_err());
    }
}
