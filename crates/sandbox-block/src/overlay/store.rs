//! The persistence interface for dirty blocks (implemented by the helper on
//! top of the Node `SandboxBlockStore`).

use async_trait::async_trait;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A store of whole blocks, addressed by block index (byte offset / block size).
///
/// Every call may be slow or fail; the overlay turns failures into EIO for the
/// one guest request concerned and keeps its own state consistent.
#[async_trait]
pub trait BlockStore: Send + Sync {
    /// Block size in bytes; must equal the overlay's.
    fn block_size(&self) -> u32;
    /// Indices of all blocks the store holds.
    async fn list(&self) -> Result<Vec<u64>, StoreError>;
    /// The stored blocks within `first_block .. first_block + count`
    /// (blocks the store does not hold are simply absent).
    async fn read(&self, first_block: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Store whole blocks. The store owns the buffers from then on.
    async fn write(&self, blocks: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError>;
    /// Make every block written so far durable.
    async fn flush(&self) -> Result<(), StoreError>;
}
