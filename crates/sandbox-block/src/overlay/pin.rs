//! Pinning a disk's state for a checkpoint.
//!
//! With the VM paused (no request in flight), [`CowDisk::pin`] copies what
//! only memory holds (dirty and clean-cached blocks) and notes which blocks
//! only the store holds. The VM can then run on at once: until the pin is
//! dropped no write-back starts, so the store keeps exactly the pinned
//! state while [`Pinned::read_stored`] copies it out. The guest's writes
//! meanwhile stay dirty in memory; once the budget is full, writes and
//! flushes wait for the pin to go, as they would for a slow store.

use std::collections::HashSet;
use std::sync::Arc;

use super::{CowDisk, Inner, SavedBlock};
use crate::disk::DiskError;

/// A disk's state at one instant; see the module docs.
pub struct Pinned {
    inner: Arc<Inner>,
    /// Blocks whose current bytes were in memory, by index.
    pub memory: Vec<SavedBlock>,
    /// Blocks only the store holds, ascending: read them with [`Pinned::read_stored`].
    pub stored: Vec<u64>,
}

impl CowDisk {
    /// Pins the disk's state now. Consistent only while no request is in
    /// flight (a paused VM).
    pub fn pin(&self) -> Pinned {
        let mut st = self.inner.lock();
        st.wb.held += 1;
        let mut memory: Vec<SavedBlock> = st.dirty.iter().map(|(&i, d)| (i, d.data.clone())).collect();
        memory.extend(st.clean.iter().filter(|(i, _)| !st.dirty.contains_key(i)).map(|(i, c)| (i, c.clone())));
        let held: HashSet<u64> = memory.iter().map(|(i, _)| *i).collect();
        let mut stored: Vec<u64> = st.stored.iter().copied().filter(|i| !held.contains(i)).collect();
        stored.sort_unstable();
        memory.sort_unstable_by_key(|(i, _)| *i);
        Pinned { inner: self.inner.clone(), memory, stored }
    }
}

impl Pinned {
    pub fn block_size(&self) -> u64 {
        self.inner.bs
    }

    /// Reads pinned store blocks `first..first + count` (all of them listed
    /// in `stored`): the store's bytes as they were at the pin.
    pub async fn read_stored(&self, first: u64, count: u64) -> Result<Vec<SavedBlock>, DiskError> {
        let blocks = self.inner.store_read(first, count, true).await.map_err(DiskError::Store)?;
        let mut out = Vec::with_capacity(blocks.len());
        for (idx, block) in (first..).zip(blocks) {
            let data = block.ok_or(DiskError::Store(super::StoreFailure::Missing(idx)))?;
            out.push((idx, data));
        }
        Ok(out)
    }

    /// Runs of consecutive pinned store blocks, each at most `max` long.
    pub fn stored_runs(&self, max: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &idx in &self.stored {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == idx && *count < max => *count += 1,
                _ => runs.push((idx, 1)),
            }
        }
        runs
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.inner.lock().wb.held -= 1;
        // Writers and flushes waiting for room or write-back go on.
        self.inner.changed.notify_waiters();
        self.inner.kick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Disk;
    use crate::overlay::test_store::TestStore;
    use crate::overlay::{CowConfig, CowMode};
    use crate::testutil::mem_base;
    use std::time::Duration;

    const BS: usize = 4096;

    async fn disk(store: &Arc<TestStore>, budget_blocks: u64) -> CowDisk {
        let config = CowConfig {
            block_size: BS as u32,
            max_dirty_bytes: budget_blocks * BS as u64,
            // Only flushes and full budgets write back: the test decides when.
            write_back_age: Duration::from_secs(3600),
            ..CowConfig::default()
        };
        CowDisk::new(mem_base(16 * BS), config, CowMode::Persistent(store.clone())).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pin_keeps_the_store_unchanged_until_dropped() {
        let store = TestStore::new(BS as u32);
        let d = disk(&store, 2).await;
        for (i, b) in [(1u64, 1u8), (2, 2), (3, 3)] {
            d.write(i * BS as u64, &vec![b; BS]).await.unwrap();
        }
        d.flush().await.unwrap();
        d.write(2 * BS as u64, &vec![22; BS]).await.unwrap();
        let pin = d.pin();
        let in_memory: Vec<u64> = pin.memory.iter().map(|(i, _)| *i).collect();
        assert!(in_memory.contains(&2), "the dirty block is copied: {in_memory:?}");
        assert_eq!(pin.memory.iter().find(|(i, _)| *i == 2).unwrap().1[0], 22);
        let everything: HashSet<u64> = in_memory.iter().copied().chain(pin.stored.iter().copied()).collect();
        assert_eq!(everything, HashSet::from([1, 2, 3]), "each changed block once, from memory or the store");

        // The VM runs on: new writes stay in memory while the pin lives; once
        // the budget is full, writes and flushes wait for the pin.
        let events = store.events().len();
        d.write(BS as u64, &vec![11; BS]).await.unwrap();
        let full = tokio::spawn({
            let d = d.clone();
            async move { d.write(3 * BS as u64, &vec![33; BS]).await }
        });
        let flush = tokio::spawn({
            let d = d.clone();
            async move { d.flush().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!full.is_finished(), "a write past the budget waits for the pin");
        assert!(!flush.is_finished(), "a flush waits for the pin");
        assert_eq!(store.events().len(), events, "no store call while pinned");
        for (first, count) in pin.stored_runs(8) {
            for (idx, data) in pin.read_stored(first, count).await.unwrap() {
                assert_eq!(data[0], idx as u8, "block {idx} as it was at the pin");
            }
        }
        drop(pin);
        tokio::time::timeout(Duration::from_secs(5), full).await.unwrap().unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(5), flush).await.unwrap().unwrap().unwrap();
        for (idx, want) in [(1u64, 11u8), (2, 22), (3, 33)] {
            let mut buf = vec![0u8; BS];
            d.read(idx * BS as u64, &mut buf).await.unwrap();
            assert_eq!(buf[0], want, "block {idx} after the pin");
        }
    }

    #[test]
    fn runs_are_consecutive_and_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = TestStore::new(BS as u32);
            let d = disk(&store, 4).await;
            let mut pin = d.pin();
            pin.stored = vec![1, 2, 3, 4, 7, 9, 10];
            assert_eq!(pin.stored_runs(3), [(1, 3), (4, 1), (7, 1), (9, 2)]);
        });
    }
}
