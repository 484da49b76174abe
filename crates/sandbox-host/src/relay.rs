//! Moves frames between Node, the guest control port and the helper's
//! services, and enforces who may send what.
//!
//! ```text
//!   guest port ──reader──▶ Session::check_guest ──▶ NodeTx ──writer──▶ Node
//!   guest port ◀──writer── guest queue ◀── Session::check_node ◀──┐
//!   services (block, fs, net) ── requests ──▶ NodeTx            │
//!   Node ──reader──┬── reply kinds ──▶ Router ──▶ the waiting call
//!                  ├── Node requests (PortForward) ──▶ its handler
//!                  └── guest kinds ────────────────────────────┘
//! ```
//!
//! Nothing here waits on the guest while reading from Node: guest-bound
//! frames queue (bounded by the windows Node keeps, and by a byte cap), so a
//! guest whose port is full never delays a block or filesystem reply.

use crate::backend::RunningVm;
use crate::error::HostError;
use crate::guest::{Session, Violation};
use crate::link::{self, NodeTx};
use sandbox_protocol::{self as proto, Direction, FrameDecoder, Kind};
use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

const CHUNK: usize = 256 * 1024;
/// A guest frame still incomplete this long after its first byte is a violation:
/// init writes whole frames, so only a hostile writer leaves one hanging (and
/// later bytes, such as a Pong, only feed the broken frame).
const PARTIAL_FRAME_STALL: Duration = Duration::from_secs(10);
/// Guest-bound bytes Node may have queued here; Node's windows keep it far below.
const GUEST_QUEUE_BYTES: usize = 64 << 20;
/// How long the guest's last frames may take to reach Node once the VMM ended.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Handles one kind of request Node makes of the helper (e.g. `PortForward`);
/// it answers on the same channel through the `NodeTx` it holds.
pub trait NodeRequestHandler: Send + Sync {
    fn handle(&self, channel: u32, payload: Vec<u8>);
}

/// What the relay serves besides guest frames.
pub struct Wiring {
    pub tx: NodeTx,
    pub rx: mpsc::Receiver<Vec<u8>>,
    pub router: crate::service::Router,
    pub requests: HashMap<u8, Arc<dyn NodeRequestHandler>>,
    pub guest: Arc<GuestLink>,
    pub guest_rx: mpsc::UnboundedReceiver<GuestOut>,
    /// The VM was restored from a snapshot: the session starts at `Resume`.
    pub restored: bool,
}

/// One entry of the guest-bound queue.
pub enum GuestOut {
    /// One of Node's frames (counted against Node's queued bytes).
    Frame(Vec<u8>),
    /// One of the helper's own (Quiesce, a restore's Resume).
    Own(Vec<u8>),
    /// Stop here until the frame arrives (a checkpoint's `Resume`), write it,
    /// go on; a dropped sender goes on at once.
    Hold(oneshot::Receiver<Vec<u8>>),
}

/// The helper's own line to the guest (checkpoints): its queue, shared with
/// Node's frames so order is kept, and who waits for the guest's answers.
pub struct GuestLink {
    queue: mpsc::UnboundedSender<GuestOut>,
    waiting: Mutex<LinkWaiters>,
}

#[derive(Default)]
struct LinkWaiters {
    quiesced: Option<std::sync::mpsc::SyncSender<()>>,
    resumed: Option<std::sync::mpsc::SyncSender<proto::Resumed>>,
}

impl GuestLink {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<GuestOut>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { queue, waiting: Mutex::new(LinkWaiters::default()) }), rx)
    }

    /// Queues a frame of the helper's own after everything Node sent so far.
    pub fn send(&self, out: GuestOut) {
        let _ = self.queue.send(out);
    }

    pub fn expect_quiesced(&self) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.lock().quiesced = Some(tx);
        rx
    }

    pub fn expect_resumed(&self) -> std::sync::mpsc::Receiver<proto::Resumed> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.lock().resumed = Some(tx);
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkWaiters> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a guest frame a checkpoint waits for; false: not awaited.
    fn take(&self, kind: Kind, payload: &[u8]) -> Result<bool, Violation> {
        let mut w = self.lock();
        match kind {
            Kind::Quiesced => match w.quiesced.take() {
                Some(tx) => {
                    let _ = tx.try_send(());
                    Ok(true)
                }
                None => Ok(false),
            },
            Kind::Resumed => match w.resumed.take() {
                Some(tx) => {
                    let r = proto::decode::<proto::Resumed>(payload)
                        .map_err(|e| Violation { kind: Some(kind as u8), channel: 0, reason: e.to_string() })?;
                    let _ = tx.try_send(r);
                    Ok(true)
                }
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }
}

/// How the relay ended.
enum End {
    NodeGone,
    Node(HostError),
    Guest(Violation),
}

/// The relay's single-threaded runtime; virtio-fs device tasks run on it too.
pub fn runtime() -> Result<tokio::runtime::Runtime, HostError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HostError::Setup(format!("tokio runtime: {e}")))
}

