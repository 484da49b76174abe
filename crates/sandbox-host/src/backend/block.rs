//! Serves copy-on-write disks to the VMM over NBD from the helper.
//!
//! Each disk gets its own thread and single-threaded runtime: base-image reads
//! and decompression block, and must never stall the control relay.

use super::Services;
use crate::block_store::NodeStore;
use crate::error::HostError;
use sandbox_block::{nbd, BaseImage, CowConfig, CowDisk, CowMode, Qcow2Base, RawBase, SavedLayer};
use sandbox_protocol::{self as proto, DiagnosticSource, Disk, DiskFormat};
use crate::snapshot::DiskHandle;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Opens the base image, starts the NBD server and returns the VMM's end of
/// the connection. The server ends when the VMM closes its end.
/// A `persistent` disk keeps its dirty blocks in Node's block store.
/// `saved`: a snapshot's `disk<i>.blocks`, read (lazily) between the base
/// image and the overlay of a restored, ephemeral disk.
/// An ephemeral disk returns once its overlay is open or failed.
pub fn serve_cow(disk: &Disk, services: &Services, saved: Option<&Path>) -> Result<(UnixStream, DiskHandle, Option<Arc<SavedLayer>>), HostError> {
    let Some(cow) = disk.cow.clone() else {
        return Err(HostError::InvalidLaunch("serve_cow called for a disk without cow".into()));
    };
    let path = Path::new(&disk.path);
    let base: Arc<dyn BaseImage> = match disk.format {
        DiskFormat::Qcow2 => Arc::new(Qcow2Base::open(path, disk.path.clone()).map_err(|e| base_err(disk, e))?),
        DiskFormat::Raw => Arc::new(RawBase::open(path, disk.path.clone()).map_err(|e| base_err(disk, e))?),
    };
    let layer = match saved {
        Some(_) if cow.mode == proto::CowMode::Persistent => {
            return Err(HostError::InvalidLaunch("a disk restored from a snapshot is ephemeral, not persistent".into()));
        }
        Some(file) => Some(Arc::new(SavedLayer::open(file, u64::from(cow.block_size.get()), base.clone()).map_err(|e| HostError::InvalidLaunch(e.to_string()))?)),
        None => None,
    };
    let base: Arc<dyn BaseImage> = match &layer {
        Some(layer) => layer.clone(),
        None => base,
    };
    let (ours, vmm_end) = UnixStream::pair().map_err(|e| HostError::Setup(format!("socketpair for NBD: {e}")))?;
    ours.set_nonblocking(true).map_err(|e| HostError::Setup(format!("nonblocking NBD socket: {e}")))?;
    let config = CowConfig { block_size: cow.block_size.get(), max_dirty_bytes: cow.max_dirty_bytes.get(), ..CowConfig::default() };
    let mode = match cow.mode {
        proto::CowMode::Persistent => {
            let Some(store) = &services.block else {
                return Err(HostError::InvalidLaunch("a persistent copy-on-write disk without a block store service".into()));
            };
            CowMode::Persistent(Arc::new(NodeStore::new(store.clone(), cow.block_size.get())))
        }
        proto::CowMode::Ephemeral => CowMode::Ephemeral,
    };
    let name = disk.path.clone();
    let diag = services.diag.clone();
    let handle: DiskHandle = Arc::new(OnceLock::new());
    let opened = handle.clone();
    let (ready_tx, ready) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
    std::thread::Builder::new()
        .name("sandbox-nbd".into())
        .spawn(move || {
            let report = |what: String| diag.error(DiagnosticSource::Block, format!("{what}; the guest's disk {name} stops answering"));
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return report(format!("NBD runtime: {e}")),
            };
            rt.block_on(async move {
                let disk = match CowDisk::new(base, config, mode).await {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("copy-on-write disk: {e}")));
                        return;
                    }
                };
                let _ = opened.set(disk.clone());
                let _ = ready_tx.send(Ok(()));
                let stream = match tokio::net::UnixStream::from_std(ours) {
                    Ok(s) => s,
                    Err(e) => return report(format!("NBD socket: {e}")),
                };
                // The VMM closing its end (VM gone) ends the server without an error.
                if let Err(e) = nbd::serve(stream, &disk).await {
                    report(format!("NBD server ended: {e}"));
                }
            });
        })
        .map_err(|e| HostError::Setup(format!("NBD thread: {e}")))?;
    // A persistent overlay lists Node's store as it opens, which needs the
    // relay running: only an ephemeral one is waited for.
    if cow.mode == proto::CowMode::Persistent {
        return Ok((vmm_end, handle, layer));
    }
    match ready.recv() {
        Ok(Ok(())) => Ok((vmm_end, handle, layer)),
        Ok(Err(message)) => Err(HostError::Launch { backend: "qemu", message }),
        Err(_) => Err(HostError::Setup("the NBD thread ended before opening its disk".into())),
    }
}

fn base_err(disk: &Disk, e: impl std::fmt::Display) -> HostError {
    HostError::Launch { backend: "qemu", message: format!("cannot open base image {}: {e}", disk.path) }
}
