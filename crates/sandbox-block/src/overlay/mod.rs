//! Block-granular copy-on-write over a read-only base image.
//!
//! A block is, in order of precedence: dirty (modified since its last
//! write-back, held in memory), clean-cached (fetched from or written to the
//! store, unmodified since), stored (held by the [`BlockStore`], fetched only
//! when the guest touches it) or clean base. Dirty plus cached blocks never
//! exceed the `max_dirty_bytes` budget: in ephemeral mode a write needing more
//! fails with `ENOSPC` before anything is changed; in persistent mode it
//! waits until write-back made room.
//!
//! The block table sits behind one synchronous mutex that is never held
//! across a store call (or any await): a request decides under it, calls the
//! store without it and re-checks on return. Per-block versions make that
//! safe (see `state.rs`); write-back runs in the background (`writeback.rs`),
//! concurrent store reads of a block are shared (`fetch.rs`). TRIM is
//! ignored (advisory in NBD; the old contents stay readable).

mod fetch;
mod mem_store;
mod pin;
mod state;
mod store;
#[cfg(test)]
pub(crate) mod test_store;
#[cfg(test)]
mod tests;
mod writeback;
#[cfg(test)]
mod writeback_tests;

pub use mem_store::{MemBlockStore, StoreOp};
pub use pin::Pinned;
pub use store::{BlockStore, StoreError, StoreFailure};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::base::BaseImage;
use crate::disk::{check_range, Disk, DiskError};
use fetch::Pending;
use state::State;
use writeback::Limits;

pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
pub const DEFAULT_MAX_DIRTY_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_WRITE_BACK_BATCH_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_WRITE_BACK_BATCHES: usize = 8;
pub const DEFAULT_WRITE_BACK_AGE: Duration = Duration::from_secs(1);
/// Zero-write chunk: bounds the buffer WRITE_ZEROES allocates.
const ZERO_CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct CowConfig {
    /// Power of two, 512 B ..= 16 MiB; must equal the store's block size.
    pub block_size: u32,
    /// Rounded down to a whole number of blocks; at least one block.
    pub max_dirty_bytes: u64,
    /// Largest write-back batch (one store `write`), in whole blocks (at
    /// least one). Also capped so that the batches in flight hold at most
    /// half the budget (but never less than one block each).
    pub write_back_batch_bytes: u64,
    /// Write-back batches in flight at once; at least one.
    pub write_back_batches: usize,
    /// Background write-back takes blocks unchanged for this long, so the
    /// blocks a guest keeps rewriting (journal, bitmaps) stay in memory until
    /// a flush or the budget needs them.
    pub write_back_age: Duration,
}

impl Default for CowConfig {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            max_dirty_bytes: DEFAULT_MAX_DIRTY_BYTES,
            write_back_batch_bytes: DEFAULT_WRITE_BACK_BATCH_BYTES,
            write_back_batches: DEFAULT_WRITE_BACK_BATCHES,
            write_back_age: DEFAULT_WRITE_BACK_AGE,
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
    /// Store `read` calls, and blocks they returned.
    pub store_reads: u64,
    pub store_blocks_read: u64,
    /// Requests that waited for a store read another request had issued.
    pub coalesced_reads: u64,
    /// Store `write` calls (write-back batches), and blocks in those that succeeded.
    pub store_writes: u64,
    pub store_blocks_written: u64,
    pub write_back_failures: u64,
    /// Most write-back batches in flight at once.
    pub write_back_peak_batches: u64,
    /// Guest writes that had to wait for write-back to make room.
    pub room_waits: u64,
    pub store_flushes: u64,
    pub dirty_bytes: u64,
    pub cached_bytes: u64,
    /// Bytes in write-back batches in flight now.
    pub write_back_bytes: u64,
}

/// A block's index and full contents, as a snapshot saves them.
pub type SavedBlock = (u64, Box<[u8]>);

/// Clones share one disk (the NBD server's and a checkpoint's view of it).
#[derive(Clone)]
pub struct CowDisk {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    base: Arc<dyn BaseImage>,
    store: Option<Arc<dyn BlockStore>>,
    size: u64,
    bs: u64,
    limits: Limits,
    /// Where write-back tasks run (persistent mode only).
    runtime: Option<Handle>,
    state: Mutex<State>,
    /// Signalled whenever a write-back ends: room, flush progress, failures.
    changed: Notify,
}

