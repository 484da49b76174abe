//! The overlay with a store that hangs, fails or is slow: nothing waits on a
//! store call it does not need, no acknowledged write is lost, FLUSH is the
//! commit point.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::test_store::{Event, TestStore};
use super::*;
use crate::testutil::{mem_base, pattern};

const BS: u32 = 4096;
const B: usize = BS as usize;
const SIZE: usize = 64 * B;

fn config(budget_blocks: u64, batch_blocks: u64, batches: usize) -> CowConfig {
    CowConfig {
        block_size: BS,
        max_dirty_bytes: budget_blocks * u64::from(BS),
        write_back_batch_bytes: batch_blocks * u64::from(BS),
        write_back_batches: batches,
        // Eager, so tests see write-back as soon as a batch is dirty.
        write_back_age: Duration::ZERO,
    }
}

async fn disk(store: &Arc<TestStore>, cfg: CowConfig) -> Arc<CowDisk> {
    let store: Arc<dyn BlockStore> = store.clone();
    Arc::new(
        CowDisk::new(mem_base(SIZE), cfg, CowMode::Persistent(store))
            .await
            .unwrap(),
    )
}

/// Put blocks in the store, durably, before a disk is opened over it.
async fn seed(store: &TestStore, blocks: &[(u64, u8)]) {
    let blocks = blocks.iter().map(|&(i, v)| (i, vec![v; B])).collect();
    store.mem.write(blocks).await.unwrap();
    store.mem.flush().await.unwrap();
}

async fn block(d: &CowDisk, idx: u64) -> Vec<u8> {
    let mut buf = vec![0u8; B];
    d.read(idx * u64::from(BS), &mut buf).await.unwrap();
    buf
}

/// What the store makes of a power loss now: a fresh disk over what survived.
async fn after_crash(store: &Arc<TestStore>) -> Vec<u8> {
    store.mem.crash();
    let fresh = disk(store, config(64, 8, 4)).await;
    let mut all = vec![0u8; SIZE];
    fresh.read(0, &mut all).await.unwrap();
    all
}

