//! Checkpoint and restore of a krun VM (msb_krun 0.1.42's execution-state,
//! device-state and memory-capture API).
//!
//! A krun snapshot directory holds two files:
//!
//! * [`RAM_FILE`]: guest RAM, the guest-physical regions packed one after the
//!   other in address order (all-zero chunks left as holes), so its length is
//!   the guest's RAM size;
//! * [`STATE_FILE`]: a small bounded container ([`KrunSnapshotState`]): the RAM
//!   layout (which guest-physical range sits at which file offset), libkrun's
//!   execution state (vCPUs, interrupt controller, clocks) and the state of
//!   every virtio device (queue cursors, negotiated features, device protocol
//!   state).
//!
//! [`checkpoint`] pauses the vCPUs, captures devices, execution state and
//! memory, and resumes the VM whatever happened. A restore
//! ([`KrunRestore`], applied by `PreparedVm::build`) maps [`RAM_FILE`]
//! privately (`MAP_PRIVATE` through libkrun's `PrivateMemoryBacking`): forks of
//! one snapshot share its pages copy-on-write through the page cache, and no
//! fork can change the file. [`RamStreamSource`] is the copying alternative
//! (`VmMemoryRestoreSource`) for hosts where a private mapping is refused.
//!
//! Every byte read back from a snapshot is bounded and checked: a truncated or
//! corrupted snapshot is a [`KrunError::Snapshot`], never a panic or a guest
//! that starts from garbage.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msb_krun::{
    BlockDeviceState, ExecutionState, GuestMemoryRange, MemoryCaptureOptions, MemoryCaptureSink,
    PrivateMemoryBacking, PrivateMemoryRegion, VirtioDeviceState, VmControl, VmMemoryRestoreSource,
    VmMemoryRestoreTarget,
};

use crate::error::KrunError;

/// The state container's name in a snapshot directory.
pub const STATE_FILE: &str = "krun-state";
/// Guest RAM's name in a snapshot directory.
pub const RAM_FILE: &str = "ram";

const MAGIC: &[u8; 8] = b"SBXKRUN1";
/// Bound on the whole state container: execution state is a few hundred KiB
/// per vCPU at most, device states a few KiB each.
pub const MAX_STATE_BYTES: u64 = 64 << 20;
/// Bound on the number of RAM regions (x86_64 has two or three, arm64 one).
pub const MAX_REGIONS: usize = 64;
/// Bound on the number of virtio devices (the MMIO interrupt budget is 11).
pub const MAX_DEVICES: usize = 64;
/// Longest device id (virtio-blk serials are 20 bytes; other ids are short names).
pub const MAX_DEVICE_ID: usize = 64;
/// RAM is streamed in chunks this big; all-zero chunks stay holes.
const RAM_CHUNK: usize = 1 << 20;
/// How long the vCPUs may take to reach and leave the pause boundary.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One guest-physical RAM range and where it sits in [`RAM_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub guest_address: u64,
    pub length: u64,
    pub file_offset: u64,
}

/// One captured virtio device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRecord {
    /// A virtio-blk device, by its id (the disk id).
    Block { id: String, state: Vec<u8> },
    /// Any other virtio device (console, virtio-fs root, entropy, ...): the
    /// encoded `VirtioDeviceState`, which names its device itself.
    Virtio { id: String, state: Vec<u8> },
}

/// The decoded [`STATE_FILE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunSnapshotState {
    pub regions: Vec<RamRegion>,
    /// `ExecutionState::encode` output.
    pub execution: Vec<u8>,
    pub devices: Vec<DeviceRecord>,
}

/// What a checkpoint cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStats {
    /// How long the vCPUs were paused.
    pub paused: Duration,
    /// Non-zero guest RAM bytes written.
    pub ram_bytes: u64,
}

/// How a restored VM gets its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryRestore {
    /// [`RAM_FILE`] mapped privately: forks share pages copy-on-write.
    #[default]
    PrivateMapping,
    /// [`RAM_FILE`] copied into fresh anonymous guest RAM ([`RamStreamSource`]).
    Stream,
}

/// A restore request: the snapshot directory a new VM resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunRestore {
    pub dir: PathBuf,
    pub memory: MemoryRestore,
}

/// A snapshot read back and checked, ready to be applied to a `Vm`.
pub struct LoadedSnapshot {
    pub(crate) execution: ExecutionState,
    pub(crate) virtio: Vec<VirtioDeviceState>,
    pub(crate) blocks: Vec<(String, BlockDeviceState)>,
    pub(crate) memory: LoadedMemory,
}

pub(crate) enum LoadedMemory {
    Private(PrivateMemoryBacking),
    Stream(RamStreamSource),
}