/// One block's share of a request.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// Offset within the request.
    pos: usize,
    idx: u64,
    /// Offset within the block.
    at: usize,
    len: usize,
}

/// The full contents of a block computed outside the mutex, valid while the
/// block's version is still `version`.
struct Prefetched {
    version: u64,
    data: Box<[u8]>,
}

/// Where a read piece's bytes come from when not copied under the lock.
#[derive(Debug, Clone, Copy)]
enum Src {
    Base,
    /// A new store read, not yet registered.
    Run,
    /// `pending[k]`.
    Fetch(usize),
}

enum Step {
    Done,
    /// Hands back what was prefetched, still usable after the wait.
    NeedRoom(Option<Prefetched>),
    NeedFetch(Pending),
    NeedBase(u64),
}

impl CowDisk {
    /// Build the disk; in persistent mode this lists the store's blocks once
    /// (their contents are fetched lazily) and must run inside a tokio
    /// runtime, where write-back tasks will be spawned.
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
        let budget = config.max_dirty_bytes / bs;
        if budget == 0 {
            return Err(DiskError::Config(format!(
                "maxDirtyBytes {} is smaller than one block ({bs})",
                config.max_dirty_bytes
            )));
        }
        let budget = usize::try_from(budget)
            .map_err(|_| DiskError::Config("maxDirtyBytes too large".into()))?;
        if config.write_back_batches == 0 {
            return Err(DiskError::Config(
                "at least one write-back batch must be allowed in flight".into(),
            ));
        }
        let batch = usize::try_from(config.write_back_batch_bytes / bs)
            .unwrap_or(usize::MAX)
            .max(1);
        let limits = Limits {
            batch_blocks: batch.min((budget / (2 * config.write_back_batches)).max(1)),
            max_batches: config.write_back_batches,
            background_age: config.write_back_age,
        };
        let size = base.size();
        let nblocks = size.div_ceil(bs);
        let mut stored = HashSet::new();
        let (store, runtime) = match mode {
            CowMode::Ephemeral => (None, None),
            CowMode::Persistent(store) => {
                if u64::from(store.block_size()) != bs {
                    return Err(DiskError::Config(format!(
                        "store block size {} differs from the disk's {bs}",
                        store.block_size()
                    )));
                }
                let runtime = Handle::try_current().map_err(|_| {
                    DiskError::Config("a persistent overlay needs a tokio runtime".into())
                })?;
                let listed = store
                    .list()
                    .await
                    .map_err(|e| DiskError::Store(StoreFailure::List(e)))?;
                for block in listed {
                    if block >= nblocks {
                        return Err(DiskError::Store(StoreFailure::ListedBeyondEnd {
                            block,
                            blocks: nblocks,
                        }));
                    }
                    stored.insert(block);
                }
                (Some(store), Some(runtime))
            }
        };
        let persistent = store.is_some();
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                store,
                size,
                bs,
                limits,
                runtime,
                state: Mutex::new(State::new(budget, stored, persistent)),
                changed: Notify::new(),
            }),
        })
    }

    pub fn block_size(&self) -> u64 {
        self.inner.bs
    }

    pub fn stats(&self) -> CowStats {
        self.inner.lock().stats(self.inner.bs)
    }

    /// The tokio runtime write-back runs on (persistent mode), where the
    /// store reads of [`Pinned::read_stored`] belong.
    pub fn runtime(&self) -> Option<&Handle> {
        self.inner.runtime.as_ref()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the table is
        // still structurally sound, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request `offset..offset + len` cut at block boundaries.
    fn pieces(&self, offset: u64, len: usize) -> impl Iterator<Item = Piece> {
        let bs = self.bs;
        let mut pos = 0usize;
        std::iter::from_fn(move || {
            if pos >= len {
                return None;
            }
            let off = offset + pos as u64;
            let at = (off % bs) as usize;
            let n = (bs as usize - at).min(len - pos);
            let piece = Piece {
                pos,
                idx: off / bs,
                at,
                len: n,
            };
            pos += n;
            Some(piece)
        })
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

    /// One store read, its answer checked: the store is trusted less than
    /// our own state.
    async fn store_read(&self, first: u64, count: u64, for_snapshot: bool) -> Result<Vec<Option<Box<[u8]>>>, StoreFailure> {
        let mut out: Vec<Option<Box<[u8]>>> = (0..count).map(|_| None).collect();
        let Some(store) = &self.store else {
            return Ok(out);
        };
        let chunks = if for_snapshot { store.read_for_snapshot(first, count).await } else { store.read(first, count).await };
        let chunks = chunks.map_err(|error| StoreFailure::Read { first, count, error })?;
        for (block, data) in chunks {
            let Some(slot) = block
                .checked_sub(first)
                .filter(|&i| i < count)
                .and_then(|i| out.get_mut(i as usize))
            else {
                return Err(StoreFailure::Unrequested { first, count, block });
            };
            if data.len() as u64 != self.bs {
                return Err(StoreFailure::BlockSize {
                    block,
                    len: data.len(),
                    expected: self.bs,
                });
            }
            *slot = Some(data.into_boxed_slice());
        }
        Ok(out)
    }

    async fn read(self: &Arc<Self>, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(self.size, offset, buf.len() as u64)?;
        // Pieces not copied under the lock, and where their bytes come from.
        let mut plan: Vec<(Piece, Src)> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        {
            let mut st = self.lock();
            let mut joined: HashMap<*const fetch::Fetch, usize> = HashMap::new();
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for p in self.pieces(offset, buf.len()) {
                let out = &mut buf[p.pos..p.pos + p.len];
                if let Some(d) = st.dirty.get(&p.idx) {
                    out.copy_from_slice(&d.data[p.at..p.at + p.len]);
                } else if let Some(c) = st.clean.get(p.idx) {
                    out.copy_from_slice(&c[p.at..p.at + p.len]);
                } else if !st.stored.contains(&p.idx) {
                    plan.push((p, Src::Base));
                } else if let Some(f) = st.joinable(p.idx) {
                    st.stats.coalesced_reads += 1;
                    let k = *joined.entry(Arc::as_ptr(&f)).or_insert_with(|| {
                        pending.push(Pending::Join(f.clone()));
                        pending.len() - 1
                    });
                    plan.push((p, Src::Fetch(k)));
                } else {
                    // Contiguous stored blocks share one store read.
                    match runs.last_mut() {
                        Some((first, count)) if *first + *count == p.idx => *count += 1,
                        _ => runs.push((p.idx, 1)),
                    }
                    plan.push((p, Src::Run));
                }
            }
            let mut run_of = HashMap::new();
            for (first, count) in runs {
                for i in first..first + count {
                    run_of.insert(i, pending.len());
                }
                pending.push(Pending::Own(st.start_fetch(first, count)));
            }
            for (p, src) in &mut plan {
                if let (Src::Run, Some(&k)) = (*src, run_of.get(&p.idx)) {
                    *src = Src::Fetch(k);
                }
            }
        }
        // Store reads go out first; base reads run while they are answered.
        let waits = join_all(pending.into_iter().map(|p| p.wait(self)));
        let (fetched, base) = tokio::join!(waits, async { self.read_base_pieces(offset, &plan, buf) });
        base?;
        for (p, src) in &plan {
            let k = match src {
                Src::Base => continue,
                Src::Fetch(k) => *k,
                // Every run was registered above; never answer with base bytes.
                Src::Run => usize::MAX,
            };
            let result = fetched.get(k).ok_or(DiskError::Store(StoreFailure::Abandoned))?;
            let f = result.as_ref().map_err(|e| DiskError::Store(e.clone()))?;
            let block = f.block(p.idx).map_err(DiskError::Store)?;
            buf[p.pos..p.pos + p.len].copy_from_slice(&block[p.at..p.at + p.len]);
        }
        Ok(())
    }

    /// Fill the base pieces of `plan`, adjacent ones in one base read.
    fn read_base_pieces(&self, offset: u64, plan: &[(Piece, Src)], buf: &mut [u8]) -> Result<(), DiskError> {
        let mut i = 0;
        while i < plan.len() {
            let (p, src) = plan[i];
            i += 1;
            if !matches!(src, Src::Base) {
                continue;
            }
            let start = p.pos;
            let mut end = p.pos + p.len;
            while i < plan.len() && matches!(plan[i].1, Src::Base) && plan[i].0.pos == end {
                end += plan[i].0.len;
                i += 1;
            }
            self.base.read_at(offset + start as u64, &mut buf[start..end])?;
        }
        Ok(())
    }

    fn try_write_piece(&self, st: &mut State, p: Piece, bytes: &[u8], pre: Option<Prefetched>) -> Step {
        if st.modify(p.idx, p.at, bytes) {
            return Step::Done;
        }
        if !st.has_room() {
            return Step::NeedRoom(pre);
        }
        let mut block = if p.len as u64 == self.bs {
            vec![0u8; p.len].into_boxed_slice()
        } else if let Some(b) = st.clean.remove(p.idx) {
            b
        } else if let Some(pre) = pre.filter(|pre| pre.version == st.version(p.idx)) {
            pre.data
        } else if st.stored.contains(&p.idx) {
            return Step::NeedFetch(match st.joinable(p.idx) {
                Some(f) => {
                    st.stats.coalesced_reads += 1;
                    Pending::Join(f)
                }
                None => Pending::Own(st.start_fetch(p.idx, 1)),
            });
        } else {
            return Step::NeedBase(st.version(p.idx));
        };
        block[p.at..p.at + p.len].copy_from_slice(bytes);
        st.install(p.idx, block);
        Step::Done
    }

    async fn write_persistent(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        for p in self.pieces(offset, data.len()) {
            let bytes = &data[p.pos..p.pos + p.len];
            let mut pre = None;
            loop {
                let step = {
                    let mut st = self.lock();
                    self.try_write_piece(&mut st, p, bytes, pre.take())
                };
                match step {
                    Step::Done => break,
                    Step::NeedRoom(kept) => {
                        pre = kept;
                        self.wait_for_room().await?;
                    }
                    Step::NeedFetch(wait) => {
                        let f = wait.wait(self).await.map_err(DiskError::Store)?;
                        let version = f.version(p.idx).ok_or(DiskError::Store(StoreFailure::Missing(p.idx)))?;
                        let data = f.block(p.idx).map_err(DiskError::Store)?;
                        pre = Some(Prefetched {
                            version,
                            data: data.into(),
                        });
                    }
                    Step::NeedBase(version) => {
                        pre = Some(Prefetched {
                            version,
                            data: self.read_base_block(p.idx)?,
                        });
                    }
                }
            }
        }
        self.kick();
        Ok(())
    }

    /// Ephemeral mode: the whole write under one lock (no store, so nothing
    /// to wait for), refused up front if it needs more new dirty blocks than
    /// the budget has left, so nothing is half-applied. `None`: zeroes.
    fn write_ephemeral(&self, offset: u64, len: usize, data: Option<&[u8]>) -> Result<(), DiskError> {
        let mut st = self.lock();
        self.check_budget(&st, offset, len as u64)?;
        let zeros = match data {
            Some(_) => Vec::new(),
            None => vec![0u8; len.min(self.bs as usize)],
        };
        for p in self.pieces(offset, len) {
            let bytes = match data {
                Some(d) => &d[p.pos..p.pos + p.len],
                None => &zeros[..p.len],
            };
            if st.modify(p.idx, p.at, bytes) {
                continue;
            }
            let mut block = if p.len as u64 == self.bs {
                vec![0u8; p.len].into_boxed_slice()
            } else {
                self.read_base_block(p.idx)?
            };
            block[p.at..p.at + p.len].copy_from_slice(bytes);
            st.install(p.idx, block);
        }
        Ok(())
    }

    fn check_budget(&self, st: &State, offset: u64, len: u64) -> Result<(), DiskError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / self.bs;
        let last = (offset + len - 1) / self.bs;
        let budget = st.budget() as u64;
        if last - first + 1 > budget {
            return Err(DiskError::NoSpace);
        }
        let free = budget - (st.dirty.len() as u64).min(budget);
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
        self.inner.size
    }

    fn read_only(&self) -> bool {
        false
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.inner.read(offset, buf).await
    }

    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        check_range(self.inner.size, offset, data.len() as u64)?;
        if self.inner.store.is_none() {
            return self.inner.write_ephemeral(offset, data.len(), Some(data));
        }
        self.inner.write_persistent(offset, data).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(self.inner.size, offset, len)?;
        if self.inner.store.is_none() {
            let len = usize::try_from(len).map_err(|_| DiskError::NoSpace)?;
            return self.inner.write_ephemeral(offset, len, None);
        }
        let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let n = (end - off).min(ZERO_CHUNK) as usize;
            self.inner.write_persistent(off, &zeros[..n]).await?;
            off += n as u64;
        }
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(self.inner.size, offset, len)
    }

    async fn flush(&self) -> Result<(), DiskError> {
        self.inner.flush().await
    }
}
