//! Starts one vhost-user-fs device per mount, each answering from Node's
//! JavaScript filesystem through the [`FsBridge`].
//!
//! QEMU connects to each device over a Unix socket in a directory only this
//! helper can enter (0700, random name); every device removes its socket as
//! soon as QEMU is connected, and the last one removes the directory.

use crate::diag::Diag;
use crate::error::HostError;
use crate::fs_bridge::NodeFs;
use crate::service::Service;
use sandbox_fs::device;
use sandbox_fs::CachePolicy;
use sandbox_protocol::Launch;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

/// The socket of each mount's device, in mount order (empty without mounts).
/// Device tasks run on `rt`, the relay's runtime.
pub fn serve_mounts(l: &Launch, files: &Arc<Service>, diag: &Diag, rt: &tokio::runtime::Handle) -> Result<Vec<PathBuf>, HostError> {
    if l.mounts.is_empty() {
        return Ok(Vec::new());
    }
    let dir = private_dir()?;
    let mut sockets = Vec::with_capacity(l.mounts.len());
    for (i, mount) in (0u32..).zip(&l.mounts) {
        let d = diag.clone();
        let tag = mount.tag.to_string();
        let report = move |e: String| d.error(sandbox_protocol::DiagnosticSource::Fs, format!("virtio-fs device of mount {tag}: {e}"));
        let served = device::serve(&dir, &format!("fs{i}"), NodeFs::new(files.clone(), i), CachePolicy::default(), rt.clone(), report)
            .map_err(|e| HostError::Setup(format!("virtio-fs device for mount {i}: {e}")))?;
        sockets.push(served.socket);
    }
    let cleanup = dir.clone();
    // Sockets disappear once QEMU connected; the directory goes when empty.
    std::thread::spawn(move || {
        for _ in 0..600 {
            if std::fs::remove_dir(&cleanup).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    Ok(sockets)
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
