//! The persistence interface for dirty blocks (implemented by the helper on
//! top of the Node `SandboxBlockStore`), and what the overlay makes of its
//! failures.

use async_trait::async_trait;

/// What a store implementation reports when a call fails.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A store of whole blocks, addressed by block index (byte offset / block size).
///
/// Every call may be slow or fail; the overlay turns failures into EIO for the
/// guest requests that needed the call and keeps its own state consistent.
/// Calls may overlap, but the overlay never has two writes of one block in
/// flight at once, and never reads a block while it writes it.
#[async_trait]
pub trait BlockStore: Send + Sync {
    /// Block size in bytes; must equal the overlay's.
    fn block_size(&self) -> u32;
    /// Indices of all blocks the store holds.
    async fn list(&self) -> Result<Vec<u64>, StoreError>;
    /// The stored blocks within `first_block .. first_block + count`
    /// (blocks the store does not hold are simply absent).
    async fn read(&self, first_block: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// [`BlockStore::read`] on behalf of a checkpoint copying the store: the
    /// guest sees nothing of its failure, so a store may report it apart.
    async fn read_for_snapshot(&self, first_block: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read(first_block, count).await
    }
    /// Store whole blocks. The store owns the buffers from then on.
    async fn write(&self, blocks: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError>;
    /// Make every block whose write resolved before this call durable.
    async fn flush(&self) -> Result<(), StoreError>;
}

/// A store call that failed, or an answer the overlay refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreFailure {
    #[error("list failed: {0}")]
    List(StoreError),
    #[error("read of blocks {first}+{count} failed: {error}")]
    Read { first: u64, count: u64, error: StoreError },
    #[error("write of {blocks} blocks failed: {error}")]
    Write { blocks: usize, error: StoreError },
    #[error("flush failed: {0}")]
    Flush(StoreError),
    #[error("the store lists block {block} but the disk has {blocks} blocks")]
    ListedBeyondEnd { block: u64, blocks: u64 },
    #[error("the store answered a read of {first}+{count} with block {block}")]
    Unrequested { first: u64, count: u64, block: u64 },
    #[error("the store returned {len} bytes for block {block}, expected {expected}")]
    BlockSize { block: u64, len: usize, expected: u64 },
    #[error("the store lost listed block {0}")]
    Missing(u64),
    /// The task driving the call was dropped (the runtime is shutting down).
    #[error("the store call was abandoned")]
    Abandoned,
}
