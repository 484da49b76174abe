//! Block-granular copy-on-write over a read-only base image.
//!
//! A block is, in order of precedence: dirty (modified since the last
//! write-back, held in memory), clean-cached (fetched from or written to the
//! store, unmodified since), stored (held by the [`BlockStore`], fetched only
//! when the guest touches it) or clean base. Dirty plus cached blocks never
//! exceed the `max_dirty_bytes` budget: in ephemeral mode a write needing more
//! fails with `ENOSPC` before anything is changed; in persistent mode reaching
//! the budget writes every dirty block to the store first.
//!
//! All requests are serialized by one async mutex, held across store calls:
//! simple, and a write-back can never interleave with a write to the same
//! block. TRIM is ignored (advisory in NBD; the old contents stay readable).

mod mem_store;
mod store;
#[cfg(test)]
mod tests;

pub use mem_store::{MemBlockStore, StoreOp};
pub use store::{BlockStore, StoreError};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::base::BaseImage;
use crate::cache::Fifo;
use crate::disk::{check_range, Disk, DiskError};

pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
pub const DEFAULT_MAX_DIRTY_BYTES: u64 = 64 * 1024 * 1024;
/// Zero-write chunk: bounds the buffer WRITE_ZEROES allocates.
const ZERO_CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct CowConfig {
    /// Power of two, 512 B ..= 16 MiB; must equal the store's block size.
    pub block_size: u32,
    /// Rounded down to a whole number of blocks; at least one block.
    pub max_dirty_bytes: u64,
}

impl Default for CowConfig {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            max_dirty_bytes: DEFAULT_MAX_DIRTY_BYTES,
        }
    }
}

pub enum CowMode {
    /// Dirty blocks live in memory only and vanish with the disk.
    Ephemeral,
    /// Dirty blocks are written back to this store.
    Persistent(Arc<dyn BlockStore>),
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CowStats {
    pub store_reads: u64,
    pub store_blocks_read: u64,
    pub store_writes: u64,
    pub store_blocks_written: u64,
    pub store_flushes: u64,
    pub dirty_bytes: u64,
    pub cached_bytes: u64,
}

#[derive(Default)]
struct Counters {
    store_reads: AtomicU64,
    store_blocks_read: AtomicU64,
    store_writes: AtomicU64,
    store_blocks_written: AtomicU64,
    store_flushes: AtomicU64,
    dirty_bytes: AtomicU64,
    cached_bytes: AtomicU64,
}

struct State {
    dirty: HashMap<u64, Box<[u8]>>,
    clean: Fifo<Box<[u8]>>,
    stored: HashSet<u64>,
}

pub struct CowDisk {
    base: Arc<dyn BaseImage>,
    store: Option<Arc<dyn BlockStore>>,
    size: u64,
    bs: u64,
    budget_blocks: usize,
    state: Mutex<State>,
    counters: Counters,
}

fn store_err(e: StoreError) -> DiskError {
    DiskError::Store(e.0)
}

impl CowDisk {
    /// Build the disk; in persistent mode this lists the store's blocks once
    /// (their contents are fetched lazily).
    pub async fn new(
        base: Arc<dyn BaseImage>,
        config: CowConfig,
        mode: CowMode,
    ) -> Result<Self, DiskError> {
        let bs = u64::from(config.block_size);
        if !bs.is_power_of_two() || !(512..=16 << 20).contains(&bs) {
            return Err(DiskError::Config(format!(
                "block size {bs} is not a power of two in 512..=16MiB"
            )));
        }
        let budget_blocks = config.max_dirty_bytes / bs;
        if budget_blocks == 0 {
            return Err(DiskError::Config(format!(
                "maxDirtyBytes {} is smaller than one block ({bs})",
                config.max_dirty_bytes
            )));
        }
        let budget_blocks = usize::try_from(budget_blocks)
            .map_err(|_| DiskError::Config("maxDirtyBytes too large".into()))?;
        let size = base.size();
        let nblocks = size.div_ceil(bs);
        let mut stored = HashSet::new();
        let store = match mode {
            CowMode::Ephemeral => None,
            CowMode::Persistent(store) => {
                if u64::from(store.block_size()) != bs {
                    return Err(DiskError::Config(format!(
                        "store block size {} differs from the disk's {bs}",
                        store.block_size()
                    )));
                }
                for idx in store.list().await.map_err(store_err)? {
                    if idx >= nblocks {
                        return Err(DiskError::Store(format!(
                            "store lists block {idx} but the disk has {nblocks} blocks"
                        )));
                    }
                    stored.insert(idx);
                }
                Some(store)
            }
        };
        Ok(Self {
            base,
            store,
            size,
            bs,
            budget_blocks,
            state: Mutex::new(State {
                dirty: HashMap::new(),
                clean: Fifo::new(budget_blocks),
                stored,
            }),
            counters: Counters::default(),
        })
    }

