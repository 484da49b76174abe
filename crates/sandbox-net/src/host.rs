//! Host-side tasks of accepted flows. Each reports to the stack through one channel;
//! every producer is bounded by credits, so that channel never holds more than a few
//! chunks per flow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UdpSocket, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::flows::{Decision, PolicyFailure};

/// (guest, remote) as the guest put them on the wire; both of one family.
pub(crate) type Key = (SocketAddr, SocketAddr);

/// Largest chunk moved per read; also the unit of flow credit.
pub(crate) const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction outside smoltcp's own buffers.
pub(crate) const CREDITS: usize = 4;

/// The host end of a spliced TCP flow, with the slot it holds.
pub(crate) struct HostConn {
    pub(crate) io: HostIo,
    /// Declared after `io`: fields drop in order, so the slot is free only once the
    /// socket is closed.
    pub(crate) slot: OwnedSemaphorePermit,
}

pub(crate) enum HostIo {
    Tcp(TcpStream),
    /// The interceptor's socket, header already written.
    Unix(UnixStream),
}

/// One half of a host socket holding a share of the socket's slot (one of
/// `NetConfig::max_flows`). The slot returns to the pool only when both halves are
/// gone, and each half is dropped before its share: a new host connect can start
/// only after the socket it replaces is closed.
pub(crate) struct Slotted<S> {
    io: S,
    _slot: Arc<OwnedSemaphorePermit>,
}

impl<S> Slotted<S> {
    pub(crate) fn new(io: S, slot: Arc<OwnedSemaphorePermit>) -> Self {
        Self { io, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Slotted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Slotted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: Abortive> Abortive for Slotted<S> {
    fn zero_linger(&self) {
        self.io.zero_linger();
    }
}

/// A host UDP socket with its slot (dropped after the socket, as for `HostConn`).
pub(crate) struct HostUdp {
    pub(crate) sock: UdpSocket,
    _slot: OwnedSemaphorePermit,
}

impl HostUdp {
    pub(crate) fn new(sock: UdpSocket, slot: OwnedSemaphorePermit) -> Self {
        Self { sock, _slot: slot }
    }
}

/// How the host half is closed when the guest resets the flow.
pub(crate) trait Abortive {
    /// Makes the coming close a RST where the transport has one.
    fn zero_linger(&self);
}

impl Abortive for tokio::net::tcp::OwnedWriteHalf {
    fn zero_linger(&self) {
        let _ = self.as_ref().set_zero_linger();
    }
}

impl Abortive for tokio::net::unix::OwnedWriteHalf {
    fn zero_linger(&self) {}
}

pub(crate) enum Internal {
    TcpDecided { key: Key, id: u64, result: Result<Decision, PolicyFailure> },
    TcpConnected { key: Key, id: u64, result: Result<HostConn, String> },
    /// A DNS-over-TCP message was answered.
    DnsTcpAnswer { key: Key, id: u64, payload: Vec<u8> },
    /// A host client connected to a forwarded port.
    Inbound { guest_port: u16, stream: TcpStream },
    HostData { key: Key, id: u64, data: Vec<u8> },
    HostEof { key: Key, id: u64 },
    HostError { key: Key, id: u64 },
    /// The writer took a chunk: the stack may pull more from the guest.
    HostWritable,
    UdpDecided { key: Key, id: u64, result: Result<Decision, PolicyFailure> },
    UdpRecv { key: Key, id: u64, data: Vec<u8> },
    DnsAnswer { guest: SocketAddr, resolver: SocketAddr, payload: Vec<u8> },
}

pub(crate) type Tx = mpsc::UnboundedSender<Internal>;

pub(crate) async fn connect(dst: SocketAddr, limit: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(limit, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("connect timed out after {limit:?}")),
    }
}

/// Connects to the interceptor and introduces the flow with its header line.
pub(crate) async fn connect_intercept(path: &Path, flow: u64, limit: Duration) -> Result<UnixStream, String> {
    let fut = async {
        let mut s = UnixStream::connect(path).await?;
        s.write_all(format!("{{\"flow\":{flow}}}\n").as_bytes()).await?;
        Ok::<_, std::io::Error>(s)
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("interceptor socket {}: {e}", path.display())),
        Err(_) => Err(format!("interceptor socket {}: timed out after {limit:?}", path.display())),
    }
}

/// Host → guest: reads only while the stack has handed back credit.
pub(crate) async fn tcp_reader<R: AsyncRead + Unpin>(mut rd: R, credit: Arc<Semaphore>, tx: Tx, key: Key, id: u64) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match credit.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => return,
        }
        let msg = match rd.read(&mut buf).await {
            Ok(0) => Internal::HostEof { key, id },
            Ok(n) => Internal::HostData { key, id, data: buf[..n].to_vec() },
            Err(_) => Internal::HostError { key, id },
        };
        let done = !matches!(msg, Internal::HostData { .. });
        if tx.send(msg).is_err() || done {
            return;
        }
    }
}

/// Guest → host. `reset` fired means the guest reset the flow: close with SO_LINGER 0
/// so the host peer sees a RST too. Dropped without firing means an orderly end.
pub(crate) async fn tcp_writer<W: AsyncWrite + Abortive + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut reset: oneshot::Receiver<()>,
    tx: Tx,
    key: Key,
    id: u64,
) {
    loop {
        tokio::select! {
            r = &mut reset => {
                if r.is_ok() {
                    wr.zero_linger();
                }
                return;
            }
            m = rx.recv() => match m {
                Some(data) => {
                    let res = tokio::select! {
                        res = wr.write_all(&data) => res,
                        r = &mut reset => {
                            if r.is_ok() {
                                wr.zero_linger();
                            }
                            return;
                        }
                    };
                    let msg = match res {
                        Ok(()) => Internal::HostWritable,
                        Err(_) => Internal::HostError { key, id },
                    };
                    let failed = matches!(msg, Internal::HostError { .. });
                    if tx.send(msg).is_err() || failed {
                        return;
                    }
                }
                None => {
                    // Guest sent FIN: half-close towards the host, keep the half for a later reset.
                    let _ = wr.shutdown().await;
                    if (&mut reset).await.is_ok() {
                        wr.zero_linger();
                    }
                    return;
                }
            }
        }
    }
}

/// A UDP socket connected to `dst`. `first` is sent before tokio takes the socket:
/// tokio learns writability only from the reactor, so its `try_send` on a brand-new
/// socket would report WouldBlock.
pub(crate) fn udp_bind(dst: SocketAddr, first: &[Vec<u8>]) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if dst.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let s = std::net::UdpSocket::bind(bind)?;
    s.connect(dst)?;
    s.set_nonblocking(true)?;
    for d in first {
        let _ = s.send(d);
    }
    UdpSocket::from_std(s)
}

pub(crate) async fn udp_reader(host: Arc<HostUdp>, credit: Arc<Semaphore>, tx: Tx, key: Key, id: u64) {
    let mut buf = vec![0u8; 65535];
    loop {
        match credit.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => return,
        }
        match host.sock.recv(&mut buf).await {
            Ok(n) => {
                if tx.send(Internal::UdpRecv { key, id, data: buf[..n].to_vec() }).is_err() {
                    return;
                }
            }
            // ICMP errors surface as one-shot recv errors on a connected socket.
            Err(_) => {
                credit.add_permits(1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
