//! An in-memory [`BlockStore`] that records what was asked of it: for tests,
//! benchmarks and offline tooling.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::store::{BlockStore, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    List,
    Read { first: u64, count: u64 },
    Write(Vec<u64>),
    Flush,
}

#[derive(Default)]
struct Inner {
    /// Written but not yet flushed: lost by [`MemBlockStore::crash`].
    volatile: BTreeMap<u64, Vec<u8>>,
    durable: BTreeMap<u64, Vec<u8>>,
    log: Vec<StoreOp>,
}

pub struct MemBlockStore {
    block_size: u32,
    inner: Mutex<Inner>,
    fail: AtomicBool,
}

impl MemBlockStore {
    pub fn new(block_size: u32) -> Self {
        Self {
            block_size,
            inner: Mutex::default(),
            fail: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_fail(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError("injected failure".into()));
        }
        Ok(())
    }

    /// Make every later call fail (or succeed again).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// Drop everything written since the last flush, like a power loss.
    pub fn crash(&self) {
        self.inner().volatile.clear();
    }

    pub fn log(&self) -> Vec<StoreOp> {
        self.inner().log.clone()
    }

    pub fn clear_log(&self) {
        self.inner().log.clear();
    }

    /// Durable blocks only.
    pub fn durable_blocks(&self) -> BTreeMap<u64, Vec<u8>> {
        self.inner().durable.clone()
    }
}

#[async_trait]
impl BlockStore for MemBlockStore {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    async fn list(&self) -> Result<Vec<u64>, StoreError> {
        let mut g = self.inner();
        g.log.push(StoreOp::List);
        self.check_fail()?;
        let mut all: Vec<u64> = g.durable.keys().chain(g.volatile.keys()).copied().collect();
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    async fn read(&self, first: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut g = self.inner();
        g.log.push(StoreOp::Read { first, count });
        self.check_fail()?;
        let end = first.saturating_add(count);
        let mut out: BTreeMap<u64, Vec<u8>> = g
            .durable
            .range(first..end)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        out.extend(g.volatile.range(first..end).map(|(k, v)| (*k, v.clone())));
        Ok(out.into_iter().collect())
    }

    async fn write(&self, blocks: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        let mut g = self.inner();
        g.log
            .push(StoreOp::Write(blocks.iter().map(|(i, _)| *i).collect()));
        self.check_fail()?;
        g.volatile.extend(blocks);
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let mut g = self.inner();
        g.log.push(StoreOp::Flush);
        self.check_fail()?;
        let v = std::mem::take(&mut g.volatile);
        g.durable.extend(v);
        Ok(())
    }
}
