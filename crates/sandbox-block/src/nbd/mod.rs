//! NBD server (fixed newstyle handshake, simple replies) for one [`Disk`].
//!
//! The client is the VMM acting for a hostile guest: every length and offset
//! is checked before it is used, lengths are bounded before anything is
//! allocated, and errors become NBD error replies. Only a broken framing
//! (bad magic, oversized write payload, unknown handshake flags) ends the
//! connection, since the stream cannot be resynchronized after it.
//!
//! Requests are served concurrently (at most 32, holding at most 64 MiB of
//! buffers) and answered as they complete, so a FLUSH waiting on a slow
//! block store does not hold up the READs behind it.

mod handshake;
mod transmission;

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::disk::Disk;

// Error values on the wire (NBD defines them, they match Linux errno).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

/// Default largest READ/WRITE payload accepted.
pub const DEFAULT_MAX_REQUEST: u32 = 32 << 20;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest READ/WRITE length; bounds per-request allocation.
    pub max_request: u32,
    /// Block size advertised as preferred (NBD_INFO_BLOCK_SIZE).
    pub preferred_block: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_request: DEFAULT_MAX_REQUEST,
            preferred_block: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Serve `disk` on `stream` until the client disconnects.
///
/// Returns `Ok(())` on an orderly end (NBD_CMD_DISC, NBD_OPT_ABORT, or EOF
/// between messages) and an error when the client broke the protocol.
pub async fn serve<S, D>(stream: S, disk: &D) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Disk + ?Sized,
{
    serve_with(stream, disk, &ServeConfig::default()).await
}

pub async fn serve_with<S, D>(mut stream: S, disk: &D, config: &ServeConfig) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Disk + ?Sized,
{
    if config.max_request == 0 {
        return Err(NbdError::Protocol("max_request must not be 0".into()));
    }
    match handshake::negotiate(&mut stream, disk, config).await? {
        handshake::Outcome::Transmit => transmission::run(&mut stream, disk, config).await,
        handshake::Outcome::Closed => Ok(()),
    }
}

/// Transmission flags for the export.
fn transmission_flags<D: Disk + ?Sized>(disk: &D) -> u16 {
    const HAS_FLAGS: u16 = 1 << 0;
    const READ_ONLY: u16 = 1 << 1;
    const SEND_FLUSH: u16 = 1 << 2;
    const SEND_FUA: u16 = 1 << 3;
    const SEND_TRIM: u16 = 1 << 5;
    const SEND_WRITE_ZEROES: u16 = 1 << 6;
    let mut flags = HAS_FLAGS | SEND_FLUSH;
    if disk.read_only() {
        flags |= READ_ONLY;
    } else {
        flags |= SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES;
    }
    flags
}

#[cfg(test)]
mod tests;
