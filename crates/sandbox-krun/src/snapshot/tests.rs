use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("sandbox-krun-snap-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MIB: u64 = 1 << 20;

fn range(start: u64, len: u64) -> GuestMemoryRange {
    GuestMemoryRange::new(start, len).unwrap()
}

/// x86_64-like: RAM below the MMIO gap and above 4 GiB.
fn sample() -> KrunSnapshotState {
    KrunSnapshotState {
        regions: vec![
            RamRegion { guest_address: 0, length: 3 * MIB, file_offset: 0 },
            RamRegion { guest_address: 4 << 30, length: MIB, file_offset: 3 * MIB },
        ],
        execution: b"MSBKEXEC-ish bytes".to_vec(),
        devices: vec![
            DeviceRecord::Block { id: "disk0".into(), state: vec![1, 2, 3] },
            DeviceRecord::Virtio { id: "sandbox.control".into(), state: vec![9; 100] },
        ],
    }
}

#[test]
fn state_round_trips() {
    let s = sample();
    assert_eq!(KrunSnapshotState::decode(&s.encode(), 4 * MIB).unwrap(), s);
}

#[test]
fn every_truncation_of_the_state_is_an_error_never_a_panic() {
    let bytes = sample().encode();
    for n in 0..bytes.len() {
        let e = KrunSnapshotState::decode(&bytes[..n], 4 * MIB).unwrap_err();
        assert!(!e.is_empty(), "prefix of {n} bytes");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(KrunSnapshotState::decode(&longer, 4 * MIB).unwrap_err().contains("after the end"));
}

#[test]
fn garbage_and_foreign_files_are_refused() {
    assert!(KrunSnapshotState::decode(b"QEVM\0\0\0\x03 not ours", 4 * MIB).unwrap_err().contains("magic"));
    // Flipping any single byte never panics (and mostly fails).
    let bytes = sample().encode();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let _ = KrunSnapshotState::decode(&b, 4 * MIB);
    }
    // Absurd lengths are bounded before anything is allocated.
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(KrunSnapshotState::decode(&b, 4 * MIB).unwrap_err().contains("RAM regions"));
    let mut s = sample();
    s.devices = vec![DeviceRecord::Virtio { id: String::new(), state: vec![] }];
    assert!(KrunSnapshotState::decode(&s.encode(), 4 * MIB).unwrap_err().contains("device id"));
    let mut b = sample().encode();
    let tag_at = b.len() - (100 + 8 + 15 + 2 + 1);
    assert_eq!(b[tag_at], 2, "the second device's kind byte");
    b[tag_at] = 7;
    assert!(KrunSnapshotState::decode(&b, 4 * MIB).unwrap_err().contains("unknown device kind"));
}

#[test]
fn the_ram_layout_must_match_the_ram_file() {
    let s = sample();
    let e = KrunSnapshotState::decode(&s.encode(), 4 * MIB - 4096).unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    let mut bad = sample();
    bad.regions[1].guest_address = MIB;
    assert!(KrunSnapshotState::decode(&bad.encode(), 4 * MIB).unwrap_err().contains("overlaps"));
    let mut bad = sample();
    bad.regions[1].file_offset = 0;
    assert!(KrunSnapshotState::decode(&bad.encode(), 4 * MIB).unwrap_err().contains("out of order"));
    let mut bad = sample();
    bad.regions[0].length = 3 * MIB + 1;
    assert!(KrunSnapshotState::decode(&bad.encode(), 4 * MIB + 1).unwrap_err().contains("page-aligned"));
    let mut bad = sample();
    bad.regions.clear();
    assert!(KrunSnapshotState::decode(&bad.encode(), 0).unwrap_err().contains("RAM regions"));
}

#[test]
fn the_sink_packs_regions_and_leaves_zeros_as_holes() {
    let dir = Scratch::new();
    let path = dir.0.join(RAM_FILE);
    let mut sink = RamFileSink::create(&path).unwrap();
    // libkrun streams ascending chunks; a gap starts a new region.
    sink.write_bytes(range(0, 4096), &[7u8; 4096]).unwrap();
    sink.write_zero(range(4096, MIB - 4096)).unwrap();
    sink.write_bytes(range(4 << 30, 4096), &[9u8; 4096]).unwrap();
    sink.write_zero(range((4 << 30) + 4096, 4096)).unwrap();
    assert!(sink.write_zero(range(8192, 4096)).is_err(), "a range going backwards is refused");
    assert!(sink.write_bytes(range(8 << 30, 8192), &[1u8; 4096]).is_err(), "a chunk must fill its range");
    let (regions, written) = sink.finish().unwrap();
    assert_eq!(written, 8192);
    assert_eq!(
        regions,
        vec![
            RamRegion { guest_address: 0, length: MIB, file_offset: 0 },
            RamRegion { guest_address: 4 << 30, length: 8192, file_offset: MIB },
        ]
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, MIB + 8192, "the file is the RAM size, not the address span");
    assert_eq!(&bytes[..4096], &[7u8; 4096][..]);
    assert!(bytes[4096..MIB as usize].iter().all(|&b| b == 0));
    assert_eq!(&bytes[MIB as usize..MIB as usize + 4096], &[9u8; 4096][..]);
    check_layout(&regions, bytes.len() as u64).unwrap();
}

#[derive(Default)]
struct Recorder {
    bytes: Vec<(u64, Vec<u8>)>,
    zeros: Vec<(u64, u64)>,
}

impl VmMemoryRestoreTarget for Recorder {
    fn write_bytes(&mut self, range: GuestMemoryRange, bytes: &[u8]) -> io::Result<()> {
        assert_eq!(range.length(), bytes.len() as u64);
        self.bytes.push((range.start(), bytes.to_vec()));
        Ok(())
    }
    fn write_zero(&mut self, range: GuestMemoryRange) -> io::Result<()> {
        self.zeros.push((range.start(), range.length()));
        Ok(())
    }
}

#[test]
fn the_stream_source_replays_the_file_into_guest_addresses() {
    let dir = Scratch::new();
    let path = dir.0.join(RAM_FILE);
    let f = File::create(&path).unwrap();
    f.set_len(3 * MIB).unwrap();
    f.write_all_at(b"low", 5).unwrap();
    f.write_all_at(b"high", 2 * MIB + 1).unwrap();
    let regions = vec![
        RamRegion { guest_address: 0, length: 2 * MIB, file_offset: 0 },
        RamRegion { guest_address: 4 << 30, length: MIB, file_offset: 2 * MIB },
    ];
    let mut src = RamStreamSource::new(File::open(&path).unwrap(), regions);
    let mut t = Recorder::default();
    src.restore(&mut t).unwrap();
    assert_eq!(t.bytes.len(), 2, "only chunks with data are copied");
    assert_eq!(t.bytes[0].0, 0);
    assert_eq!(&t.bytes[0].1[5..8], b"low");
    assert_eq!(t.bytes[1].0, 4 << 30);
    assert_eq!(&t.bytes[1].1[1..5], b"high");
    assert_eq!(t.zeros, vec![(MIB, MIB)]);
}

#[test]
fn the_stream_source_reports_a_short_file() {
    let dir = Scratch::new();
    let path = dir.0.join(RAM_FILE);
    File::create(&path).unwrap().set_len(MIB).unwrap();
    let regions = vec![RamRegion { guest_address: 0, length: 2 * MIB, file_offset: 0 }];
    let mut src = RamStreamSource::new(File::open(&path).unwrap(), regions);
    assert!(src.restore(&mut Recorder::default()).is_err());
}

fn write_snapshot(dir: &Path, state: &KrunSnapshotState, ram_len: u64) {
    std::fs::write(dir.join(STATE_FILE), state.encode()).unwrap();
    File::create(dir.join(RAM_FILE)).unwrap().set_len(ram_len).unwrap();
}

fn load_err(dir: &Path, memory: MemoryRestore, mib: u32) -> String {
    match load(&KrunRestore { dir: dir.to_path_buf(), memory }, mib, 1) {
        Ok(s) => panic!("loaded {s:?}"),
        Err(e @ KrunError::Snapshot(_)) => e.to_string(),
        Err(e) => panic!("not a snapshot error: {e}"),
    }
}

#[test]
fn loading_refuses_missing_truncated_and_mismatched_snapshots() {
    let dir = Scratch::new();
    let e = load_err(&dir.0, MemoryRestore::PrivateMapping, 4);
    assert!(e.contains(RAM_FILE), "{e}");
    File::create(dir.0.join(RAM_FILE)).unwrap().set_len(4 * MIB).unwrap();
    assert!(load_err(&dir.0, MemoryRestore::PrivateMapping, 4).contains(STATE_FILE));
    write_snapshot(&dir.0, &sample(), 4 * MIB - 4096);
    assert!(load_err(&dir.0, MemoryRestore::PrivateMapping, 4).contains("truncated"));
    write_snapshot(&dir.0, &sample(), 4 * MIB);
    let e = load_err(&dir.0, MemoryRestore::PrivateMapping, 512);
    assert!(e.contains("512 MiB") && e.contains("memory it was taken with"), "{e}");
    // Right size, but the execution state is not libkrun's.
    for memory in [MemoryRestore::PrivateMapping, MemoryRestore::Stream] {
        let e = load_err(&dir.0, memory, 4);
        assert!(e.contains("execution state"), "{e}");
    }
    std::fs::write(dir.0.join(STATE_FILE), vec![0u8; 100]).unwrap();
    assert!(load_err(&dir.0, MemoryRestore::Stream, 4).contains("magic"));
    File::create(dir.0.join(STATE_FILE)).unwrap().set_len(MAX_STATE_BYTES + 1).unwrap();
    assert!(load_err(&dir.0, MemoryRestore::Stream, 4).contains("more than"));
}
