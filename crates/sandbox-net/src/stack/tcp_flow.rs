//! TCP flows: held SYNs, policy, upstream connect, and the splice between smoltcp
//! sockets and host tasks.

use super::*;

pub(super) struct Active {
    pub(super) handle: SocketHandle,
    pub(super) to_host: Option<mpsc::Sender<Vec<u8>>>,
    pub(super) reset_host: Option<oneshot::Sender<()>>,
    pub(super) from_host: std::collections::VecDeque<Vec<u8>>,
    pub(super) from_off: usize,
    pub(super) credit: Arc<Semaphore>,
    pub(super) host_eof: bool,
    pub(super) fin_sent: bool,
    pub(super) guest_fin: bool,
    pub(super) tasks: [AbortHandle; 2],
}

pub(super) enum TcpPhase {
    Deciding,
    /// Waiting for a host-socket slot, then connecting: aborting the task closes the
    /// socket it may hold.
    Connecting(AbortHandle),
    Active(Box<Active>),
    /// DNS over TCP to port 53: served by the stack itself, message by message.
    Dns(Box<DnsConn>),
}

/// One DNS-over-TCP connection: at most one message read and one answer pending.
pub(super) struct DnsConn {
    pub(super) handle: SocketHandle,
    /// The message being read, length prefix included (at most 2 + 65535 bytes).
    pub(super) inbuf: Vec<u8>,
    /// The answer being written, length prefix included.
    pub(super) out: Vec<u8>,
    pub(super) out_off: usize,
    /// A message is with the policy.
    pub(super) busy: bool,
    pub(super) last: Instant,
}

pub(super) struct TcpFlow {
    pub(super) id: u64,
    pub(super) info: FlowInfo,
    pub(super) started: Instant,
    /// The guest's latest SYN, replayed into smoltcp once the upstream is connected.
    pub(super) syn: Vec<u8>,
    pub(super) syn_ack: u32,
    pub(super) phase: TcpPhase,
}

impl Engine {
    pub(super) fn guest_tcp(&mut self, frame: &[u8], key: Key, syn: bool, rst: bool, next_seq: u32) {
        if let Some(flow) = self.tcp.get_mut(&key) {
            match flow.phase {
                TcpPhase::Active(_) | TcpPhase::Dns(_) => self.device.rx.push_back(frame.to_vec()),
                // Retransmitted SYNs while deciding: keep the latest, answer nothing yet.
                _ if syn => {
                    flow.syn = frame.to_vec();
                    flow.syn_ack = next_seq;
                }
                _ => {}
            }
            return;
        }
        if !syn {
            // No flow: smoltcp has no socket for it and answers with RST (not to a RST).
            if !rst {
                self.device.rx.push_back(frame.to_vec());
            }
            return;
        }
        let id = self.next_id();
        let dns = key.1.port() == 53;
        let proto = if dns { Proto::Dns } else { Proto::Tcp };
        let mut info = FlowInfo::new(proto, key.0, key.1).with_id(id);
        info.dns_over_tcp = dns;
        if let Some(why) = flows::pre_check(&self.cfg, proto, info.dst) {
            self.denied_early(info, why);
            return self.reset_guest(key, next_seq);
        }
        // Dropped, not reset: the guest's own SYN retransmission retries later, and a
        // flood costs neither a policy question nor a host socket.
        if !dns && !self.admit_connect() {
            return;
        }
        if !self.make_room() {
            Stats::bump(&self.stats().flows_denied);
            self.sink.emit(NetEvent::FlowLimit { flow: info });
            return self.reset_guest(key, next_seq);
        }
        if dns {
            // Every message on it is its own policy question; the connection itself
            // reaches nothing.
            let Some(handle) = self.listen_and_replay(key, frame.to_vec()) else {
                return self.reset_guest(key, next_seq);
            };
            let conn = DnsConn { handle, inbuf: Vec::new(), out: Vec::new(), out_off: 0, busy: false, last: Instant::now() };
            let phase = TcpPhase::Dns(Box::new(conn));
            self.tcp.insert(key, TcpFlow { id, info, started: Instant::now(), syn: Vec::new(), syn_ack: next_seq, phase });
            return;
        }
        self.ask(info.clone(), move |result| Internal::TcpDecided { key, id, result });
        self.tcp.insert(key, TcpFlow { id, info, started: Instant::now(), syn: frame.to_vec(), syn_ack: next_seq, phase: TcpPhase::Deciding });
    }