impl std::fmt::Debug for LoadedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSnapshot")
            .field("vcpus", &self.execution.vcpus().len())
            .field("virtio_devices", &self.virtio.len())
            .field("block_devices", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> KrunError {
    KrunError::Snapshot(format!("{} is not a usable krun snapshot file: {why}", path.display()))
}

// ---------------------------------------------------------------------------
// The state container
// ---------------------------------------------------------------------------

impl KrunSnapshotState {
    /// Serializes the container (big-endian lengths, magic first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.execution.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.regions.len() as u32).to_be_bytes());
        for r in &self.regions {
            out.extend_from_slice(&r.guest_address.to_be_bytes());
            out.extend_from_slice(&r.length.to_be_bytes());
            out.extend_from_slice(&r.file_offset.to_be_bytes());
        }
        out.extend_from_slice(&(self.execution.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.execution);
        out.extend_from_slice(&(self.devices.len() as u32).to_be_bytes());
        for d in &self.devices {
            let (tag, id, state) = match d {
                DeviceRecord::Block { id, state } => (1u8, id, state),
                DeviceRecord::Virtio { id, state } => (2u8, id, state),
            };
            out.push(tag);
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&(state.len() as u64).to_be_bytes());
            out.extend_from_slice(state);
        }
        out
    }

    /// Parses and bounds-checks a container; `ram_len` is [`RAM_FILE`]'s length.
    pub fn decode(bytes: &[u8], ram_len: u64) -> Result<Self, String> {
        let mut r = Cursor { bytes, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err("wrong magic (not a krun snapshot, or another format version)".into());
        }
        let n = r.u32()? as usize;
        if n == 0 || n > MAX_REGIONS {
            return Err(format!("{n} RAM regions (1 to {MAX_REGIONS} expected)"));
        }
        let mut regions = Vec::with_capacity(n);
        for _ in 0..n {
            regions.push(RamRegion { guest_address: r.u64()?, length: r.u64()?, file_offset: r.u64()? });
        }
        check_layout(&regions, ram_len)?;
        let len = r.u64()?;
        let execution = r.take(usize::try_from(len).map_err(|_| "execution state length")?)?.to_vec();
        let n = r.u32()? as usize;
        if n > MAX_DEVICES {
            return Err(format!("{n} devices (at most {MAX_DEVICES})"));
        }
        let mut devices = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = r.take(1)?[0];
            let id_len = usize::from(r.u16()?);
            if id_len == 0 || id_len > MAX_DEVICE_ID {
                return Err(format!("a device id of {id_len} bytes"));
            }
            let id = std::str::from_utf8(r.take(id_len)?).map_err(|_| "a device id is not UTF-8")?.to_string();
            let len = r.u64()?;
            let state = r.take(usize::try_from(len).map_err(|_| "device state length")?)?.to_vec();
            devices.push(match tag {
                1 => DeviceRecord::Block { id, state },
                2 => DeviceRecord::Virtio { id, state },
                t => return Err(format!("unknown device kind {t}")),
            });
        }
        if r.at != bytes.len() {
            return Err(format!("{} bytes after the end", bytes.len() - r.at));
        }
        Ok(Self { regions, execution, devices })
    }
}

/// Regions must be ordered, disjoint, page-aligned, packed in file order and
/// exactly cover the RAM file.
fn check_layout(regions: &[RamRegion], ram_len: u64) -> Result<(), String> {
    const PAGE: u64 = 4096;
    let mut guest_end = 0u64;
    let mut file_end = 0u64;
    for (i, r) in regions.iter().enumerate() {
        let aligned = r.guest_address % PAGE == 0 && r.length % PAGE == 0 && r.file_offset % PAGE == 0;
        if r.length == 0 || !aligned {
            return Err(format!("RAM region {i} is empty or not page-aligned"));
        }
        if (i > 0 && r.guest_address < guest_end) || r.file_offset != file_end {
            return Err(format!("RAM region {i} overlaps another or is out of order"));
        }
        guest_end = r.guest_address.checked_add(r.length).ok_or("a RAM region overflows")?;
        file_end = file_end.checked_add(r.length).ok_or("the RAM layout overflows")?;
    }
    if file_end != ram_len {
        return Err(format!("the RAM layout covers {file_end} bytes but the RAM file has {ram_len} (truncated?)"));
    }
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("it ends early (truncated?)")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| "short")?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "short")?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| "short")?))
    }
}

// ---------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------

/// Writes a full memory capture into [`RAM_FILE`], packing the guest-physical
/// regions in the order libkrun streams them (ascending addresses).
pub struct RamFileSink {
    file: File,
    regions: Vec<RamRegion>,
    written: u64,
}

