//! Store reads shared by every request that needs the same blocks.
//!
//! The request that finds a stored block neither dirty nor cached registers
//! a [`Fetch`] for its run of blocks and drives the store call; requests
//! arriving meanwhile join it instead of calling the store again. A fetch
//! records each block's version when it was issued: a joiner only joins
//! while the version is unchanged, and the result is cached only if it still
//! is, so a block the guest rewrote (and the write-back stored and the cache
//! dropped) is never answered from a read issued before that write.

use std::sync::Arc;

use tokio::sync::watch;

use super::state::State;
use super::store::StoreFailure;
use super::Inner;

pub(super) type FetchResult = Result<Arc<Fetched>, StoreFailure>;

/// A store read in flight, as registered in [`State::fetching`].
pub(super) struct Fetch {
    first: u64,
    /// Version of each block of the run when the read was issued.
    versions: Vec<u64>,
    rx: watch::Receiver<Option<FetchResult>>,
}

/// The answer of one store read: block `first + i` is `blocks[i]` (None: the
/// store does not hold it).
pub(super) struct Fetched {
    first: u64,
    versions: Vec<u64>,
    blocks: Vec<Option<Box<[u8]>>>,
}

impl Fetched {
    fn slot(&self, idx: u64) -> Option<usize> {
        let i = usize::try_from(idx.checked_sub(self.first)?).ok()?;
        (i < self.blocks.len()).then_some(i)
    }

    /// The block's bytes, or `Missing` when the store did not return a block
    /// it listed.
    pub fn block(&self, idx: u64) -> Result<&[u8], StoreFailure> {
        self.slot(idx)
            .and_then(|i| self.blocks[i].as_deref())
            .ok_or(StoreFailure::Missing(idx))
    }

    /// Version of `idx` when the read was issued.
    pub fn version(&self, idx: u64) -> Option<u64> {
        self.slot(idx).map(|i| self.versions[i])
    }
}

impl Fetch {
    fn covers_current(&self, idx: u64, st: &State) -> bool {
        idx.checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.versions.get(i))
            .is_some_and(|&v| v == st.version(idx))
    }
}

/// A fetch a request waits for: its own (it drives the store call) or one
/// it joined.
pub(super) enum Pending {
    Own(Owned),
    Join(Arc<Fetch>),
}

pub(super) struct Owned {
    fetch: Arc<Fetch>,
    count: u64,
    tx: watch::Sender<Option<FetchResult>>,
}

impl State {
    /// A fetch in flight that will answer `idx` as it is now.
    pub fn joinable(&self, idx: u64) -> Option<Arc<Fetch>> {
        self.fetching
            .get(&idx)
            .filter(|f| f.covers_current(idx, self))
            .cloned()
    }

    /// Register a read of `first..first + count`; the caller drives it.
    pub fn start_fetch(&mut self, first: u64, count: u64) -> Owned {
        let (tx, rx) = watch::channel(None);
        let versions = (first..first + count).map(|i| self.version(i)).collect();
        let fetch = Arc::new(Fetch {
            first,
            versions,
            rx,
        });
        for i in first..first + count {
            self.fetching.insert(i, fetch.clone());
        }
        self.stats.store_reads += 1;
        Owned { fetch, count, tx }
    }

    /// Drop the registration of `fetch` for the blocks it still holds.
    fn end_fetch(&mut self, fetch: &Arc<Fetch>, count: u64) {
        for i in fetch.first..fetch.first + count {
            if self.fetching.get(&i).is_some_and(|f| Arc::ptr_eq(f, fetch)) {
                self.fetching.remove(&i);
            }
        }
    }
}

/// Unregisters an owned fetch whose driver was dropped before it finished;
/// joiners then see the channel close and fail with `Abandoned`.
struct Unregister<'a> {
    inner: &'a Inner,
    fetch: &'a Arc<Fetch>,
    count: u64,
    armed: bool,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.lock().end_fetch(self.fetch, self.count);
        }
    }
}

impl Pending {
    pub async fn wait(self, inner: &Inner) -> FetchResult {
        match self {
            Pending::Own(own) => own.run(inner).await,
            Pending::Join(fetch) => {
                let mut rx = fetch.rx.clone();
                let answer = match rx.wait_for(Option::is_some).await {
                    Ok(r) => r.clone(),
                    Err(_) => None,
                };
                answer.unwrap_or(Err(StoreFailure::Abandoned))
            }
        }
    }
}

impl Owned {
    async fn run(self, inner: &Inner) -> FetchResult {
        let Owned { fetch, count, tx } = self;
        let mut guard = Unregister {
            inner,
            fetch: &fetch,
            count,
            armed: true,
        };
        let result = inner.store_read(fetch.first, count, false).await;
        let result = result.map(|blocks| {
            Arc::new(Fetched {
                first: fetch.first,
                versions: fetch.versions.clone(),
                blocks,
            })
        });
        {
            let mut st = inner.lock();
            st.end_fetch(&fetch, count);
            if let Ok(fetched) = &result {
                st.stats.store_blocks_read += fetched.blocks.iter().flatten().count() as u64;
                for (i, block) in fetched.blocks.iter().enumerate() {
                    let idx = fetch.first + i as u64;
                    if let Some(b) = block {
                        if fetch.covers_current(idx, &st) {
                            st.cache(idx, b.clone());
                        }
                    }
                }
            }
        }
        guard.armed = false;
        tx.send_replace(Some(result.clone()));
        result
    }
}