    pub(super) fn tcp_decided(&mut self, key: Key, id: u64, result: Result<Decision, PolicyFailure>) {
        let Some(flow) = self.tcp.get_mut(&key) else { return };
        if flow.id != id || !matches!(flow.phase, TcpPhase::Deciding) {
            return;
        }
        let intercept = matches!(result, Ok(Decision::Intercept));
        let socket = self.cfg.intercept_socket.clone();
        let accept = matches!(result, Ok(Decision::AcceptRaw)) || (intercept && socket.is_some());
        if !accept {
            let (ack, info) = (flow.syn_ack, flow.info.clone());
            self.tcp.remove(&key);
            self.verdict(&info, &result, false);
            return self.reset_guest(key, ack);
        }
        let info = flow.info.clone();
        let (dst, fid) = (info.dst, info.id);
        let (tx, limit, slots) = (self.tx.clone(), self.cfg.connect_timeout, self.host_slots.clone());
        let task = tokio::spawn(async move {
            // A host socket exists only while it holds a slot: wait for one (a
            // closing socket frees its slot once it is closed), then connect.
            let Ok(slot) = slots.acquire_owned().await else { return };
            let io = match socket {
                Some(path) if intercept => host::connect_intercept(&path, fid, limit).await.map(HostIo::Unix),
                _ => host::connect(dst, limit).await.map(HostIo::Tcp),
            };
            let result = io.map(|io| HostConn { io, slot });
            let _ = tx.send(Internal::TcpConnected { key, id, result });
        });
        flow.phase = TcpPhase::Connecting(task.abort_handle());
        self.verdict(&info, &result, true);
    }

    /// A smoltcp socket listening on exactly the flow's destination, fed the held SYN:
    /// once it took it, it is in SYN-RECEIVED and bound to this 4-tuple.
    fn listen_and_replay(&mut self, key: Key, syn: Vec<u8>) -> Option<SocketHandle> {
        // Drain what smoltcp has queued, so the replayed SYN is the only one the new
        // listener can see.
        self.poll();
        let mut sock = self.new_socket();
        let ep = IpListenEndpoint { addr: Some(IpAddress::from(key.1.ip())), port: key.1.port() };
        sock.listen(ep).ok()?;
        let handle = self.sockets.add(sock);
        self.device.rx.push_back(syn);
        self.poll();
        if self.sockets.get::<tcp::Socket>(handle).state() != tcp::State::SynReceived {
            self.sockets.remove(handle);
            return None;
        }
        Some(handle)
    }

