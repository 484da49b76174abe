use std::sync::Arc;

use super::*;
use crate::base::BaseImage;
use crate::testutil::{mem_base, pattern};

const BS: u32 = 4096;

fn base(len: usize) -> Arc<dyn BaseImage> {
    mem_base(len)
}

fn cfg(budget_blocks: u64) -> CowConfig {
    CowConfig {
        block_size: BS,
        max_dirty_bytes: budget_blocks * u64::from(BS),
        ..CowConfig::default()
    }
}

async fn read_all(d: &CowDisk) -> Vec<u8> {
    let mut out = vec![0u8; d.size() as usize];
    d.read(0, &mut out).await.expect("read");
    out
}

/// Tiny deterministic generator so tests need no extra crates.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test]
async fn partial_writes_merge_over_base() {
    let size = 64 * 1024 + 1000; // last block is short
    let d = CowDisk::new(base(size), cfg(64), CowMode::Ephemeral)
        .await
        .unwrap();
    let mut model = pattern(size);
    let mut rng = Lcg(42);
    for round in 0..200 {
        let off = (rng.next() % size as u64) as usize;
        let len = ((rng.next() % 9000) as usize).min(size - off);
        let data: Vec<u8> = (0..len).map(|i| (i + round) as u8 ^ 0x5a).collect();
        d.write(off as u64, &data).await.unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    assert_eq!(read_all(&d).await, model);
    // Unaligned reads crossing block boundaries.
    let mut buf = vec![0u8; 5000];
    d.read(4000, &mut buf).await.unwrap();
    assert_eq!(buf, model[4000..9000]);
    assert!(matches!(
        d.write(size as u64 - 10, &[0; 11]).await,
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(matches!(
        d.read(u64::MAX, &mut [0; 2]).await,
        Err(DiskError::OutOfRange { .. })
    ));
}

#[tokio::test]
async fn ephemeral_budget_gives_enospc_without_partial_effect() {
    let d = CowDisk::new(base(64 * 1024), cfg(4), CowMode::Ephemeral)
        .await
        .unwrap();
    for b in 0..4u64 {
        d.write(b * 4096 + 10, &[1; 10]).await.unwrap();
    }
    assert_eq!(d.stats().dirty_bytes, 4 * 4096);
    assert!(matches!(
        d.write(5 * 4096, &[2; 10]).await,
        Err(DiskError::NoSpace)
    ));
    // Spans dirty block 3 and new block 4: refused as a whole.
    assert!(matches!(
        d.write(4 * 4096 - 5, &[3; 10]).await,
        Err(DiskError::NoSpace)
    ));
    let mut buf = [0u8; 10];
    d.read(4 * 4096 - 5, &mut buf).await.unwrap();
    assert_eq!(buf[..5], pattern(64 * 1024)[4 * 4096 - 5..4 * 4096]);
    // Rewriting dirty blocks still works; zeroing new ones does not.
    d.write(0, &[9; 4096]).await.unwrap();
    assert!(matches!(
        d.write_zeroes(8 * 4096, 4096).await,
        Err(DiskError::NoSpace)
    ));
    assert_eq!(d.stats().dirty_bytes, 4 * 4096);
    d.flush().await.unwrap();
}

#[tokio::test]
async fn persistent_write_back_keeps_dirty_and_cached_within_the_budget() {
    let store = Arc::new(MemBlockStore::new(BS));
    let d = CowDisk::new(base(64 * 1024), cfg(4), CowMode::Persistent(store.clone()))
        .await
        .unwrap();
    let mut model = pattern(64 * 1024);
    for b in 0..10usize {
        let data = vec![b as u8 + 1; 100];
        d.write((b * 4096 + 50) as u64, &data).await.unwrap();
        model[b * 4096 + 50..b * 4096 + 150].copy_from_slice(&data);
        assert!(d.stats().dirty_bytes + d.stats().cached_bytes <= 4 * 4096);
        tokio::task::yield_now().await;
    }
    assert!(d.stats().store_blocks_written > 0, "written back in the background");
    assert_eq!(read_all(&d).await, model);
    d.flush().await.unwrap();
    assert_eq!(store.durable_blocks().len(), 10);
    assert_eq!(d.stats().dirty_bytes, 0);
}

#[tokio::test]
async fn store_blocks_are_read_lazily_and_cached() {
    let store = Arc::new(MemBlockStore::new(BS));
    store
        .write(vec![(3, vec![0x33; 4096]), (7, vec![0x77; 4096])])
        .await
        .unwrap();
    store.flush().await.unwrap();

    let d = CowDisk::new(base(64 * 1024), cfg(8), CowMode::Persistent(store.clone()))
        .await
        .unwrap();
    assert_eq!(d.stats().store_reads, 0, "opening only lists");
    let mut buf = vec![0u8; 4096];
    d.read(0, &mut buf).await.unwrap();
    assert_eq!(d.stats().store_reads, 0);
    let mut buf = vec![0u8; 7 * 4096];
    d.read(2 * 4096, &mut buf).await.unwrap();
    assert_eq!(
        d.stats().store_reads,
        2,
        "one call per run of stored blocks"
    );
    assert!(buf[4096..8192].iter().all(|&b| b == 0x33));
    assert!(buf[5 * 4096..6 * 4096].iter().all(|&b| b == 0x77));
    assert_eq!(buf[..4096], pattern(64 * 1024)[2 * 4096..3 * 4096]);
    d.read(2 * 4096, &mut buf).await.unwrap();
    assert_eq!(d.stats().store_reads, 2, "second read hits the cache");

    // A partial write to an uncached stored block merges with the stored bytes.
    let d2 = CowDisk::new(base(64 * 1024), cfg(8), CowMode::Persistent(store.clone()))
        .await
        .unwrap();
    d2.write(3 * 4096 + 10, &[1; 10]).await.unwrap();
    assert_eq!(d2.stats().store_reads, 1);
    let mut blk = vec![0u8; 4096];
    d2.read(3 * 4096, &mut blk).await.unwrap();
    assert!(blk[..10].iter().all(|&b| b == 0x33) && blk[10..20].iter().all(|&b| b == 1));
    // Full-block overwrites need no fetch.
    d2.write(7 * 4096, &[2; 4096]).await.unwrap();
    assert_eq!(d2.stats().store_reads, 1);
}

#[tokio::test]
async fn flush_writes_then_flushes_and_survives_store_failures() {
    let store = Arc::new(MemBlockStore::new(BS));
    // One batch of up to 8 blocks: the two dirty blocks go out together.
    let one_batch = CowConfig {
        write_back_batches: 1,
        ..cfg(16)
    };
    let d = CowDisk::new(base(64 * 1024), one_batch, CowMode::Persistent(store.clone()))
        .await
        .unwrap();
    d.write(5 * 4096, &[5; 4096]).await.unwrap();
    d.write(4096 + 7, &[1; 3]).await.unwrap();
    store.clear_log();
    d.flush().await.unwrap();
    assert_eq!(
        store.log(),
        vec![StoreOp::Write(vec![1, 5]), StoreOp::Flush]
    );
    store.crash();
    assert_eq!(store.durable_blocks().len(), 2);

    // A failing store: flush reports the error and keeps the data dirty.
    store.set_failing(true);
    d.write(9 * 4096, &[9; 4096]).await.unwrap();
    assert!(matches!(d.flush().await, Err(DiskError::Store(_))));
    assert_eq!(d.stats().dirty_bytes, 4096);
    let mut buf = vec![0u8; 4096];
    d.read(9 * 4096, &mut buf).await.unwrap();
    assert!(buf.iter().all(|&b| b == 9));
    store.set_failing(false);
    d.flush().await.unwrap();
    store.crash();

    // A fresh disk over the store sees every flushed byte.
    let again = CowDisk::new(base(64 * 1024), cfg(16), CowMode::Persistent(store.clone()))
        .await
        .unwrap();
    assert_eq!(read_all(&again).await, read_all(&d).await);
    let mut b = [0u8; 3];
    again.read(4096 + 7, &mut b).await.unwrap();
    assert_eq!(b, [1, 1, 1]);
}

#[tokio::test]
async fn zeroes_and_trim() {
    let d = CowDisk::new(base(64 * 1024), cfg(16), CowMode::Ephemeral)
        .await
        .unwrap();
    d.write_zeroes(100, 3 * 4096).await.unwrap();
    let all = read_all(&d).await;
    assert!(all[100..100 + 3 * 4096].iter().all(|&b| b == 0));
    assert_eq!(all[..100], pattern(100)[..]);
    d.trim(0, 4096).await.unwrap();
    assert_eq!(read_all(&d).await, all, "trim is ignored");
    assert!(d.trim(60 * 1024, 8 * 1024).await.is_err());
}

#[tokio::test]
async fn rejects_bad_configuration_and_bad_stores() {
    let e = CowDisk::new(
        base(8192),
        CowConfig {
            block_size: BS,
            max_dirty_bytes: 100,
            ..CowConfig::default()
        },
        CowMode::Ephemeral,
    )
    .await;
    assert!(matches!(e, Err(DiskError::Config(_))));
    let e = CowDisk::new(
        base(8192),
        CowConfig {
            block_size: 3000,
            max_dirty_bytes: 1 << 20,
            ..CowConfig::default()
        },
        CowMode::Ephemeral,
    )
    .await;
    assert!(matches!(e, Err(DiskError::Config(_))));
    let other = Arc::new(MemBlockStore::new(512));
    let e = CowDisk::new(base(8192), cfg(4), CowMode::Persistent(other)).await;
    assert!(matches!(e, Err(DiskError::Config(_))));

    let store = Arc::new(MemBlockStore::new(BS));
    store.write(vec![(2, vec![0; 4096])]).await.unwrap();
    let e = CowDisk::new(base(8192), cfg(4), CowMode::Persistent(store)).await;
    assert!(
        matches!(e, Err(DiskError::Store(_))),
        "block 2 is beyond a 2-block disk"
    );

    let short = Arc::new(MemBlockStore::new(BS));
    short.write(vec![(1, vec![0; 10])]).await.unwrap();
    let d = CowDisk::new(base(8192), cfg(4), CowMode::Persistent(short))
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    assert!(matches!(
        d.read(0, &mut buf).await,
        Err(DiskError::Store(_))
    ));
}
