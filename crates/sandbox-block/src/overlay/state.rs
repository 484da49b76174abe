//! The block table: what every block is right now. Plain bookkeeping under
//! the disk's mutex; nothing in here awaits or does I/O.
//!
//! A block is dirty (bytes in memory newer than the store's), clean-cached
//! (equal to what the store holds), stored (in the store only) or base.
//! Every change to a block's bytes bumps its version; a block is dirty
//! exactly when its version is newer than the one the store acknowledged.
//! Anything computed outside the mutex (a store read, a base read, a
//! write-back) remembers the version it started from and is discarded on
//! return if the version moved.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::fetch::Fetch;
use super::store::StoreFailure;
use super::CowStats;
use crate::cache::Fifo;

pub(super) struct Dirty {
    pub data: Box<[u8]>,
    /// Version of the copy a write-back in flight carries. At most one
    /// write of a block is in flight, so an older copy can never land after
    /// a newer one.
    pub writing: Option<u64>,
    /// Position in [`State::order`], renewed by every change.
    pub seq: u64,
    pub touched: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Versions {
    /// Bumped by every change of the block's bytes.
    pub current: u64,
    /// Newest version the store acknowledged (`write` resolved).
    pub written: u64,
}

/// Write-back progress and failures.
#[derive(Default)]
pub(super) struct WriteBack {
    /// Batches and blocks in flight.
    pub batches: usize,
    pub blocks: usize,
    /// Flushes and writers waiting for room: while any wait, partial batches
    /// are written too.
    pub urgent: usize,
    /// Failed batches so far; waiters compare it to what they started with.
    pub failures: u64,
    /// `failures` when a batch last succeeded: while it lags, background
    /// write-back pauses (only urgent write-back retries the store).
    pub recovered: u64,
    /// Snapshot pins alive: while any is, no write-back starts, so the
    /// store keeps the state a checkpoint is copying (see `pin.rs`).
    pub held: usize,
    pub last_failure: Option<StoreFailure>,
    /// The first failure no flush has reported yet.
    pub unreported: Option<StoreFailure>,
    /// Successful batches so far, and how many of them a resolved store
    /// flush covers: equal means a flush has nothing to make durable.
    pub written_gen: u64,
    pub flushed_gen: u64,
}

pub(super) struct State {
    pub dirty: HashMap<u64, Dirty>,
    /// Dirty blocks not in flight, least recently changed first: the order
    /// of write-back. Blocks the guest keeps rewriting stay at the back.
    pub order: BTreeMap<u64, u64>,
    next_seq: u64,
    pub clean: Fifo<Box<[u8]>>,
    /// Blocks the store holds (listed at open or written since).
    pub stored: HashSet<u64>,
    /// Versions of every block changed since the disk was opened.
    pub versions: HashMap<u64, Versions>,
    /// Store reads in flight, by block, so concurrent readers share one.
    pub fetching: HashMap<u64, Arc<Fetch>>,
    pub wb: WriteBack,
    pub stats: CowStats,
    /// Dirty plus clean-cached blocks never exceed this.
    budget: usize,
    /// Whether dirty blocks are ordered for write-back at all.
    persistent: bool,
}

impl State {
    pub fn new(budget: usize, stored: HashSet<u64>, persistent: bool) -> Self {
        Self {
            dirty: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            clean: Fifo::new(budget),
            stored,
            versions: HashMap::new(),
            fetching: HashMap::new(),
            wb: WriteBack::default(),
            stats: CowStats::default(),
            budget,
            persistent,
        }
    }

    pub fn version(&self, idx: u64) -> u64 {
        self.versions.get(&idx).map_or(0, |v| v.current)
    }

    pub fn written(&self, idx: u64) -> u64 {
        self.versions.get(&idx).map_or(0, |v| v.written)
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Room for one more dirty block.
    pub fn has_room(&self) -> bool {
        self.dirty.len() < self.budget
    }

    fn bump(&mut self, idx: u64) {
        let v = self.versions.entry(idx).or_default();
        v.current += 1;
    }

    /// Copy `bytes` into block `idx` at `at` if it is dirty.
    pub fn modify(&mut self, idx: u64, at: usize, bytes: &[u8]) -> bool {
        let Some(d) = self.dirty.get_mut(&idx) else {
            return false;
        };
        // Callers split requests at block boundaries, so this always fits;
        // checked anyway rather than trusted.
        let Some(dst) = d.data.get_mut(at..at + bytes.len()) else {
            return false;
        };
        dst.copy_from_slice(bytes);
        if self.persistent {
            self.next_seq += 1;
            d.touched = Instant::now();
            // In flight, it is ordered again when its write-back ends.
            if d.writing.is_none() {
                self.order.remove(&d.seq);
                self.order.insert(self.next_seq, idx);
            }
            d.seq = self.next_seq;
        }
        self.bump(idx);
        true
    }

    /// Make `data` (the block's full new contents) the dirty copy of `idx`.
    /// The caller checked [`State::has_room`].
    pub fn install(&mut self, idx: u64, data: Box<[u8]>) {
        self.clean.remove(idx);
        self.next_seq += 1;
        let seq = self.next_seq;
        self.dirty.insert(idx, Dirty { data, writing: None, seq, touched: Instant::now() });
        self.bump(idx);
        if self.persistent {
            self.order.insert(seq, idx);
        }
        self.rebalance();
    }

    /// Insert a clean copy of what the store holds, if it is still current.
    pub fn cache(&mut self, idx: u64, data: Box<[u8]>) {
        if !self.dirty.contains_key(&idx) && !self.clean.contains(idx) {
            self.clean.insert(idx, data);
            self.rebalance();
        }
    }

    /// Keep dirty + cached within the budget (clean blocks go first).
    pub fn rebalance(&mut self) {
        self.clean
            .set_cap(self.budget.saturating_sub(self.dirty.len()));
    }

    /// Dirty blocks and their versions: what a flush must see written.
    pub fn snapshot(&self) -> Vec<(u64, u64)> {
        self.dirty
            .keys()
            .map(|&i| (i, self.version(i)))
            .collect()
    }

    pub fn stats(&self, block_size: u64) -> CowStats {
        CowStats {
            dirty_bytes: self.dirty.len() as u64 * block_size,
            cached_bytes: self.clean.len() as u64 * block_size,
            write_back_bytes: self.wb.blocks as u64 * block_size,
            ..self.stats
        }
    }
}
