//! One request/reply service channel for every call the helper makes into
//! Node (block store, filesystem, network policy), as a device registers with
//! an event manager: a service declares its kinds, deadline and bound on calls
//! in flight, and the relay routes replies to it by kind; the call's id is the
//! frame's channel, so even a reply whose payload cannot be decoded reaches
//! its call and fails it at once instead of at the deadline.
//!
//! A call waits for a slot (`max_in_flight`), sends its request, then takes
//! reply frames until its `absorb` says it is done, all within its deadline.
//! A reply for an id nobody waits for (late, or bogus) is dropped and reported.

use crate::diag::Diag;
use crate::faults::Faults;
use crate::link::NodeTx;
use sandbox_protocol::{DiagnosticSource, Kind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// What a service is, for the relay and for messages.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub request: Kind,
    pub reply: Kind,
    /// The whole call: waiting for a slot, sending, and every reply frame.
    pub deadline: Duration,
    pub max_in_flight: usize,
    /// Where diagnostics about this service are filed.
    pub source: DiagnosticSource,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the connection to Node is gone")]
    Closed,
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("bad answer from Node: {0}")]
    Malformed(String),
}

/// After each reply frame: wait for more, or the call's result.
pub enum Step<T> {
    More,
    Done(T),
}

/// Where the relay delivers one kind of reply frame.
pub trait ReplySink: Send + Sync {
    fn deliver(&self, channel: u32, payload: Vec<u8>);
}

pub struct Service {
    spec: ServiceSpec,
    tx: NodeTx,
    diag: Diag,
    faults: Option<Arc<Faults>>,
    pending: Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>,
    next_id: AtomicU32,
    slots: Semaphore,
}

/// Removes a call's entry however the call ends (result, deadline, cancellation).
struct Entry<'a>(&'a Service, u32);

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.0.pending().remove(&self.1);
    }
}

impl Service {
    pub fn new(spec: ServiceSpec, tx: NodeTx, diag: Diag, faults: Option<Arc<Faults>>) -> Arc<Self> {
        Arc::new(Self {
            spec,
            tx,
            diag,
            faults,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            slots: Semaphore::new(spec.max_in_flight),
        })
    }

    pub fn diag(&self) -> &Diag {
        &self.diag
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh id (never 0, never one still waiting) and its reply queue.
    fn register(&self) -> (u32, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut pending = self.pending();
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !pending.contains_key(&id) {
                pending.insert(id, tx);
                return (id, rx);
            }
        }
    }

    /// Makes one call: `request(id)` builds the request frame (channel = id),
    /// `absorb` takes each reply payload until it returns `Done` or an error.
    pub async fn call<T>(&self, request: impl FnOnce(u32) -> Vec<u8>, mut absorb: impl FnMut(&[u8]) -> Result<Step<T>, String>) -> Result<T, CallError> {
        let exchange = async {
            let _slot = self.slots.acquire().await.map_err(|_| CallError::Closed)?;
            let (id, mut replies) = self.register();
            let _entry = Entry(self, id);
            let mut frame = request(id);
            debug_assert_eq!(frame.get(4).copied(), Some(self.spec.request as u8), "{} built a frame of another kind", self.spec.name);
            if let Some(f) = &self.faults {
                f.corrupt(&mut frame);
            }
            self.tx.send(frame).await.map_err(|_| CallError::Closed)?;
            loop {
                let payload = replies.recv().await.ok_or(CallError::Closed)?;
                match absorb(&payload) {
                    Ok(Step::More) => {}
                    Ok(Step::Done(v)) => return Ok(v),
                    Err(why) => return Err(CallError::Malformed(why)),
                }
            }
        };
        tokio::time::timeout(self.spec.deadline, exchange).await.unwrap_or(Err(CallError::Timeout(self.spec.deadline)))
    }

    /// Sends a frame that expects no reply (e.g. a forget); dropped when the queue is full.
    pub fn notify(&self, frame: Vec<u8>) -> bool {
        self.tx.try_send(frame)
    }
}

impl ReplySink for Service {
    fn deliver(&self, channel: u32, payload: Vec<u8>) {
        let waiting = self.pending().get(&channel).cloned();
        match waiting {
            Some(tx) => {
                let _ = tx.send(payload);
            }
            None => self.diag.warn(
                self.spec.source,
                format!("{} reply for call {channel}, which is not waiting (late after its deadline, or never made); dropped", self.spec.name),
            ),
        }
    }
}