    pub(super) fn new_socket(&self) -> tcp::Socket<'static> {
        let n = self.cfg.tcp_buffer;
        let mut sock = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; n]), tcp::SocketBuffer::new(vec![0; n]));
        sock.set_nagle_enabled(false);
        sock
    }

    pub(super) fn tcp_connected(&mut self, key: Key, id: u64, result: Result<HostConn, String>) {
        let Some(flow) = self.tcp.get(&key) else { return };
        if flow.id != id || !matches!(flow.phase, TcpPhase::Connecting(_)) {
            return;
        }
        let (syn, ack, info) = (flow.syn.clone(), flow.syn_ack, flow.info.clone());
        let conn = match result {
            Ok(s) => s,
            Err(error) => {
                self.tcp.remove(&key);
                self.sink.emit(NetEvent::UpstreamFailed { flow: info, error });
                return self.reset_guest(key, ack);
            }
        };
        let Some(handle) = self.listen_and_replay(key, syn) else {
            self.tcp.remove(&key);
            self.sink.emit(NetEvent::UpstreamFailed { flow: info, error: "guest SYN not taken by the stack".into() });
            return self.reset_guest(key, ack);
        };
        let active = self.attach(key, id, handle, conn);
        if let Some(flow) = self.tcp.get_mut(&key) {
            flow.phase = TcpPhase::Active(Box::new(active));
        }
    }

    /// Starts the host-side tasks that splice `conn` with the smoltcp socket `handle`.
    pub(super) fn attach(&mut self, key: Key, id: u64, handle: SocketHandle, conn: HostConn) -> Active {
        let credit = Arc::new(Semaphore::new(CREDITS));
        let (to_host, to_host_rx) = mpsc::channel(CREDITS);
        let (reset_tx, reset_rx) = oneshot::channel();
        let tx = self.tx.clone();
        let HostConn { io, slot } = conn;
        let slot = Arc::new(slot);
        let tasks = match io {
            HostIo::Tcp(s) => {
                let (rd, wr) = s.into_split();
                let (rd, wr) = (Slotted::new(rd, slot.clone()), Slotted::new(wr, slot));
                [
                    tokio::spawn(host::tcp_reader(rd, credit.clone(), tx.clone(), key, id)).abort_handle(),
                    tokio::spawn(host::tcp_writer(wr, to_host_rx, reset_rx, tx, key, id)).abort_handle(),
                ]
            }
            HostIo::Unix(s) => {
                let (rd, wr) = s.into_split();
                let (rd, wr) = (Slotted::new(rd, slot.clone()), Slotted::new(wr, slot));
                [
                    tokio::spawn(host::tcp_reader(rd, credit.clone(), tx.clone(), key, id)).abort_handle(),
                    tokio::spawn(host::tcp_writer(wr, to_host_rx, reset_rx, tx, key, id)).abort_handle(),
                ]
            }
        };
        Active {
            handle,
            to_host: Some(to_host),
            reset_host: Some(reset_tx),
            from_host: Default::default(),
            from_off: 0,
            credit,
            host_eof: false,
            fin_sent: false,
            guest_fin: false,
            tasks,
        }
    }

    /// Moves bytes between smoltcp sockets and host tasks; true if anything moved.
    pub(super) fn service(&mut self) -> bool {
        let mut moved = false;
        let mut finished = Vec::new();
        for (key, flow) in self.tcp.iter_mut() {
            let a = match &mut flow.phase {
                TcpPhase::Active(a) => a,
                TcpPhase::Dns(d) => {
                    if service_dns(&mut self.sockets, *key, d, flow.id, &flow.info, &mut self.dns_ask) {
                        moved = true;
                    }
                    let state = self.sockets.get::<tcp::Socket>(d.handle).state();
                    // Listen again: the guest reset the handshake (smoltcp returns a
                    // passively opened socket to LISTEN), and a stale listener must not
                    // take another flow's SYN.
                    if matches!(state, tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen) {
                        finished.push(*key);
                    }
                    continue;
                }
                _ => continue,
            };
            let sock = self.sockets.get_mut::<tcp::Socket>(a.handle);
            // host → guest, as far as the socket's send window allows
            while let Some(front) = a.from_host.front() {
                if !sock.can_send() {
                    break;
                }
                let n = sock.send_slice(&front[a.from_off..]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                moved = true;
                a.from_off += n;
                if a.from_off == front.len() {
                    a.from_host.pop_front();
                    a.from_off = 0;
                    a.credit.add_permits(1);
                }
            }
            if a.host_eof && a.from_host.is_empty() && !a.fin_sent && sock.may_send() {
                sock.close();
                a.fin_sent = true;
                moved = true;
            }
            // guest → host, while the writer has room; otherwise smoltcp's receive
            // buffer fills and the guest's window closes
            if let Some(tx) = &a.to_host {
                while sock.can_recv() {
                    let Ok(permit) = tx.try_reserve() else { break };
                    let mut buf = vec![0u8; CHUNK.min(sock.recv_queue())];
                    let n = sock.recv_slice(&mut buf).unwrap_or(0);
                    buf.truncate(n);
                    permit.send(buf);
                    moved = true;
                }
            }
            let state = sock.state();
            let peer_fin = matches!(state, tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait);
            if peer_fin && !sock.can_recv() && a.to_host.is_some() {
                a.to_host = None; // writer drains, then half-closes towards the host
                a.guest_fin = true;
            }
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen) {
                finished.push(*key);
            }
        }
        for key in finished {
            self.finish_tcp(key);
            moved = true;
        }
        moved
    }

    pub(super) fn finish_tcp(&mut self, key: Key) {
        let Some(flow) = self.tcp.remove(&key) else { return };
        let mut a = match flow.phase {
            TcpPhase::Active(a) => a,
            TcpPhase::Dns(d) => {
                self.sockets.remove(d.handle);
                return;
            }
            _ => return,
        };
        self.sockets.remove(a.handle);
        let orderly = a.guest_fin && a.host_eof;
        if let Some(reset) = a.reset_host.take() {
            if !orderly {
                let _ = reset.send(());
            }
        }
        // The writer owns the last half of the host socket and ends on its own (it
        // half-closed already, or applies the reset); the reader has nothing left to do.
        a.tasks[0].abort();
        if orderly {
            a.tasks[1].abort();
        }
    }

    /// The answer to a DNS-over-TCP message: queue it, length-prefixed.
    pub(super) fn dns_tcp_answer(&mut self, key: Key, id: u64, payload: Vec<u8>) {
        let Some(TcpFlow { id: fid, phase: TcpPhase::Dns(d), .. }) = self.tcp.get_mut(&key) else { return };
        if *fid != id {
            return;
        }
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        d.out.clear();
        d.out.extend_from_slice(&len.to_be_bytes());
        d.out.extend_from_slice(&payload[..usize::from(len)]);
        d.out_off = 0;
        d.busy = false;
        d.last = Instant::now();
    }
}

