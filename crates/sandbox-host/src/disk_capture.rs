//! The root disks' part of a checkpoint.
//!
//! While the VM is paused each copy-on-write disk is pinned (a copy of the
//! blocks only memory holds, the list of blocks only the store holds, and
//! write-back held so the store does not change). Everything else happens
//! after the guest runs again: the pinned blocks, the blocks of the snapshot
//! a fork was restored from, and the store's blocks go into `disk<i>.blocks`,
//! and the pin is released.

use crate::snapshot::DiskHandle;
use sandbox_block::{BlocksWriter, Pinned, SavedLayer};
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Blocks per store read while copying a pinned store (4 MiB at 64 KiB).
const READ_RUN: u64 = 64;
/// Store reads in flight at once while copying.
const READS_IN_FLIGHT: usize = 4;

/// A copy-on-write disk a checkpoint captures.
pub struct CaptureDisk {
    /// Position among the launch's disks (names its `disk<i>.blocks`).
    pub index: usize,
    pub handle: DiskHandle,
    /// The saved blocks this disk was restored over (a fork), if any.
    pub layer: Option<Arc<SavedLayer>>,
}

/// A disk pinned at the capture, waiting to be written out.
pub struct PinnedDisk {
    index: usize,
    pin: Arc<Pinned>,
    layer: Option<Arc<SavedLayer>>,
    runtime: Option<tokio::runtime::Handle>,
}

/// With the VM paused: pins every disk.
pub fn pin_all(disks: &[CaptureDisk]) -> Result<Vec<PinnedDisk>, String> {
    disks
        .iter()
        .map(|d| {
            let disk = d.handle.get().ok_or_else(|| format!("disk {} is not open yet", d.index))?;
            Ok(PinnedDisk { index: d.index, pin: Arc::new(disk.pin()), layer: d.layer.clone(), runtime: disk.runtime().cloned() })
        })
        .collect()
}

/// With the guest running again: writes each pinned disk into `dir`, then
/// releases its pin. Returns the block bytes written.
pub fn save_all(pinned: Vec<PinnedDisk>, dir: &Path) -> Result<u64, String> {
    let mut bytes = 0;
    for disk in pinned {
        let i = disk.index;
        bytes += save(disk, &dir.join(crate::snapshot::blocks_file(i))).map_err(|e| format!("saving disk {i}: {e}"))?;
    }
    Ok(bytes)
}

fn save(disk: PinnedDisk, path: &Path) -> Result<u64, String> {
    let mut out = BlocksWriter::create(path, disk.pin.block_size()).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    let mut saved: HashSet<u64> = HashSet::with_capacity(disk.pin.memory.len());
    for (idx, data) in &disk.pin.memory {
        out.push(*idx, data).map_err(io)?;
        saved.insert(*idx);
    }
    // A fork's disk reads the snapshot it came from through its base: what
    // it has not changed since is part of its state too.
    if let Some(layer) = &disk.layer {
        let mut older: Vec<u64> = layer.blocks().filter(|i| !saved.contains(i)).collect();
        older.sort_unstable();
        for idx in older {
            let data = layer.read_block(idx).map_err(io)?.ok_or_else(|| format!("block {idx} left the snapshot file"))?;
            out.push(idx, &data).map_err(io)?;
        }
    }
    if !disk.pin.stored.is_empty() {
        let runtime = disk.runtime.as_ref().ok_or("a disk with stored blocks has no store runtime")?;
        let mut runs = disk.pin.stored_runs(READ_RUN).into_iter();
        let mut in_flight: VecDeque<Receiver<_>> = VecDeque::new();
        loop {
            while in_flight.len() < READS_IN_FLIGHT {
                let Some((first, count)) = runs.next() else { break };
                let (tx, rx) = sync_channel(1);
                let pin = disk.pin.clone();
                // The store is Node's: its calls run on the disk's runtime.
                runtime.spawn(async move {
                    let _ = tx.send(pin.read_stored(first, count).await);
                });
                in_flight.push_back(rx);
            }
            let Some(next) = in_flight.pop_front() else { break };
            let blocks = next.recv().map_err(|_| "the store read was abandoned (the disk closed)".to_string())?;
            for (idx, data) in blocks.map_err(|e| format!("reading the store: {e}"))? {
                out.push(idx, &data).map_err(io)?;
            }
        }
    }
    // The pin goes when `disk` does, after the file is complete.
    out.finish().map_err(io)
}
