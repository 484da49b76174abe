//! Serves copy-on-write disks to the VMM over NBD from the helper.
//!
//! Each disk gets its own thread and single-threaded runtime: base-image reads
//! and decompression block, and must never stall the control relay.

use crate::error::HostError;
use crate::node_store::{Bridge, NodeStore};
use sandbox_block::{nbd, BaseImage, CowConfig, CowDisk, CowMode, Qcow2Base, RawBase};
use sandbox_protocol::Disk;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

/// Opens the base image, starts the NBD server and returns the VMM's end of
/// the connection. The server ends when the VMM closes its end.
/// A `persistent` disk keeps its dirty blocks in Node's block store via `bridge`.
pub fn serve_cow(disk: &Disk, bridge: &Arc<Bridge>) -> Result<UnixStream, HostError> {
    let Some(cow) = disk.cow.clone() else {
        return Err(HostError::InvalidLaunch("serve_cow called for a disk without cow".into()));
    };
    let path = Path::new(&disk.path);
    let base: Arc<dyn BaseImage> = match disk.format.as_str() {
        "qcow2" => Arc::new(Qcow2Base::open(path, disk.path.clone()).map_err(|e| base_err(disk, e))?),
        _ => Arc::new(RawBase::open(path, disk.path.clone()).map_err(|e| base_err(disk, e))?),
    };
    let (ours, vmm_end) = UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair for NBD: {e}")))?;
    ours.set_nonblocking(true).map_err(|e| HostError::Setup(format!("nonblocking NBD socket: {e}")))?;
    let config = CowConfig { block_size: cow.block_size, max_dirty_bytes: cow.max_dirty_bytes, ..CowConfig::default() };
    let mode = match cow.mode.as_str() {
        "persistent" => CowMode::Persistent(Arc::new(NodeStore::new(bridge.clone(), cow.block_size))),
        _ => CowMode::Ephemeral,
    };
    let name = disk.path.clone();
    std::thread::Builder::new()
        .name("sandbox-nbd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("sandbox-host: NBD runtime for {name}: {e}"),
            };
            rt.block_on(async move {
                let disk = match CowDisk::new(base, config, mode).await {
                    Ok(d) => d,
                    Err(e) => return eprintln!("sandbox-host: copy-on-write disk over {name}: {e}"),
                };
                let stream = match tokio::net::UnixStream::from_std(ours) {
                    Ok(s) => s,
                    Err(e) => return eprintln!("sandbox-host: NBD socket: {e}"),
                };
                if let Err(e) = nbd::serve(stream, &disk).await {
                    eprintln!("sandbox-host: NBD server for {name} ended: {e}");
                }
            });
        })
        .map_err(|e| HostError::Setup(format!("NBD thread: {e}")))?;
    Ok(vmm_end)
}

fn base_err(disk: &Disk, e: impl std::fmt::Display) -> HostError {
    HostError::Launch { backend: "qemu", message: format!("cannot open base image {}: {e}", disk.path) }
}
