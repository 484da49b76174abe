//! Transmission phase: requests and simple replies.

use std::io;
use std::pin::pin;
use std::sync::Mutex;
use std::task::Poll;

use futures_util::poll;
use futures_util::stream::{self, FuturesUnordered, StreamExt};
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

/// Requests served at once (QEMU's client keeps at most 16 in flight).
const MAX_IN_FLIGHT: usize = 32;
/// Read buffers and write payloads held by requests in flight; one request
/// of `max_request` is always allowed.
const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;

/// A request as read off the wire, with its write payload.
struct Incoming {
    req: Request,
    payload: Vec<u8>,
}

impl Incoming {
    /// Bytes the request holds while it is served.
    fn cost(&self, max_request: u32) -> u64 {
        match self.req.kind {
            CMD_READ if self.req.len <= max_request => u64::from(self.req.len),
            _ => self.payload.len() as u64,
        }
    }
}

struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
    /// A buffer the request no longer needs (its write payload), for reuse.
    spare: Vec<u8>,
    cost: u64,
}

/// Buffers of answered requests, reused for READs (a fresh zeroed buffer per
/// READ costs a pass over every byte). Bounded like the requests in flight.
#[derive(Default)]
struct Spares {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

fn lock(spares: &Mutex<Spares>) -> std::sync::MutexGuard<'_, Spares> {
    spares.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Spares {
    fn take(&mut self) -> Vec<u8> {
        let buf = self.bufs.pop().unwrap_or_default();
        self.bytes -= buf.capacity();
        buf
    }

    fn give(&mut self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > 0 && self.bufs.len() < MAX_IN_FLIGHT && self.bytes + cap <= MAX_IN_FLIGHT_BYTES as usize {
            self.bytes += cap;
            self.bufs.push(buf);
        }
    }
}

async fn read_incoming<S: AsyncRead + Unpin>(
    s: &mut S,
    max_request: u32,
    spares: &Mutex<Spares>,
) -> Result<Option<Incoming>, NbdError> {
    let Some(req) = read_request(s).await? else {
        return Ok(None);
    };
    let mut payload = Vec::new();
    if req.kind == CMD_WRITE {
        // The payload follows regardless of validity; one we will not
        // buffer means the stream cannot be resynchronized.
        if req.len > max_request {
            return Err(NbdError::Protocol(format!("write payload of {} bytes", req.len)));
        }
        // Into a reused buffer's capacity: zeroing first would touch every
        // byte twice, a fresh buffer every page once more.
        let n = req.len as usize;
        payload = lock(spares).take();
        payload.clear();
        payload.reserve_exact(n);
        while payload.len() < n {
            let want = (n - payload.len()) as u64;
            if (&mut *s).take(want).read_buf(&mut payload).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }
    Ok(Some(Incoming { req, payload }))
}

/// Serve one request; never fails, errors become the reply's errno.
/// `buf`: a reused buffer for a READ (contents irrelevant: a successful read
/// fills all of it).
async fn handle<D: Disk + ?Sized>(disk: &D, inc: Incoming, mut buf: Vec<u8>, max_request: u32) -> Reply {
    let cost = inc.cost(max_request);
    let Incoming { req, payload } = inc;
    let len = u64::from(req.len);
    let valid = in_range(disk.size(), req.offset, len);
    let ro = disk.read_only();
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let error = match req.kind {
        CMD_READ if !valid || req.len > max_request => EINVAL,
        CMD_READ => {
            let n = req.len as usize;
            if buf.len() >= n {
                buf.truncate(n);
            } else {
                buf.resize(n, 0);
            }
            match disk.read(req.offset, &mut buf).await {
                Ok(()) => return Reply { cookie: req.cookie, error: 0, data: buf, spare: payload, cost },
                Err(e) => e.nbd_errno(),
            }
        }
        CMD_WRITE if ro => EPERM,
        CMD_WRITE if !valid => EINVAL,
        CMD_WRITE => {
            let mut r = disk.write(req.offset, &payload).await;
            if r.is_ok() && fua {
                r = disk.flush().await;
            }
            errno(&r)
        }
        CMD_FLUSH => errno(&disk.flush().await),
        CMD_TRIM | CMD_WRITE_ZEROES if ro => EPERM,
        CMD_TRIM | CMD_WRITE_ZEROES if !valid => EINVAL,
        CMD_TRIM => errno(&disk.trim(req.offset, len).await),
        // Zeroing is a plain write here, never "fast".
        CMD_WRITE_ZEROES if req.flags & CMD_FLAG_FAST_ZERO != 0 => ENOTSUP,
        CMD_WRITE_ZEROES => {
            let mut r = disk.write_zeroes(req.offset, len).await;
            if r.is_ok() && fua {
                r = disk.flush().await;
            }
            errno(&r)
        }
        // CACHE, BLOCK_STATUS, RESIZE...: not negotiated.
        _ => EINVAL,
    };
    Reply { cookie: req.cookie, error, data: Vec::new(), spare: if payload.is_empty() { buf } else { payload }, cost }
}

/// Requests are served concurrently and answered as they complete (NBD
/// replies carry the request's cookie; clients must not depend on order), so
/// a FLUSH waiting on the store never holds up a READ. A FLUSH covers every
/// write answered before it arrived: those writes completed before their
/// reply was sent. A request that completes at its first poll (most do: the
/// data is cached, dirty or in the base) is answered right away, so reads
/// reuse one warm buffer as a sequential server would.
pub(super) async fn run<S, D>(s: &mut S, disk: &D, config: &ServeConfig) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Disk + ?Sized,
{
    let max_request = config.max_request;
    let byte_cap = MAX_IN_FLIGHT_BYTES.max(u64::from(max_request));
    let (rd, mut wr) = tokio::io::split(s);
    // Shared with the request reader (same task; each use is momentary).
    let spares = Mutex::new(Spares::default());
    // The stream keeps a half-read request across select! iterations.
    let requests = stream::unfold(Some(rd), |rd| async {
        let mut rd = rd?;
        match read_incoming(&mut rd, max_request, &spares).await {
            Ok(Some(inc)) => Some((Ok(inc), Some(rd))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut requests = pin!(requests);
    let mut in_flight = FuturesUnordered::new();
    let mut held: u64 = 0;
    let mut reading = true;
    let mut disconnect = false;
    loop {
        let can_read =
            reading && in_flight.len() < MAX_IN_FLIGHT && held + u64::from(max_request) <= byte_cap;
        tokio::select! {
            // Answers first: a finished request never waits behind reading the next.
            biased;
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                let reply: Reply = reply;
                held -= reply.cost;
                send_reply(&mut wr, reply.cookie, reply.error, &reply.data).await?;
                lock(&spares).give(reply.data);
                lock(&spares).give(reply.spare);
            }
            item = requests.next(), if can_read => match item {
                // EOF between requests is how many clients say goodbye.
                None => reading = false,
                Some(Err(e)) => return Err(e),
                Some(Ok(inc)) if inc.req.kind == CMD_DISC => {
                    reading = false;
                    disconnect = true;
                }
                Some(Ok(inc)) => {
                    held += inc.cost(max_request);
                    let buf = if inc.req.kind == CMD_READ { lock(&spares).take() } else { Vec::new() };
                    let mut request = Box::pin(handle(disk, inc, buf, max_request));
                    // Most requests (cached, dirty or base data) finish at the first
                    // poll: answer those at once, reusing one warm buffer.
                    match poll!(request.as_mut()) {
                        Poll::Ready(reply) => {
                            held -= reply.cost;
                            send_reply(&mut wr, reply.cookie, reply.error, &reply.data).await?;
                            lock(&spares).give(reply.data);
                            lock(&spares).give(reply.spare);
                        }
                        Poll::Pending => in_flight.push(request),
                    }
                }
            },
            else => break,
        }
    }
    if disconnect {
        // Pending writes must be made durable before closing.
        let _ = disk.flush().await;
    }
    Ok(())
}