/// A DNS message read off a TCP connection, to be asked about by the engine.
pub(super) struct DnsTcpQuery {
    pub(super) key: Key,
    pub(super) info: FlowInfo,
    pub(super) key_id: u64,
    pub(super) message: Vec<u8>,
}

/// Writes the pending answer, reads the next message when idle; true if anything moved.
/// Complete messages are pushed to `ask` for the engine to hand to the policy.
fn service_dns(sockets: &mut SocketSet<'static>, key: Key, d: &mut DnsConn, flow_id: u64, info: &FlowInfo, ask: &mut Vec<DnsTcpQuery>) -> bool {
    let sock = sockets.get_mut::<tcp::Socket>(d.handle);
    let mut moved = false;
    while d.out_off < d.out.len() && sock.can_send() {
        let n = sock.send_slice(&d.out[d.out_off..]).unwrap_or(0);
        if n == 0 {
            break;
        }
        d.out_off += n;
        moved = true;
    }
    if d.out_off == d.out.len() && !d.out.is_empty() {
        d.out.clear();
        d.out_off = 0;
    }
    if d.busy || !d.out.is_empty() {
        return moved;
    }
    while sock.can_recv() {
        let need = if d.inbuf.len() < 2 {
            2 - d.inbuf.len()
        } else {
            2 + usize::from(u16::from_be_bytes([d.inbuf[0], d.inbuf[1]])) - d.inbuf.len()
        };
        if need == 0 {
            break;
        }
        let mut buf = vec![0u8; need];
        let n = sock.recv_slice(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        d.inbuf.extend_from_slice(&buf[..n]);
        moved = true;
    }
    let complete = d.inbuf.len() >= 2 && d.inbuf.len() == 2 + usize::from(u16::from_be_bytes([d.inbuf[0], d.inbuf[1]]));
    if complete {
        let message = std::mem::take(&mut d.inbuf).split_off(2);
        d.busy = true;
        d.last = Instant::now();
        ask.push(DnsTcpQuery { key, info: info.clone(), key_id: flow_id, message });
    } else if d.inbuf.is_empty() && !sock.may_recv() && sock.may_send() {
        sock.close(); // the guest is done asking
    }
    moved
}
