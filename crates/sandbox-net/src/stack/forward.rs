//! Inbound: host connections on a loopback port forwarded to a guest listener. The
//! stack opens the guest side itself (from the gateway address), so these flows ask
//! no policy: the host chose to connect.

use super::*;

use tokio::net::TcpListener;

/// First local port used on the gateway side of forwarded connections.
pub(super) const FIRST_PORT: u16 = 49152;

pub(super) enum Control {
    Forward { guest_port: u16, host_port: u16, reply: oneshot::Sender<Result<u16, String>> },
}

/// Requests to a running stack.
#[derive(Clone)]
pub struct NetControl(mpsc::Sender<Control>);

impl NetControl {
    pub(super) fn new(tx: mpsc::Sender<Control>) -> Self {
        Self(tx)
    }

    /// Listens on 127.0.0.1:`host_port` (0 picks one) and forwards every connection to
    /// the guest's `guest_port`, until the stack ends. Returns the bound port.
    pub async fn forward_port(&self, guest_port: u16, host_port: u16) -> Result<u16, String> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Control::Forward { guest_port, host_port, reply }).await.map_err(|_| "the network stack has stopped".to_string())?;
        rx.await.map_err(|_| "the network stack has stopped".to_string())?
    }
}

impl Engine {
    pub(super) async fn control(&mut self, c: Control) {
        match c {
            Control::Forward { guest_port, host_port, reply } => {
                let _ = reply.send(self.listen(guest_port, host_port).await);
            }
        }
    }

    async fn listen(&mut self, guest_port: u16, host_port: u16) -> Result<u16, String> {
        if guest_port == 0 {
            return Err("guest port 0 cannot be forwarded".into());
        }
        if self.listeners.len() >= self.cfg.max_port_forwards {
            return Err(format!("at most {} forwarded ports per sandbox", self.cfg.max_port_forwards));
        }
        let listener = TcpListener::bind(("127.0.0.1", host_port)).await.map_err(|e| format!("listen on 127.0.0.1:{host_port}: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let tx = self.tx.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        if tx.send(Internal::Inbound { guest_port, stream }).is_err() {
                            return;
                        }
                    }
                    // Out of descriptors and the like: back off, keep listening.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        self.listeners.push(task.abort_handle());
        Ok(port)
    }

    /// Opens a connection from the gateway to the guest and splices `stream` with it.
    pub(super) fn inbound(&mut self, guest_port: u16, stream: TcpStream) {
        if !self.make_room() {
            Stats::bump(&self.stats().flows_denied);
            return; // dropping the stream closes the host connection
        }
        // The accepted host connection is a host socket like any other.
        let Ok(slot) = self.host_slots.clone().try_acquire_owned() else {
            Stats::bump(&self.stats().flows_denied);
            return;
        };
        let guest = SocketAddr::from((self.cfg.guest_ip, guest_port));
        let Some(local) = self.free_forward_port(guest) else { return };
        let key = (guest, SocketAddr::from((self.cfg.gateway_ip, local)));
        let mut sock = self.new_socket();
        let remote = (IpAddress::Ipv4(self.cfg.guest_ip), guest_port);
        if sock.connect(self.iface.context(), remote, (IpAddress::Ipv4(self.cfg.gateway_ip), local)).is_err() {
            return;
        }
        let handle = self.sockets.add(sock);
        let id = self.next_id();
        let active = self.attach(key, id, handle, HostConn { io: HostIo::Tcp(stream), slot });
        let info = FlowInfo::new(Proto::Tcp, key.1, key.0).with_id(id);
        let phase = TcpPhase::Active(Box::new(active));
        self.tcp.insert(key, TcpFlow { id, info, started: Instant::now(), syn: Vec::new(), syn_ack: 0, phase });
    }

    fn free_forward_port(&mut self, guest: SocketAddr) -> Option<u16> {
        for _ in 0..(u16::MAX - FIRST_PORT) {
            let p = self.next_forward_port;
            self.next_forward_port = if p == u16::MAX { FIRST_PORT } else { p + 1 };
            if !self.tcp.contains_key(&(guest, SocketAddr::from((self.cfg.gateway_ip, p)))) {
                return Some(p);
            }
        }
        None
    }
}