/// Runs until the VMM exits or either side breaks the contract. On return the
/// VMM is gone and everything meant for Node has been written (`VmExited` or
/// the `HelperError` naming the violation last).
pub fn run(rt: tokio::runtime::Runtime, node: StdUnixStream, leftover: FrameDecoder, vm: RunningVm, wiring: Wiring) -> Result<(), HostError> {
    rt.block_on(relay(node, leftover, vm, wiring))
}

async fn relay(node: StdUnixStream, leftover: FrameDecoder, vm: RunningVm, wiring: Wiring) -> Result<(), HostError> {
    let Wiring { tx, rx, router, requests, guest, guest_rx, restored } = wiring;
    let RunningVm { pid, wait, control, console, .. } = vm;
    let (node_rx, node_wr) = to_tokio(node)?.into_split();
    let (guest_rx_port, guest_wr) = to_tokio(control)?.into_split();

    // The VMM is waited for on a plain thread: Child::wait blocks.
    let (exit_tx, mut exit_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(wait());
    });

    let session = Arc::new(Mutex::new(if restored { Session::resuming() } else { Session::new() }));
    let (ended_tx, mut ended_rx) = mpsc::channel::<End>(4);
    let writer = tokio::spawn(link::write_frames(node_wr, rx));
    let queued = Arc::new(AtomicUsize::new(0));
    let guest_writer = tokio::spawn(write_guest(guest_wr, guest_rx, queued.clone()));
    let from_node = tokio::spawn(node_reader(
        node_rx,
        leftover,
        NodeSide { session: session.clone(), guest: guest.clone(), queued, router, requests, ended: ended_tx.clone() },
    ));
    let (guest_done_tx, guest_done) = oneshot::channel();
    let from_guest = tokio::spawn(async move {
        guest_reader(guest_rx_port, session, guest, tx.clone(), ended_tx).await;
        let _ = guest_done_tx.send(tx);
    });

    let mut fatal: Option<HostError> = None;
    let status = loop {
        tokio::select! {
            Some(end) = ended_rx.recv() => match end {
                End::NodeGone => {
                    kill(pid);
                    from_guest.abort();
                    return Ok(());
                }
                End::Node(e) => {
                    kill(pid);
                    fatal = Some(e);
                }
                End::Guest(v) => {
                    kill(pid);
                    fatal.get_or_insert(HostError::GuestProtocol(v));
                }
            },
            status = &mut exit_rx => break status.ok().flatten(),
        }
    };
    from_node.abort();
    guest_writer.abort();
    // What the guest wrote before the VMM ended reaches Node first.
    let tx = match tokio::time::timeout(DRAIN_GRACE, guest_done).await {
        Ok(Ok(tx)) => Some(tx),
        _ => {
            from_guest.abort();
            None
        }
    };
    // A violation found while draining still counts.
    while let Ok(end) = ended_rx.try_recv() {
        match end {
            End::Guest(v) => {
                fatal.get_or_insert(HostError::GuestProtocol(v));
            }
            End::Node(e) => {
                fatal.get_or_insert(e);
            }
            End::NodeGone => {}
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let last = match &fatal {
        Some(e) => proto::encode(0, &e.to_wire()),
        None => proto::encode(
            0,
            &proto::VmExited {
                exit_code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
                console_tail: proto::Text::truncated(console.text()),
            },
        ),
    };
    // Bounded: a Node that stopped reading must not keep the helper alive.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if let Some(tx) = tx {
            tx.finish(last).await;
        }
        let _ = writer.await;
    })
    .await;
    match fatal {
        // Already reported to Node as the last frame.
        Some(_) => Err(HostError::Reported),
        None => Ok(()),
    }
}

struct NodeSide {
    session: Arc<Mutex<Session>>,
    guest: Arc<GuestLink>,
    queued: Arc<AtomicUsize>,
    router: crate::service::Router,
    requests: HashMap<u8, Arc<dyn NodeRequestHandler>>,
    ended: mpsc::Sender<End>,
}

impl NodeSide {
    /// One frame from Node. An error ends the helper: Node broke the contract.
    fn dispatch(&self, f: proto::Frame) -> Result<(), HostError> {
        let info = f.kind.info();
        match info.direction {
            Direction::HostToGuest => {
                self.session
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .check_node(f.kind, f.channel, &f.payload)
                    .map_err(|v| HostError::Protocol(v.to_string()))?;
                let queued = self.queued.fetch_add(f.payload.len(), Ordering::Relaxed) + f.payload.len();
                if queued > GUEST_QUEUE_BYTES {
                    return Err(HostError::Protocol(format!("more than {GUEST_QUEUE_BYTES} guest-bound bytes queued: Node ignores the stdin window")));
                }
                let mut frame = Vec::with_capacity(proto::HEADER_LEN + f.payload.len());
                frame.extend_from_slice(&proto::frame_header(f.kind, f.channel, f.payload.len()));
                frame.extend_from_slice(&f.payload);
                // The writer is gone only when the VMM is; its exit is reported separately.
                self.guest.send(GuestOut::Frame(frame));
                Ok(())
            }
            Direction::NodeToHelper => {
                if f.kind == Kind::Launch {
                    return Err(HostError::Protocol("a second Launch".into()));
                }
                if self.router.deliver(f.kind, f.channel, f.payload.clone()) {
                    return Ok(());
                }
                match self.requests.get(&(f.kind as u8)) {
                    Some(h) => {
                        h.handle(f.channel, f.payload);
                        Ok(())
                    }
                    // A service this launch does not have (e.g. a block reply without a cow disk).
                    None => Err(HostError::Protocol(format!("{} frame, but this VM has no such service", f.kind.name()))),
                }
            }
            dir => Err(HostError::Protocol(format!("{} frame travels {} only", f.kind.name(), dir.as_str()))),
        }
    }
}