/// Completes within a second or fails the test: "does not wait on the store".
async fn promptly<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(1), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} waited on a store call it does not need"),
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_cached_stored_and_dirty_io_completes_while_a_flush_hangs() {
    let store = TestStore::new(BS);
    seed(&store, &[(3, 0x33), (7, 0x77)]).await;
    let d = disk(&store, config(16, 4, 2)).await;
    assert_eq!(block(&d, 3).await, vec![0x33; B], "now cached");
    d.write(5 * u64::from(BS), &[0x55; B]).await.unwrap();

    store.flushes.hold();
    let flush = tokio::spawn({
        let d = d.clone();
        async move { d.flush().await }
    });
    eventually("the store flush", || store.flushes_started.load(Ordering::SeqCst) == 1).await;

    let base = pattern(SIZE);
    assert_eq!(promptly("a base read", block(&d, 0)).await, base[..B]);
    assert_eq!(promptly("a cached read", block(&d, 3)).await, vec![0x33; B]);
    assert_eq!(promptly("a dirty read", block(&d, 5)).await, vec![0x55; B]);
    assert_eq!(promptly("an uncached stored read", block(&d, 7)).await, vec![0x77; B]);
    promptly("a write", d.write(9 * u64::from(BS) + 1, &[9; 100])).await.unwrap();
    assert_eq!(promptly("a read of it", block(&d, 9)).await[1..101], [9; 100]);
    assert!(!flush.is_finished());

    store.flushes.release();
    flush.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_rewritten_during_its_write_back_keeps_the_newest_bytes() {
    let store = TestStore::new(BS);
    seed(&store, &[(7, 0x77)]).await;
    let d = disk(&store, config(16, 1, 4)).await;
    store.writes.hold();
    d.write(2 * u64::from(BS), &[1; B]).await.unwrap();
    eventually("the write-back of block 2", || store.writes_in_flight.load(Ordering::SeqCst) == 1).await;

    // Rewritten while the older copy is on its way to the store.
    d.write(2 * u64::from(BS), &[2; 10]).await.unwrap();
    let mut newest = vec![1u8; B];
    newest[..10].fill(2);
    assert_eq!(promptly("a read of the block in flight", block(&d, 2)).await, newest);
    assert_eq!(promptly("a stored read", block(&d, 7)).await, vec![0x77; B]);
    assert_eq!(promptly("a base read", block(&d, 4)).await, pattern(SIZE)[4 * B..5 * B]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let starts = store
        .events()
        .iter()
        .filter(|e| matches!(e, Event::WriteStart(b) if b.contains(&2)))
        .count();
    assert_eq!(starts, 1, "never two writes of one block in flight");

    store.writes.release();
    eventually("the first write-back", || store.events().contains(&Event::WriteDone(vec![2]))).await;
    assert_eq!(block(&d, 2).await, newest, "the older copy did not become the block");
    d.flush().await.unwrap();
    assert_eq!(after_crash(&store).await[2 * B..3 * B], newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_makes_every_acknowledged_write_durable_before_it_returns() {
    let store = TestStore::new(BS);
    store.set_write_delay(Duration::from_millis(3));
    let d = disk(&store, config(24, 2, 3)).await;
    let mut model = pattern(SIZE);
    let mut rng = 7u64;
    for round in 0..6u8 {
        // Several writes in flight at once, as the NBD server issues them.
        let mut writes = Vec::new();
        for k in 0..8u64 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let idx = (k * 4) + (rng >> 60) % 4; // distinct blocks in 0..32
            let at = ((rng >> 20) % 3) as usize * 1000;
            let len = if rng & 1 == 0 { B - at } else { 900 };
            let data = vec![round * 16 + k as u8 + 1; len];
            model[idx as usize * B + at..idx as usize * B + at + len].copy_from_slice(&data);
            let d = d.clone();
            writes.push(tokio::spawn(async move { d.write(idx * u64::from(BS) + at as u64, &data).await }));
        }
        for w in writes {
            w.await.unwrap().unwrap();
        }
        // Writes after the flush started (blocks 40..) need not be covered.
        let later = tokio::spawn({
            let d = d.clone();
            async move { d.write(u64::from(40 + round) * u64::from(BS), &[0xee; B]).await }
        });
        d.flush().await.unwrap();
        let durable = after_crash(&store).await;
        assert_eq!(durable[..32 * B], model[..32 * B], "round {round}");
        later.await.unwrap().unwrap();
        model[(40 + round as usize) * B..(41 + round as usize) * B].fill(0xee);
    }
    let mut all = vec![0u8; SIZE];
    d.read(0, &mut all).await.unwrap();
    assert_eq!(all, model);
}

#[tokio::test]
async fn the_store_flush_is_issued_after_the_writes_it_covers_resolved() {
    let store = TestStore::new(BS);
    store.set_write_delay(Duration::from_millis(5));
    let d = disk(&store, config(32, 2, 4)).await;
    for i in 0..7u64 {
        d.write(i * u64::from(BS), &[i as u8; B]).await.unwrap();
    }
    d.flush().await.unwrap();
    let events = store.events();
    let flush_at = events.iter().position(|e| *e == Event::FlushStart).unwrap();
    let mut done: Vec<u64> = events[..flush_at]
        .iter()
        .filter_map(|e| match e {
            Event::WriteDone(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    done.sort_unstable();
    assert_eq!(done, (0..7).collect::<Vec<_>>());
    // Nothing new since: the next flush does not call the store.
    d.flush().await.unwrap();
    assert_eq!(store.flushes_started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_write_back_keeps_its_blocks_dirty_and_fails_the_next_flush() {
    let store = TestStore::new(BS);
    let d = disk(&store, config(16, 2, 1)).await;
    store.fail_next_writes(1);
    d.write(0, &[1; 2 * B]).await.unwrap();
    eventually("the failed write-back", || d.stats().write_back_failures == 1).await;
    assert_eq!(d.stats().dirty_bytes, 2 * u64::from(BS), "still dirty");
    assert_eq!(block(&d, 1).await, vec![1; B]);

    // After a failure, background write-back waits for someone who needs it.
    d.write(2 * u64::from(BS), &[2; 2 * B]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(d.stats().store_writes, 1);

    // The flush writes everything (the store recovered) but reports the failure.
    assert!(matches!(d.flush().await, Err(DiskError::WriteBack(StoreFailure::Write { .. }))));
    assert_eq!(d.stats().dirty_bytes, 0);
    let durable = after_crash(&store).await;
    assert_eq!(durable[..2 * B], [1; 2 * B]);
    assert_eq!(durable[2 * B..4 * B], [2; 2 * B]);
    // Reported once.
    d.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_makes_writers_wait_for_write_back_room() {
    let store = TestStore::new(BS);
    let d = disk(&store, config(8, 1, 2)).await;
    store.writes.hold();
    let writer = tokio::spawn({
        let d = d.clone();
        async move {
            for i in 0..20u64 {
                d.write(i * u64::from(BS), &[i as u8 + 1; B]).await?;
            }
            Ok::<_, DiskError>(())
        }
    });
    eventually("a writer waiting for room", || d.stats().room_waits >= 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!writer.is_finished(), "backpressure, not ENOSPC and not a synchronous write-back");
    assert_eq!(d.stats().dirty_bytes, 8 * u64::from(BS));

    store.writes.release();
    while !writer.is_finished() {
        let s = d.stats();
        assert!(s.dirty_bytes + s.cached_bytes <= 8 * u64::from(BS));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.await.unwrap().unwrap();
    d.flush().await.unwrap();
    let durable = after_crash(&store).await;
    for i in 0..20usize {
        assert_eq!(durable[i * B..(i + 1) * B], vec![i as u8 + 1; B][..]);
    }
}

#[tokio::test]
async fn a_writer_waiting_for_room_fails_when_write_back_fails() {
    let store = TestStore::new(BS);
    let d = disk(&store, config(4, 1, 2)).await;
    store.fail_next_writes(usize::MAX);
    for i in 0..4u64 {
        d.write(i * u64::from(BS), &[7; B]).await.unwrap();
    }
    let r = d.write(4 * u64::from(BS), &[8; B]).await;
    assert!(matches!(r, Err(DiskError::Store(StoreFailure::Write { .. }))), "{r:?}");
    assert_eq!(d.stats().dirty_bytes, 4 * u64::from(BS));
    assert_eq!(block(&d, 3).await, vec![7; B]);

    store.fail_next_writes(0);
    d.write(4 * u64::from(BS), &[8; B]).await.unwrap();
    assert!(matches!(d.flush().await, Err(DiskError::WriteBack(_))));
    let durable = after_crash(&store).await;
    assert_eq!(durable[..4 * B], [7; 4 * B]);
    assert_eq!(durable[4 * B..5 * B], [8; B]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_runs_in_batches_while_the_guest_keeps_writing() {
    let store = TestStore::new(BS);
    let d = disk(&store, config(64, 4, 4)).await;
    store.writes.hold();
    for i in 0..8u64 {
        d.write(i * u64::from(BS), &[1; B]).await.unwrap();
    }
    eventually("two batches in flight", || store.writes_in_flight.load(Ordering::SeqCst) == 2).await;
    // The store is stuck on those; the guest is not.
    for i in 8..24u64 {
        promptly("a write within the budget", d.write(i * u64::from(BS), &[2; B])).await.unwrap();
    }
    eventually("four batches in flight", || store.writes_in_flight.load(Ordering::SeqCst) == 4).await;
    assert_eq!(d.stats().write_back_peak_batches, 4);
    assert_eq!(d.stats().write_back_bytes, 16 * u64::from(BS));

    store.writes.release();
    eventually("write-back of every full batch", || d.stats().dirty_bytes == 0).await;
    assert_eq!(d.stats().store_writes, 6, "24 blocks in batches of 4");
    assert_eq!(store.flushes_started.load(Ordering::SeqCst), 0, "write-back is not a flush");
    d.flush().await.unwrap();
    let durable = after_crash(&store).await;
    assert_eq!(durable[..8 * B], [1; 8 * B]);
    assert_eq!(durable[8 * B..24 * B], [2; 16 * B]);
}

#[tokio::test]
async fn background_write_back_leaves_recently_changed_blocks_in_memory() {
    let store = TestStore::new(BS);
    let cfg = CowConfig {
        write_back_age: Duration::from_millis(100),
        ..config(16, 2, 4)
    };
    let d = disk(&store, cfg).await;
    for i in 0..4u64 {
        d.write(i * u64::from(BS), &[1; B]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Blocks 0 and 1 are rewritten: 2 and 3 are now the oldest.
    d.write(0, &[2; 2 * B]).await.unwrap();
    eventually("the batch of blocks 2 and 3", || d.stats().store_blocks_written == 2).await;
    assert_eq!(store.events()[0], Event::WriteStart(vec![2, 3]));
    assert_eq!(d.stats().dirty_bytes, 2 * u64::from(BS), "the hot blocks stay dirty");
    tokio::time::sleep(Duration::from_millis(150)).await;
    d.write(8 * u64::from(BS), &[3; B]).await.unwrap();
    eventually("the next batch", || d.stats().store_blocks_written == 4).await;
    assert_eq!(store.events()[2], Event::WriteStart(vec![0, 1]));
    d.flush().await.unwrap();
    assert_eq!(d.stats().dirty_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_a_stored_block_share_one_store_read() {
    let store = TestStore::new(BS);
    seed(&store, &[(3, 0x33), (4, 0x44)]).await;
    let d = disk(&store, config(16, 4, 2)).await;
    store.hold_reads(1);
    let first = tokio::spawn({
        let d = d.clone();
        async move {
            let mut buf = vec![0u8; 2 * B];
            d.read(3 * u64::from(BS), &mut buf).await.map(|()| buf)
        }
    });
    eventually("the store read", || store.events().contains(&Event::Read(3, 2))).await;
    let second = tokio::spawn({
        let d = d.clone();
        async move {
            let mut buf = vec![0u8; 100];
            d.read(4 * u64::from(BS) + 50, &mut buf).await.map(|()| buf)
        }
    });
    eventually("the second reader to join", || d.stats().coalesced_reads == 1).await;
    store.release_reads();
    let a = first.await.unwrap().unwrap();
    assert_eq!(a[..B], [0x33; B]);
    assert_eq!(a[B..], [0x44; B]);
    assert_eq!(second.await.unwrap().unwrap(), vec![0x44; 100]);
    assert_eq!(d.stats().store_reads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_write_waiting_for_a_store_read_lands_on_a_concurrent_full_write() {
    let store = TestStore::new(BS);
    seed(&store, &[(3, 0x33)]).await;
    let d = disk(&store, config(16, 4, 2)).await;
    store.hold_reads(1);
    let partial = tokio::spawn({
        let d = d.clone();
        async move { d.write(3 * u64::from(BS) + 10, &[1; 10]).await }
    });
    eventually("the store read", || store.events().contains(&Event::Read(3, 1))).await;
    promptly("a full-block write", d.write(3 * u64::from(BS), &[2; B])).await.unwrap();
    store.release_reads();
    partial.await.unwrap().unwrap();
    let mut want = vec![2u8; B];
    want[10..20].fill(1);
    assert_eq!(block(&d, 3).await, want, "both writes landed");
    d.flush().await.unwrap();
    assert_eq!(after_crash(&store).await[3 * B..4 * B], want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_read_issued_before_a_write_never_answers_later_reads() {
    let store = TestStore::new(BS);
    seed(&store, &[(3, 0x33)]).await;
    // A budget of one block: block 3 is evicted as soon as another is dirty.
    let d = disk(&store, config(1, 1, 1)).await;
    store.hold_reads(1);
    let early = tokio::spawn({
        let d = d.clone();
        async move { block(&d, 3).await }
    });
    eventually("the store read", || store.events().contains(&Event::Read(3, 1))).await;
    d.write(3 * u64::from(BS), &[4; B]).await.unwrap();
    d.flush().await.unwrap();
    d.write(5 * u64::from(BS), &[5; B]).await.unwrap();
    assert_eq!(
        promptly("a read issued after the write", block(&d, 3)).await,
        vec![4; B],
        "it must not join the read issued before the write"
    );
    let reads = store.events().iter().filter(|e| **e == Event::Read(3, 1)).count();
    assert_eq!(reads, 2, "block 3 was evicted, so that was a store read of its own");
    store.release_reads();
    // The early reader was concurrent with the write: either answer is fine.
    let e = early.await.unwrap();
    assert!(e == vec![0x33; B] || e == vec![4; B]);
    assert_eq!(block(&d, 3).await, vec![4; B], "a read issued later sees the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_write_never_merges_into_bytes_read_before_a_newer_write() {
    let store = TestStore::new(BS);
    seed(&store, &[(3, 0x33)]).await;
    let d = disk(&store, config(2, 1, 1)).await;
    store.hold_reads(1);
    let partial = tokio::spawn({
        let d = d.clone();
        async move { d.write(3 * u64::from(BS) + 10, &[1; 10]).await }
    });
    eventually("the store read", || store.events().contains(&Event::Read(3, 1))).await;
    // Block 3 is rewritten, stored and evicted while that read is out.
    d.write(3 * u64::from(BS), &[2; B]).await.unwrap();
    d.flush().await.unwrap();
    d.write(5 * u64::from(BS), &[5; B]).await.unwrap();
    d.write(6 * u64::from(BS), &[6; B]).await.unwrap();
    d.flush().await.unwrap();
    store.release_reads();
    partial.await.unwrap().unwrap();
    let mut want = vec![2u8; B];
    want[10..20].fill(1);
    assert_eq!(block(&d, 3).await, want, "merged into the newer bytes, not the stale read");
}

#[tokio::test]
async fn trim_changes_nothing_and_calls_no_store() {
    let store = TestStore::new(BS);
    seed(&store, &[(3, 0x33)]).await;
    let d = disk(&store, config(16, 4, 2)).await;
    d.write(0, &[1; B]).await.unwrap();
    d.trim(0, 8 * u64::from(BS)).await.unwrap();
    assert_eq!(block(&d, 0).await, vec![1; B]);
    assert_eq!(block(&d, 3).await, vec![0x33; B]);
    assert!(store.events().iter().all(|e| matches!(e, Event::Read(..))));
}

/// Several writers on disjoint regions, readers checking their own bytes,
/// flushes in between, a slow store that sometimes fails: the disk always
/// reads back what was acknowledged, and after a final flush so does a
/// fresh disk over what survives a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workload_matches_a_model() {
    let store = TestStore::new(BS);
    store.set_write_delay(Duration::from_millis(1));
    seed(&store, &[(1, 0x11), (20, 0x20), (40, 0x40), (60, 0x60)]).await;
    let d = disk(&store, config(12, 2, 3)).await;
    let initial = {
        let mut all = vec![0u8; SIZE];
        d.read(0, &mut all).await.unwrap();
        all
    };
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let d = d.clone();
        let store = store.clone();
        let mut model = initial[(t as usize * 16) * B..(t as usize + 1) * 16 * B].to_vec();
        tasks.push(tokio::spawn(async move {
            let mut rng = t + 1;
            let region = t * 16 * u64::from(BS);
            for step in 0..150u32 {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let off = ((rng >> 33) % (16 * u64::from(BS))) as usize;
                let len = (((rng >> 13) % (3 * u64::from(BS))) as usize).min(16 * B - off).max(1);
                match rng % 10 {
                    0 => {
                        let _ = d.flush().await;
                    }
                    1 => store.fail_next_writes(1),
                    2 | 3 => {
                        let mut buf = vec![0u8; len];
                        d.read(region + off as u64, &mut buf).await.unwrap();
                        assert_eq!(buf, model[off..off + len], "task {t} step {step}");
                    }
                    _ => {
                        let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ step) as u8).collect();
                        // A write that failed for lack of room is retried, so the
                        // model stays exact.
                        while d.write(region + off as u64, &data).await.is_err() {}
                        model[off..off + len].copy_from_slice(&data);
                    }
                }
            }
            model
        }));
    }
    let mut model = Vec::new();
    for t in tasks {
        model.extend(t.await.unwrap());
    }
    store.fail_next_writes(0);
    let mut all = vec![0u8; SIZE];
    d.read(0, &mut all).await.unwrap();
    assert_eq!(all, model);
    while d.flush().await.is_err() {}
    assert_eq!(after_crash(&store).await, model);
}
