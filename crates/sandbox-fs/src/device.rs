//! The vhost-user-fs device: QEMU hands us the virtqueues and guest memory
//! over a vhost-user socket; each request chain is decoded by the
//! [`Session`] and answered from the backend on the engine's runtime, so a
//! slow filesystem call never stalls the queue (virtio-fs allows
//! completions in any order).

use crate::backend::FsBackend;
use crate::session::{error_reply, CachePolicy, Prepared, Session, MAX_WRITE};
use crate::Errno;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::QueueOwnedT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;
type Vring = VringRwLock<Mem>;

/// hiprio queue + one request queue (QEMU's `num-request-queues=1`).
const NUM_QUEUES: usize = 2;
/// Queue size QEMU is told to use (`queue-size=`); bounds the requests in flight.
pub const QUEUE_SIZE: usize = 1024;
/// Largest request we accept from the guest: a WRITE of MAX_WRITE plus headers.
const MAX_REQUEST: usize = MAX_WRITE as usize + 4096;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("socket directory {0}: {1}")]
    SocketDir(PathBuf, io::Error),
    #[error("vhost-user listener on {0}: {1}")]
    Listen(PathBuf, String),
    #[error("device thread: {0}")]
    Thread(io::Error),
}

struct Inner<B: FsBackend> {
    session: Arc<Session<B>>,
    mem: RwLock<Option<Mem>>,
    rt: tokio::runtime::Handle,
}

/// A virtio-fs device serving one backend.
pub struct FsDevice<B: FsBackend>(Arc<Inner<B>>);

impl<B: FsBackend> Clone for FsDevice<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<B: FsBackend> FsDevice<B> {
    fn process(&self, vring: &Vring) -> io::Result<()> {
        let Some(mem) = self.0.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let guard = mem.memory();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            match state.get_queue_mut().iter(guard.clone()) {
                Ok(it) => it.collect(),
                Err(e) => return Err(io::Error::other(format!("virtqueue: {e}"))),
            }
        };
        let mut answered = false;
        for chain in chains {
            let head = chain.head_index();
            let mut request = Vec::new();
            let mut out: Vec<(GuestAddress, usize)> = Vec::new();
            let mut bad = false;
            for desc in chain.clone() {
                let len = desc.len() as usize;
                if desc.is_write_only() {
                    out.push((desc.addr(), len));
                } else if !out.is_empty() || request.len() + len > MAX_REQUEST {
                    bad = true; // readable after writable, or oversized: not a FUSE request
                } else {
                    let start = request.len();
                    request.resize(start + len, 0);
                    if guard.read_slice(&mut request[start..], desc.addr()).is_err() {
                        bad = true;
                    }
                }
            }
            if bad {
                let written = write_reply(&mem, &out, &garbage_reply(&request));
                answered |= vring.add_used(head, written as u32).is_ok();
                continue;
            }
            // FORGET, INIT and unsupported operations are answered on this thread:
            // no hop to the runtime for what needs no backend call.
            let call = match self.0.session.prepare(&request) {
                Prepared::Answered(reply) => {
                    let written = reply.map_or(0, |bytes| write_reply(&mem, &out, &bytes));
                    answered |= vring.add_used(head, written as u32).is_ok();
                    continue;
                }
                Prepared::Call(call) => match self.0.session.call_now(call) {
                    // A backend of plain system calls answers here, on the device thread.
                    Ok(reply) => {
                        let written = write_reply(&mem, &out, &reply);
                        answered |= vring.add_used(head, written as u32).is_ok();
                        continue;
                    }
                    Err(call) => call,
                },
            };
            let session = self.0.session.clone();
            let vring = vring.clone();
            let mem = mem.clone();
            self.0.rt.spawn(async move {
                let written = write_reply(&mem, &out, &session.call(call).await);
                if vring.add_used(head, written as u32).is_ok() {
                    let _ = vring.signal_used_queue();
                }
            });
        }
        if answered {
            let _ = vring.signal_used_queue();
        }
        Ok(())
    }
}

fn garbage_reply(request: &[u8]) -> Vec<u8> {
    let unique = request.get(8..16).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0);
    error_reply(unique, Errno::EINVAL)
}

/// Scatters `bytes` over the chain's writable descriptors. A reply that does
/// not fit (the guest gave too little room) is replaced by an EIO error.
fn write_reply(mem: &Mem, out: &[(GuestAddress, usize)], bytes: &[u8]) -> usize {
    let room: usize = out.iter().map(|(_, l)| *l).sum();
    let fallback;
    let bytes = if bytes.len() > room {
        let unique = bytes.get(8..16).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0);
        fallback = error_reply(unique, Errno::EIO);
        if fallback.len() > room {
            return 0;
        }
        &fallback[..]
    } else {
        bytes
    };
    let guard = mem.memory();
    let mut done = 0;
    for (addr, len) in out {
        if done == bytes.len() {
            break;
        }
        let n = (*len).min(bytes.len() - done);
        if guard.write_slice(&bytes[done..done + n], *addr).is_err() {
            return done;
        }
        done += n;
    }
    done
}

impl<B: FsBackend> VhostUserBackend for FsDevice<B> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.0.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn handle_event(&self, device_event: u16, evset: EventSet, vrings: &[Vring], _thread_id: usize) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected vring event set {evset:?}")));
        }
        let Some(vring) = vrings.get(device_event as usize) else {
            return Err(io::Error::other(format!("event for unknown queue {device_event}")));
        };
        self.process(vring)
    }
}

/// A running device: its socket path (for QEMU's `-chardev socket,path=`).
pub struct Served {
    pub socket: PathBuf,
}

/// Listens on `dir/name.sock` (dir must be private to the helper), then serves
/// the one VMM connection on its own thread until the VMM hangs up. Requests
/// are answered by tasks on `rt` — the runtime that also talks to the backend,
/// so a request's round trip crosses no further threads. A failure of the
/// device thread is passed to `report`.
pub fn serve<B: FsBackend>(
    dir: &Path,
    name: &str,
    backend: Arc<B>,
    cache: CachePolicy,
    rt: tokio::runtime::Handle,
    report: impl Fn(String) + Send + 'static,
) -> Result<Served, DeviceError> {
    let socket = dir.join(format!("{name}.sock"));
    let mut listener = Listener::new(&socket, true).map_err(|e| DeviceError::Listen(socket.clone(), e.to_string()))?;
    let device = FsDevice(Arc::new(Inner { session: Arc::new(Session::new(backend, cache)), mem: RwLock::new(None), rt }));
    let thread_name = format!("sandbox-vu-{name}");
    let path = socket.clone();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let mut daemon = match VhostUserDaemon::new(thread_name, device, GuestMemoryAtomic::new(GuestMemoryMmap::new())) {
                Ok(d) => d,
                Err(e) => return report(format!("{}: {e}", path.display())),
            };
            let started = daemon.start(&mut listener);
            // Connected (or failed): the path has done its job.
            let _ = std::fs::remove_file(&path);
            if let Err(e) = started {
                return report(format!("{}: {e}", path.display()));
            }
            if let Err(e) = daemon.wait() {
                log::debug!("virtio-fs device ended: {e}");
            }
        })
        .map_err(DeviceError::Thread)?;
    Ok(Served { socket })
}