    pub fn block_size(&self) -> u64 {
        self.bs
    }

    pub fn stats(&self) -> CowStats {
        let c = &self.counters;
        CowStats {
            store_reads: c.store_reads.load(Ordering::Relaxed),
            store_blocks_read: c.store_blocks_read.load(Ordering::Relaxed),
            store_writes: c.store_writes.load(Ordering::Relaxed),
            store_blocks_written: c.store_blocks_written.load(Ordering::Relaxed),
            store_flushes: c.store_flushes.load(Ordering::Relaxed),
            dirty_bytes: c.dirty_bytes.load(Ordering::Relaxed),
            cached_bytes: c.cached_bytes.load(Ordering::Relaxed),
        }
    }

    /// Keep dirty + cached within the budget and the gauges current.
    fn rebalance(&self, st: &mut State) {
        st.clean
            .set_cap(self.budget_blocks.saturating_sub(st.dirty.len()));
        let c = &self.counters;
        c.dirty_bytes
            .store(st.dirty.len() as u64 * self.bs, Ordering::Relaxed);
        c.cached_bytes
            .store(st.clean.len() as u64 * self.bs, Ordering::Relaxed);
    }

    /// Bytes of block `idx` that lie within the disk (the last may be short).
    fn valid_len(&self, idx: u64) -> usize {
        (self.size - idx * self.bs).min(self.bs) as usize
    }

    fn read_base_block(&self, idx: u64) -> Result<Box<[u8]>, DiskError> {
        let mut buf = vec![0u8; self.bs as usize].into_boxed_slice();
        let n = self.valid_len(idx);
        self.base.read_at(idx * self.bs, &mut buf[..n])?;
        Ok(buf)
    }

    /// Fetch stored blocks `first..first+count` that the caller needs.
    async fn fetch(&self, first: u64, count: u64) -> Result<Vec<(u64, Box<[u8]>)>, DiskError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        self.counters.store_reads.fetch_add(1, Ordering::Relaxed);
        let chunks = store.read(first, count).await.map_err(store_err)?;
        let mut out = Vec::with_capacity(count as usize);
        for (idx, data) in chunks {
            // The store is trusted less than our own state: check its answer.
            if idx < first || idx - first >= count {
                return Err(DiskError::Store(format!(
                    "store returned unrequested block {idx}"
                )));
            }
            if data.len() as u64 != self.bs {
                return Err(DiskError::Store(format!(
                    "store returned {} bytes for block {idx}, expected {}",
                    data.len(),
                    self.bs
                )));
            }
            out.push((idx, data.into_boxed_slice()));
        }
        self.counters
            .store_blocks_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Current contents of a block not in the dirty set, taken out of the cache.
    async fn take_block(&self, st: &mut State, idx: u64) -> Result<Box<[u8]>, DiskError> {
        if let Some(b) = st.clean.remove(idx) {
            return Ok(b);
        }
        if st.stored.contains(&idx) {
            return self
                .fetch(idx, 1)
                .await?
                .into_iter()
                .find(|(i, _)| *i == idx)
                .map(|(_, b)| b)
                .ok_or_else(|| DiskError::Store(format!("store lost listed block {idx}")));
        }
        self.read_base_block(idx)
    }

    /// Write every dirty block to the store; they become clean-cached.
    async fn write_back(&self, st: &mut State) -> Result<(), DiskError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        if st.dirty.is_empty() {
            return Ok(());
        }
        let mut idxs: Vec<u64> = st.dirty.keys().copied().collect();
        idxs.sort_unstable();
        let blocks: Vec<(u64, Vec<u8>)> = idxs
            .iter()
            .filter_map(|i| st.dirty.get(i).map(|b| (*i, b.to_vec())))
            .collect();
        self.counters.store_writes.fetch_add(1, Ordering::Relaxed);
        // Dirty blocks are only released once the store accepted them.
        store.write(blocks).await.map_err(store_err)?;
        self.counters
            .store_blocks_written
            .fetch_add(idxs.len() as u64, Ordering::Relaxed);
        st.clean.set_cap(self.budget_blocks);
        for idx in idxs {
            if let Some(b) = st.dirty.remove(&idx) {
                st.clean.insert(idx, b);
                st.stored.insert(idx);
            }
        }
        self.rebalance(st);
        Ok(())
    }

