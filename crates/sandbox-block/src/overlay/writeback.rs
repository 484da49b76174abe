//! Write-back of dirty blocks: bounded batches written in the background,
//! several in flight, while requests keep running.
//!
//! A batch copies its blocks and records their versions under the mutex, then
//! calls the store without it. When the write resolves, each block whose
//! version is unchanged becomes clean; a block the guest rewrote meanwhile
//! stays dirty and is ordered again. A failed batch leaves its blocks dirty,
//! fails the writers waiting for room and is reported by the next flush.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use super::state::State;
use super::store::StoreFailure;
use super::Inner;
use crate::disk::DiskError;

/// Batch size and concurrency, derived from the configuration and budget.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub batch_blocks: usize,
    pub max_batches: usize,
    /// Background write-back takes blocks unchanged for this long.
    pub background_age: Duration,
}

pub(super) struct Batch {
    /// (block, version carried), ascending by block.
    blocks: Vec<(u64, u64)>,
    data: Vec<(u64, Vec<u8>)>,
}

impl State {
    /// The batches to start now: full batches of blocks unchanged for
    /// `background_age`, least recently changed first; anything dirty while
    /// a flush or a writer needs it. After a failure only urgent write-back
    /// runs, so a failing store is retried when someone needs it rather
    /// than in a loop.
    pub fn take_batches(&mut self, limits: Limits) -> Vec<Batch> {
        let mut out = Vec::new();
        if self.wb.held > 0 {
            return out;
        }
        while self.wb.batches < limits.max_batches && !self.order.is_empty() {
            if self.wb.urgent == 0 && !self.background_batch_due(limits) {
                break;
            }
            let mut blocks = Vec::with_capacity(limits.batch_blocks.min(self.order.len()));
            while blocks.len() < limits.batch_blocks {
                let Some((_, idx)) = self.order.pop_first() else {
                    break;
                };
                let version = self.version(idx);
                if let Some(d) = self.dirty.get_mut(&idx) {
                    d.writing = Some(version);
                    blocks.push((idx, version));
                }
            }
            if blocks.is_empty() {
                break;
            }
            blocks.sort_unstable();
            let data = blocks
                .iter()
                .filter_map(|&(i, _)| self.dirty.get(&i).map(|d| (i, d.data.to_vec())))
                .collect();
            self.wb.batches += 1;
            self.wb.blocks += blocks.len();
            self.stats.store_writes += 1;
            self.stats.write_back_peak_batches =
                self.stats.write_back_peak_batches.max(self.wb.batches as u64);
            out.push(Batch { blocks, data });
        }
        out
    }

    /// A full batch of blocks old enough, and the store not failing.
    fn background_batch_due(&self, limits: Limits) -> bool {
        if self.wb.failures != self.wb.recovered || self.order.len() < limits.batch_blocks {
            return false;
        }
        // Ordered by last change: the batch's youngest block decides.
        self.order
            .values()
            .nth(limits.batch_blocks - 1)
            .and_then(|idx| self.dirty.get(idx))
            .is_some_and(|d| d.touched.elapsed() >= limits.background_age)
    }

    /// Account for a batch that ended.
    fn finish_batch(&mut self, blocks: &[(u64, u64)], result: Result<(), StoreFailure>) {
        self.wb.batches -= 1;
        self.wb.blocks -= blocks.len();
        match result {
            Ok(()) => {
                self.wb.written_gen += 1;
                self.wb.recovered = self.wb.failures;
                self.stats.store_blocks_written += blocks.len() as u64;
                for &(idx, version) in blocks {
                    self.stored.insert(idx);
                    let v = self.versions.entry(idx).or_default();
                    v.written = v.written.max(version);
                    let unchanged = v.current == version;
                    if unchanged {
                        if let Some(d) = self.dirty.remove(&idx) {
                            self.rebalance();
                            self.cache(idx, d.data);
                        }
                    } else if let Some(d) = self.dirty.get_mut(&idx) {
                        d.writing = None;
                        self.order.insert(d.seq, idx);
                    }
                }
            }
            Err(e) => {
                for &(idx, _) in blocks {
                    if let Some(d) = self.dirty.get_mut(&idx) {
                        d.writing = None;
                        self.order.insert(d.seq, idx);
                    }
                }
                self.wb.failures += 1;
                self.stats.write_back_failures += 1;
                self.wb.unreported.get_or_insert_with(|| e.clone());
                self.wb.last_failure = Some(e);
            }
        }
        self.rebalance();
    }
}

/// Marks the disk as needing write-back now while it lives.
struct Urgent<'a>(&'a Inner);