async fn node_reader(mut rx: OwnedReadHalf, mut dec: FrameDecoder, side: NodeSide) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    if let Err(e) = side.dispatch(f) {
                        let _ = side.ended.send(End::Node(e)).await;
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = side.ended.send(End::Node(HostError::Protocol(e.to_string()))).await;
                    return;
                }
            }
        }
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = side.ended.send(End::NodeGone).await;
                return;
            }
            Ok(n) => dec.push(&buf[..n]),
        }
    }
}

async fn write_guest(mut port: OwnedWriteHalf, mut frames: mpsc::UnboundedReceiver<GuestOut>, queued: Arc<AtomicUsize>) {
    while let Some(out) = frames.recv().await {
        let frame = match out {
            GuestOut::Frame(frame) => {
                queued.fetch_sub(frame.len() - proto::HEADER_LEN, Ordering::Relaxed);
                frame
            }
            // The helper's own frames: not counted against Node's bytes.
            GuestOut::Own(frame) => frame,
            GuestOut::Hold(resume) => match resume.await {
                Ok(frame) => frame,
                Err(_) => continue,
            },
        };
        if port.write_all(&frame).await.is_err() {
            // The VMM is going away; its exit is reported separately.
            return;
        }
    }
}

/// Reads the guest's frames, checks each, forwards the good ones; ends at EOF
/// or at the first violation.
async fn guest_reader(mut rx: OwnedReadHalf, session: Arc<Mutex<Session>>, link: Arc<GuestLink>, node: NodeTx, ended: mpsc::Sender<End>) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; CHUNK];
    // When the frame now buffered began (reset each time a frame completes).
    let mut partial_since: Option<tokio::time::Instant> = None;
    loop {
        let read = rx.read(&mut buf);
        let n = if let Some(since) = partial_since {
            match tokio::time::timeout_at(since + PARTIAL_FRAME_STALL, read).await {
                Ok(r) => r,
                Err(_) => {
                    let reason = format!(
                        "an incomplete frame ({} bytes buffered) that did not complete within {} s",
                        dec.buffered(),
                        PARTIAL_FRAME_STALL.as_secs()
                    );
                    let _ = ended.send(End::Guest(Violation::framing(reason))).await;
                    return;
                }
            }
        } else {
            read.await
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => dec.push(&buf[..n]),
        }
        let mut completed = false;
        loop {
            match dec.next_raw() {
                Ok(Some((kind, raw))) => {
                    completed = true;
                    let channel = u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]);
                    // A checkpoint's Quiesced and Resumed are the helper's, not Node's.
                    if let (0, Ok(k @ (Kind::Quiesced | Kind::Resumed))) = (channel, Kind::try_from(kind)) {
                        match link.take(k, &raw[proto::HEADER_LEN..]) {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(v) => {
                                let _ = ended.send(End::Guest(v)).await;
                                return;
                            }
                        }
                    }
                    let checked = session.lock().unwrap_or_else(|p| p.into_inner()).check_guest(kind, channel, &raw[proto::HEADER_LEN..]);
                    if let Err(v) = checked {
                        let _ = ended.send(End::Guest(v)).await;
                        return;
                    }
                    if node.send(raw).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    partial_since = match (dec.has_partial(), completed, partial_since) {
                        (false, _, _) => None,
                        (true, false, Some(since)) => Some(since),
                        (true, _, _) => Some(tokio::time::Instant::now()),
                    };
                    break;
                }
                Err(e) => {
                    let v = Violation::framing(format!("broken framing: {e}"));
                    let _ = ended.send(End::Guest(v)).await;
                    return;
                }
            }
        }
    }
}

fn to_tokio(s: StdUnixStream) -> Result<UnixStream, HostError> {
    s.set_nonblocking(true).map_err(|e| HostError::Setup(format!("nonblocking socket: {e}")))?;
    UnixStream::from_std(s).map_err(|e| HostError::Setup(format!("tokio socket: {e}")))
}

fn kill(pid: i32) {
    // SAFETY: kill(2) has no memory effects; pid is our own VMM child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}