    async fn write_locked(
        &self,
        st: &mut State,
        offset: u64,
        data: &[u8],
    ) -> Result<(), DiskError> {
        let mut off = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = off / self.bs;
            let in_block = (off % self.bs) as usize;
            let n = (self.bs as usize - in_block).min(rest.len());
            let (now, later) = rest.split_at(n);
            if !st.dirty.contains_key(&idx) {
                if st.dirty.len() >= self.budget_blocks {
                    if self.store.is_none() {
                        return Err(DiskError::NoSpace);
                    }
                    self.write_back(st).await?;
                }
                let block = if n as u64 == self.bs {
                    st.clean.remove(idx);
                    vec![0u8; self.bs as usize].into_boxed_slice()
                } else {
                    self.take_block(st, idx).await?
                };
                st.dirty.insert(idx, block);
                self.rebalance(st);
            }
            if let Some(block) = st.dirty.get_mut(&idx) {
                block[in_block..in_block + n].copy_from_slice(now);
            }
            off += n as u64;
            rest = later;
        }
        Ok(())
    }

    /// Ephemeral mode: refuse up front a write that needs more new dirty
    /// blocks than the budget has left, so nothing is half-applied.
    fn check_budget(&self, st: &State, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.store.is_some() || len == 0 {
            return Ok(());
        }
        let first = offset / self.bs;
        let last = (offset + len - 1) / self.bs;
        let span = last - first + 1;
        let free = (self.budget_blocks - st.dirty.len().min(self.budget_blocks)) as u64;
        if span > self.budget_blocks as u64 {
            return Err(DiskError::NoSpace);
        }
        let new = (first..=last).filter(|i| !st.dirty.contains_key(i)).count() as u64;
        if new > free {
            return Err(DiskError::NoSpace);
        }
        Ok(())
    }
}

#[async_trait]
impl Disk for CowDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        false
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.size, offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock().await;
        let first = offset / self.bs;
        let last = (offset + buf.len() as u64 - 1) / self.bs;

        // Fetch stored, uncached blocks in contiguous runs: one store call per run.
        let mut fetched: HashMap<u64, Box<[u8]>> = HashMap::new();
        let mut idx = first;
        while idx <= last {
            let missing = |i: u64, st: &State| {
                st.stored.contains(&i) && !st.dirty.contains_key(&i) && !st.clean.contains(i)
            };
            if !missing(idx, &st) {
                idx += 1;
                continue;
            }
            let run_start = idx;
            while idx <= last && missing(idx, &st) {
                idx += 1;
            }
            for (i, b) in self.fetch(run_start, idx - run_start).await? {
                fetched.insert(i, b);
            }
            for i in run_start..idx {
                if !fetched.contains_key(&i) {
                    return Err(DiskError::Store(format!("store lost listed block {i}")));
                }
            }
        }

        let mut off = offset;
        let mut pos = 0usize;
        while pos < buf.len() {
            let idx = off / self.bs;
            let in_block = (off % self.bs) as usize;
            let n = (self.bs as usize - in_block).min(buf.len() - pos);
            let out = &mut buf[pos..pos + n];
            let src = st
                .dirty
                .get(&idx)
                .or_else(|| st.clean.get(idx))
                .or_else(|| fetched.get(&idx));
            match src {
                Some(block) => out.copy_from_slice(&block[in_block..in_block + n]),
                None => self.base.read_at(off, out)?,
            }
            off += n as u64;
            pos += n;
        }
        for (i, b) in fetched {
            st.clean.insert(i, b);
        }
        self.rebalance(&mut st);
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        check_range(self.size, offset, data.len() as u64)?;
        let mut st = self.state.lock().await;
        self.check_budget(&st, offset, data.len() as u64)?;
        self.write_locked(&mut st, offset, data).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(self.size, offset, len)?;
        let mut st = self.state.lock().await;
        self.check_budget(&st, offset, len)?;
        let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let n = (end - off).min(ZERO_CHUNK) as usize;
            self.write_locked(&mut st, off, &zeros[..n]).await?;
            off += n as u64;
        }
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(self.size, offset, len)
    }

    async fn flush(&self) -> Result<(), DiskError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut st = self.state.lock().await;
        self.write_back(&mut st).await?;
        self.counters.store_flushes.fetch_add(1, Ordering::Relaxed);
        store.flush().await.map_err(store_err)
    }
}