impl<'a> Urgent<'a> {
    fn new(inner: &'a Inner, st: &mut State) -> Self {
        st.wb.urgent += 1;
        Urgent(inner)
    }
}

impl Drop for Urgent<'_> {
    fn drop(&mut self) {
        self.0.lock().wb.urgent -= 1;
    }
}

/// Ends a batch as abandoned if its task is dropped before the store
/// answered (runtime shutdown), so its blocks do not stay "in flight".
struct BatchGuard<'a> {
    inner: &'a Inner,
    blocks: Option<Vec<(u64, u64)>>,
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        if let Some(blocks) = self.blocks.take() {
            self.inner
                .lock()
                .finish_batch(&blocks, Err(StoreFailure::Abandoned));
            self.inner.changed.notify_waiters();
        }
    }
}

impl Inner {
    /// Start the batches [`State::take_batches`] picked, each on its own task.
    pub(super) fn spawn_batches(self: &Arc<Self>, batches: Vec<Batch>) {
        let Some(rt) = &self.runtime else {
            return;
        };
        for batch in batches {
            rt.spawn(self.clone().run_batch(batch));
        }
    }

    /// Start whatever write-back is due now.
    pub(super) fn kick(self: &Arc<Self>) {
        let batches = self.lock().take_batches(self.limits);
        self.spawn_batches(batches);
    }

    async fn run_batch(self: Arc<Self>, batch: Batch) {
        let Batch { blocks, data } = batch;
        let mut guard = BatchGuard {
            inner: &self,
            blocks: Some(blocks),
        };
        let result = match &self.store {
            Some(store) => {
                let n = data.len();
                store
                    .write(data)
                    .await
                    .map_err(|error| StoreFailure::Write { blocks: n, error })
            }
            None => Ok(()),
        };
        let Some(blocks) = guard.blocks.take() else {
            return;
        };
        let next = {
            let mut st = self.lock();
            let ok = result.is_ok();
            st.finish_batch(&blocks, result);
            if ok {
                st.take_batches(self.limits)
            } else {
                Vec::new()
            }
        };
        self.changed.notify_waiters();
        self.spawn_batches(next);
    }

    /// Wait until a new dirty block fits the budget, writing back as needed.
    /// Fails if a write-back fails meanwhile: the store could not make room.
    pub(super) async fn wait_for_room(self: &Arc<Self>) -> Result<(), DiskError> {
        let (_urgent, failures) = {
            let mut st = self.lock();
            st.stats.room_waits += 1;
            let failures = st.wb.failures;
            (Urgent::new(self, &mut st), failures)
        };
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let batches = {
                let mut st = self.lock();
                if st.has_room() {
                    return Ok(());
                }
                if st.wb.failures != failures {
                    let e = st.wb.last_failure.clone().unwrap_or(StoreFailure::Abandoned);
                    return Err(DiskError::Store(e));
                }
                st.take_batches(self.limits)
            };
            self.spawn_batches(batches);
            changed.await;
        }
    }

    /// NBD FLUSH: every block dirty now reaches the store, then the store
    /// flushes. A write-back failure since the last flush makes this one
    /// fail (after still trying to write and flush everything).
    pub(super) async fn flush(self: &Arc<Self>) -> Result<(), DiskError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (urgent, mut pending, earlier, failures) = {
            let mut st = self.lock();
            let urgent = Urgent::new(self, &mut st);
            (urgent, st.snapshot(), st.wb.unreported.take(), st.wb.failures)
        };
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let batches = {
                let mut st = self.lock();
                pending.retain(|&(idx, version)| st.written(idx) < version);
                if pending.is_empty() {
                    break;
                }
                if st.wb.failures != failures {
                    let e = st.wb.unreported.take().or_else(|| st.wb.last_failure.clone());
                    return Err(DiskError::Store(e.unwrap_or(StoreFailure::Abandoned)));
                }
                st.take_batches(self.limits)
            };
            self.spawn_batches(batches);
            changed.await;
        }
        drop(urgent);
        let generation = {
            let mut st = self.lock();
            if st.wb.written_gen == st.wb.flushed_gen {
                None
            } else {
                st.stats.store_flushes += 1;
                Some(st.wb.written_gen)
            }
        };
        if let Some(generation) = generation {
            store.flush().await.map_err(|e| DiskError::Store(StoreFailure::Flush(e)))?;
            let mut st = self.lock();
            st.wb.flushed_gen = st.wb.flushed_gen.max(generation);
        }
        match earlier {
            Some(e) => Err(DiskError::WriteBack(e)),
            None => Ok(()),
        }
    }
}