impl RamFileSink {
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Self { file: File::create(path)?, regions: Vec::new(), written: 0 })
    }

    /// The file offset for `range`, opening a new region when it does not continue the last one.
    fn place(&mut self, range: GuestMemoryRange) -> io::Result<u64> {
        match self.regions.last_mut() {
            Some(last) if range.start() == last.guest_address + last.length => {
                let at = last.file_offset + last.length;
                last.length += range.length();
                Ok(at)
            }
            Some(last) if range.start() < last.guest_address + last.length => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("memory capture went backwards (range at {:#x})", range.start()),
            )),
            last => {
                let at = last.map_or(0, |l| l.file_offset + l.length);
                self.regions.push(RamRegion { guest_address: range.start(), length: range.length(), file_offset: at });
                Ok(at)
            }
        }
    }

    /// Sizes and syncs the file; returns the layout and the bytes written.
    pub fn finish(self) -> io::Result<(Vec<RamRegion>, u64)> {
        let len = self.regions.last().map_or(0, |l| l.file_offset + l.length);
        self.file.set_len(len)?;
        self.file.sync_all()?;
        Ok((self.regions, self.written))
    }
}

impl MemoryCaptureSink for RamFileSink {
    fn write_bytes(&mut self, range: GuestMemoryRange, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 != range.length() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "memory capture chunk length mismatch"));
        }
        let at = self.place(range)?;
        self.file.write_all_at(bytes, at)?;
        self.written += range.length();
        Ok(())
    }

    fn write_zero(&mut self, range: GuestMemoryRange) -> io::Result<()> {
        // A hole: the file is sized at the end.
        self.place(range).map(drop)
    }
}

/// Pauses the VM, writes its snapshot into `dir` (which must exist) and
/// resumes it, whether or not the capture worked. Runs on any thread of the
/// VMM process while `Vm::enter` runs the VM.
pub fn checkpoint(control: &VmControl, dir: &Path) -> Result<CheckpointStats, KrunError> {
    if !dir.is_dir() {
        return Err(KrunError::Snapshot(format!("snapshot directory {} does not exist", dir.display())));
    }
    control.validate_execution_state_capture()?;
    let paused_at = Instant::now();
    let generation = control.pause()?;
    let captured = capture_paused(control, dir);
    let resumed = control.resume(generation);
    let paused = paused_at.elapsed();
    let ram_bytes = captured?;
    resumed?;
    control.wait_until_running(PAUSE_TIMEOUT)?;
    Ok(CheckpointStats { paused, ram_bytes })
}

