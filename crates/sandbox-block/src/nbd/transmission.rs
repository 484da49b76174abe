//! Transmission phase: requests and simple replies.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{NbdError, ServeConfig, EINVAL, ENOTSUP, EPERM};
use crate::disk::{Disk, DiskError};

const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<Request>, NbdError> {
    let mut hdr = [0u8; 28];
    // EOF before a request is how many clients say goodbye.
    match s.read_exact(&mut hdr).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let u32_at = |i: usize| u32::from_be_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    let magic = u32_at(0);
    if magic != REQUEST_MAGIC {
        return Err(NbdError::Protocol(format!("bad request magic {magic:#x}")));
    }
    Ok(Some(Request {
        flags: u16::from_be_bytes([hdr[4], hdr[5]]),
        kind: u16::from_be_bytes([hdr[6], hdr[7]]),
        cookie: u64_at(8),
        offset: u64_at(16),
        len: u32_at(24),
    }))
}

/// Send a simple reply; `data` only accompanies a successful read.
async fn send_reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    cookie: u64,
    error: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    hdr[4..8].copy_from_slice(&error.to_be_bytes());
    hdr[8..].copy_from_slice(&cookie.to_be_bytes());
    s.write_all(&hdr).await?;
    if !data.is_empty() {
        s.write_all(data).await?;
    }
    s.flush().await?;
    Ok(())
}

fn errno(r: &Result<(), DiskError>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.nbd_errno(),
    }
}

fn in_range(size: u64, offset: u64, len: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

pub(super) async fn run<S, D>(s: &mut S, disk: &D, config: &ServeConfig) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Disk + ?Sized,
{
    let size = disk.size();
    let ro = disk.read_only();
    // Reused across requests; grows to the largest valid request only.
    let mut buf: Vec<u8> = Vec::new();

    while let Some(req) = read_request(s).await? {
        let len = u64::from(req.len);
        let valid = in_range(size, req.offset, len);
        let fits = req.len <= config.max_request;
        let err = match req.kind {
            CMD_READ => {
                if !valid || !fits {
                    EINVAL
                } else {
                    buf.resize(req.len as usize, 0);
                    match disk.read(req.offset, &mut buf).await {
                        Ok(()) => {
                            send_reply(s, req.cookie, 0, &buf).await?;
                            continue;
                        }
                        Err(e) => e.nbd_errno(),
                    }
                }
            }
            CMD_WRITE => {
                // The payload follows regardless of validity; one we will not
                // buffer means the stream cannot be resynchronized.
                if !fits {
                    return Err(NbdError::Protocol(format!("write payload of {len} bytes")));
                }
                buf.resize(req.len as usize, 0);
                s.read_exact(&mut buf).await?;
                if ro {
                    EPERM
                } else if !valid {
                    EINVAL
                } else {
                    let mut r = disk.write(req.offset, &buf).await;
                    if r.is_ok() && req.flags & CMD_FLAG_FUA != 0 {
                        r = disk.flush().await;
                    }
                    errno(&r)
                }
            }
            CMD_FLUSH => errno(&disk.flush().await),
            CMD_TRIM | CMD_WRITE_ZEROES if ro => EPERM,
            CMD_TRIM | CMD_WRITE_ZEROES if !valid => EINVAL,
            CMD_TRIM => errno(&disk.trim(req.offset, len).await),
            // Zeroing is a plain write here, never "fast".
            CMD_WRITE_ZEROES if req.flags & CMD_FLAG_FAST_ZERO != 0 => ENOTSUP,
            CMD_WRITE_ZEROES => {
                let mut r = disk.write_zeroes(req.offset, len).await;
                if r.is_ok() && req.flags & CMD_FLAG_FUA != 0 {
                    r = disk.flush().await;
                }
                errno(&r)
            }
            CMD_DISC => {
                // Pending writes must be made durable before closing.
                let _ = disk.flush().await;
                return Ok(());
            }
            // CACHE, BLOCK_STATUS, RESIZE...: not negotiated.
            _ => EINVAL,
        };
        send_reply(s, req.cookie, err, &[]).await?;
    }
    Ok(())
}