/// Reply kinds → where their frames go.
#[derive(Default, Clone)]
pub struct Router {
    sinks: HashMap<u8, Arc<dyn ReplySink>>,
}

impl Router {
    /// Routes the service's reply kind to it.
    pub fn add_service(&mut self, service: Arc<Service>) {
        self.sinks.insert(service.spec.reply as u8, service);
    }

    /// Routes `reply` frames to another sink (e.g. a forwarder to the krun child).
    pub fn add(&mut self, reply: Kind, sink: Arc<dyn ReplySink>) {
        self.sinks.insert(reply as u8, sink);
    }

    /// Delivers a reply frame; false when no service takes this kind.
    pub fn deliver(&self, kind: Kind, channel: u32, payload: Vec<u8>) -> bool {
        match self.sinks.get(&(kind as u8)) {
            Some(s) => {
                s.deliver(channel, payload);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_protocol::{self as proto, FrameDecoder};

    fn spec(deadline_ms: u64, slots: usize) -> ServiceSpec {
        ServiceSpec {
            name: "test",
            request: Kind::BlockRequest,
            reply: Kind::BlockReply,
            deadline: Duration::from_millis(deadline_ms),
            max_in_flight: slots,
            source: DiagnosticSource::Block,
        }
    }

    /// Reads request frames and answers each with `answer(channel)` (empty: silence).
    fn node(svc: Arc<Service>, mut rx: mpsc::Receiver<Vec<u8>>, answer: impl Fn(u32) -> Vec<Vec<u8>> + Send + 'static) {
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let mut dec = FrameDecoder::new();
                dec.push(&frame);
                let Ok(Some(f)) = dec.next_frame() else { continue };
                for payload in answer(f.channel) {
                    svc.deliver(f.channel, payload);
                }
            }
        });
    }

    fn req(id: u32) -> Vec<u8> {
        proto::encode_framed(id, &proto::BlockRequest::Flush, &[])
    }

    #[tokio::test]
    async fn replies_reach_their_call_by_channel_including_multi_frame_ones() {
        let (tx, rx) = NodeTx::new(16);
        let svc = Service::new(spec(2000, 4), tx, Diag::none(), None);
        node(svc.clone(), rx, |id| vec![vec![1, id.to_be_bytes()[3]], vec![2], vec![3]]);
        let got = svc
            .call(req, |p| Ok(if p[0] == 3 { Step::Done(p.to_vec()) } else { Step::More }))
            .await
            .unwrap();
        assert_eq!(got, vec![3]);
        assert!(svc.pending().is_empty());
    }

    #[tokio::test]
    async fn a_bad_reply_fails_its_call_at_once_and_silence_at_the_deadline() {
        let (tx, rx) = NodeTx::new(16);
        let svc = Service::new(spec(300, 4), tx, Diag::none(), None);
        node(svc.clone(), rx, |id| if id == 1 { vec![b"junk".to_vec()] } else { vec![] });
        let t0 = std::time::Instant::now();
        let bad = svc.call(req, |_| Err::<Step<()>, _>("not a reply".into())).await;
        assert_eq!(bad, Err(CallError::Malformed("not a reply".into())));
        assert!(t0.elapsed() < Duration::from_millis(200), "a bad reply must not cost the deadline");
        let silent = svc.call(req, |_| Ok(Step::Done(()))).await;
        assert_eq!(silent, Err(CallError::Timeout(Duration::from_millis(300))));
        assert!(svc.pending().is_empty());
        // A reply for a call that is gone is dropped, not delivered elsewhere.
        svc.deliver(2, vec![1]);
    }

    #[tokio::test]
    async fn calls_in_flight_are_bounded() {
        let (tx, mut rx) = NodeTx::new(16);
        let svc = Service::new(spec(300, 2), tx, Diag::none(), None);
        let calls: Vec<_> = (0..3).map(|_| tokio::spawn({
            let s = svc.clone();
            async move { s.call(req, |_| Ok(Step::Done(()))).await }
        })).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut sent = 0;
        while rx.try_recv().is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 2, "the third call waits for a slot");
        for c in calls {
            assert!(matches!(c.await.unwrap(), Err(CallError::Timeout(_))));
        }
    }
}