fn capture_paused(control: &VmControl, dir: &Path) -> Result<u64, KrunError> {
    // Devices first: once quiesced they no longer write guest memory.
    let mut devices = Vec::new();
    for (kind, id) in control.virtio_device_inventory()? {
        if kind == msb_krun_devices::virtio::TYPE_BLOCK {
            let state = control.capture_block_device_state(&id)?.encode().map_err(|e| KrunError::Snapshot(format!("encoding disk {id}: {e}")))?;
            devices.push(DeviceRecord::Block { id, state });
        } else {
            let state = control.capture_virtio_device_state(kind, &id)?.encode().map_err(|e| KrunError::Snapshot(format!("encoding device {id}: {e}")))?;
            devices.push(DeviceRecord::Virtio { id, state });
        }
    }
    let execution = control
        .capture_execution_state()?
        .encode()
        .map_err(|e| KrunError::Snapshot(format!("encoding the execution state: {e:?}")))?;
    let plan = control.plan_full_memory_capture()?;
    let ram_path = dir.join(RAM_FILE);
    let written = (|| {
        let mut sink = RamFileSink::create(&ram_path).map_err(|e| KrunError::Snapshot(format!("creating {}: {e}", ram_path.display())))?;
        let options = MemoryCaptureOptions::new(RAM_CHUNK, true).map_err(|e| KrunError::Snapshot(e.to_string()))?;
        control.capture_memory(&plan, options, &mut sink)?;
        sink.finish().map_err(|e| KrunError::Snapshot(format!("writing {}: {e}", ram_path.display())))
    })();
    // One snapshot, not a baseline for incremental ones: no dirty tracking stays armed.
    let abandoned = control.abandon_memory_capture(&plan);
    let (regions, ram_bytes) = written?;
    abandoned?;
    let state = KrunSnapshotState { regions, execution, devices };
    write_synced(&dir.join(STATE_FILE), &state.encode()).map_err(|e| KrunError::Snapshot(format!("writing {STATE_FILE}: {e}")))?;
    Ok(ram_bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

// ---------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------

/// Reads and checks a snapshot directory for a VM of `memory_mib` MiB and
/// `vcpus` vCPUs. Nothing is mapped into a VM yet.
pub fn load(restore: &KrunRestore, memory_mib: u32, vcpus: u8) -> Result<LoadedSnapshot, KrunError> {
    let state_path = restore.dir.join(STATE_FILE);
    let ram_path = restore.dir.join(RAM_FILE);
    let missing = |p: &Path, e: io::Error| KrunError::Snapshot(format!("snapshot file {}: {e}", p.display()));
    let ram = File::open(&ram_path).map_err(|e| missing(&ram_path, e))?;
    let ram_len = ram.metadata().map_err(|e| missing(&ram_path, e))?.len();
    let state_file = File::open(&state_path).map_err(|e| missing(&state_path, e))?;
    let state_len = state_file.metadata().map_err(|e| missing(&state_path, e))?.len();
    if state_len > MAX_STATE_BYTES {
        return Err(corrupt(&state_path, format!("{state_len} bytes, more than the {MAX_STATE_BYTES} a krun state can have")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(state_len).unwrap_or(0));
    state_file.take(MAX_STATE_BYTES).read_to_end(&mut bytes).map_err(|e| missing(&state_path, e))?;
    let state = KrunSnapshotState::decode(&bytes, ram_len).map_err(|e| corrupt(&state_path, e))?;
    let ram_total: u64 = state.regions.iter().map(|r| r.length).sum();
    if ram_total < u64::from(memory_mib) << 20 {
        return Err(KrunError::Snapshot(format!(
            "the snapshot holds {} MiB of guest RAM, the lane has {memory_mib} MiB: boot it with the memory it was taken with",
            ram_total >> 20
        )));
    }
    let execution = ExecutionState::decode(&state.execution).map_err(|e| corrupt(&state_path, format!("execution state: {e}")))?;
    if execution.vcpus().len() != usize::from(vcpus) {
        return Err(KrunError::Snapshot(format!(
            "the snapshot has {} vCPUs, the lane has {vcpus}: boot it with the vCPUs it was taken with",
            execution.vcpus().len()
        )));
    }
    let mut virtio = Vec::new();
    let mut blocks = Vec::new();
    for d in &state.devices {
        match d {
            DeviceRecord::Block { id, state } => {
                blocks.push((id.clone(), BlockDeviceState::decode(state).map_err(|e| corrupt(&state_path, format!("disk {id}: {e}")))?));
            }
            DeviceRecord::Virtio { id, state } => {
                let s = VirtioDeviceState::decode(state).map_err(|e| corrupt(&state_path, format!("device {id}: {e}")))?;
                if &s.device_id != id {
                    return Err(corrupt(&state_path, format!("device record {id} holds the state of {}", s.device_id)));
                }
                virtio.push(s);
            }
        }
    }
    let memory = match restore.memory {
        MemoryRestore::PrivateMapping => {
            let regions = state
                .regions
                .iter()
                .map(|r| PrivateMemoryRegion { guest_address: r.guest_address, length: r.length, file_offset: r.file_offset })
                .collect();
            // The handle is read-only: nothing in the VMM can write the snapshot through it.
            LoadedMemory::Private(PrivateMemoryBacking::new(ram, regions).map_err(|e| corrupt(&ram_path, e))?)
        }
        MemoryRestore::Stream => LoadedMemory::Stream(RamStreamSource { file: ram, regions: state.regions.clone() }),
    };
    Ok(LoadedSnapshot { execution, virtio, blocks, memory })
}

impl LoadedSnapshot {
    /// Installs the snapshot into a built, not yet entered VM.
    pub(crate) fn apply(self, vm: &mut msb_krun::Vm) {
        match self.memory {
            LoadedMemory::Private(backing) => vm.set_private_memory_backing(backing),
            LoadedMemory::Stream(source) => vm.set_memory_restore(source),
        }
        vm.set_execution_restore(self.execution);
        for s in self.virtio {
            vm.add_virtio_device_restore(s);
        }
        for (id, s) in self.blocks {
            vm.add_block_device_restore(id, s);
        }
    }
}

/// Copies [`RAM_FILE`] into a new VM's RAM, region by region; all-zero chunks
/// become zero ranges (libkrun leaves them as untouched zero pages).
pub struct RamStreamSource {
    file: File,
    regions: Vec<RamRegion>,
}

impl RamStreamSource {
    pub fn new(file: File, regions: Vec<RamRegion>) -> Self {
        Self { file, regions }
    }
}

impl VmMemoryRestoreSource for RamStreamSource {
    fn restore(&mut self, target: &mut dyn VmMemoryRestoreTarget) -> io::Result<()> {
        let mut buf = vec![0u8; RAM_CHUNK];
        for r in &self.regions {
            let mut done = 0u64;
            while done < r.length {
                let n = usize::try_from((r.length - done).min(RAM_CHUNK as u64)).unwrap_or(RAM_CHUNK);
                self.file.read_exact_at(&mut buf[..n], r.file_offset + done)?;
                let range = GuestMemoryRange::new(r.guest_address + done, n as u64).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                if buf[..n].iter().all(|&b| b == 0) {
                    target.write_zero(range)?;
                } else {
                    target.write_bytes(range, &buf[..n])?;
                }
                done += n as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
