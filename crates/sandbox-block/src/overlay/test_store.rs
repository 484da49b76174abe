//! A [`BlockStore`] for tests whose calls can be held, slowed down or made
//! to fail, and which records when each call started and ended.
//!
//! Writes land in the wrapped [`MemBlockStore`] only when they resolve, and a
//! flush makes durable only what had landed when it was called, so
//! [`MemBlockStore::crash`] exposes any flush issued before the writes it was
//! meant to cover.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{BlockStore, MemBlockStore, StoreError};

/// Held calls wait until the gate opens.
pub(crate) struct Gate(watch::Sender<bool>);

impl Gate {
    fn new() -> Self {
        Gate(watch::channel(true).0)
    }
    pub fn hold(&self) {
        self.0.send_replace(false);
    }
    pub fn release(&self) {
        self.0.send_replace(true);
    }
    async fn pass(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    WriteStart(Vec<u64>),
    WriteDone(Vec<u64>),
    WriteFailed(Vec<u64>),
    FlushStart,
    FlushDone,
    Read(u64, u64),
}

pub(crate) struct TestStore {
    pub mem: MemBlockStore,
    /// Reads that will wait at `reads` (see [`TestStore::hold_reads`]).
    held_reads: AtomicUsize,
    reads: Gate,
    pub writes: Gate,
    pub flushes: Gate,
    /// The next this-many write calls fail.
    pub fail_writes: AtomicUsize,
    /// Every write takes this long (ms) before it resolves.
    pub write_delay_ms: AtomicU64,
    pub writes_in_flight: AtomicUsize,
    pub peak_writes_in_flight: AtomicUsize,
    pub flushes_started: AtomicUsize,
    events: Mutex<Vec<Event>>,
}

impl TestStore {
    pub fn new(block_size: u32) -> Arc<Self> {
        Arc::new(Self {
            mem: MemBlockStore::new(block_size),
            held_reads: AtomicUsize::new(0),
            reads: Gate::new(),
            writes: Gate::new(),
            flushes: Gate::new(),
            fail_writes: AtomicUsize::new(0),
            write_delay_ms: AtomicU64::new(0),
            writes_in_flight: AtomicUsize::new(0),
            peak_writes_in_flight: AtomicUsize::new(0),
            flushes_started: AtomicUsize::new(0),
            events: Mutex::new(Vec::new()),
        })
    }

    fn note(&self, e: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next `n` read calls wait until [`TestStore::release_reads`];
    /// later ones pass.
    pub fn hold_reads(&self, n: usize) {
        self.held_reads.store(n, Ordering::SeqCst);
        self.reads.hold();
    }

    pub fn release_reads(&self) {
        self.held_reads.store(0, Ordering::SeqCst);
        self.reads.release();
    }

    pub fn fail_next_writes(&self, n: usize) {
        self.fail_writes.store(n, Ordering::SeqCst);
    }

    pub fn set_write_delay(&self, d: Duration) {
        self.write_delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

#[async_trait]
impl BlockStore for TestStore {
    fn block_size(&self) -> u32 {
        self.mem.block_size()
    }

    async fn list(&self) -> Result<Vec<u64>, StoreError> {
        self.mem.list().await
    }

    async fn read(&self, first: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.note(Event::Read(first, count));
        // Answered as of the call, delivered when released: a late answer
        // may be older than writes that resolved meanwhile.
        let answer = self.mem.read(first, count).await;
        let held = self
            .held_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if held {
            self.reads.pass().await;
        }
        answer
    }

    async fn write(&self, blocks: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        let ids: Vec<u64> = blocks.iter().map(|(i, _)| *i).collect();
        self.note(Event::WriteStart(ids.clone()));
        let now = self.writes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_writes_in_flight.fetch_max(now, Ordering::SeqCst);
        self.writes.pass().await;
        let delay = self.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        let fail = self
            .fail_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            self.note(Event::WriteFailed(ids));
            return Err(StoreError("injected write failure".into()));
        }
        self.mem.write(blocks).await?;
        self.note(Event::WriteDone(ids));
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.flushes_started.fetch_add(1, Ordering::SeqCst);
        self.note(Event::FlushStart);
        self.flushes.pass().await;
        self.mem.flush().await?;
        self.note(Event::FlushDone);
        Ok(())
    }
}
