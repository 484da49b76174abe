//! A smoltcp device backed by two frame queues. The stack decides which guest frames
//! reach smoltcp by pushing them into `rx`; everything smoltcp emits lands in `tx`.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub struct QueueDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    mtu: usize,
    /// smoltcp is refused a TX token beyond this, which holds its sockets back until
    /// the guest stream drains (backpressure instead of an unbounded queue).
    tx_limit: usize,
}

impl QueueDevice {
    /// `mtu` is the IP MTU; frames carry 14 more bytes.
    pub fn new(mtu: usize, tx_limit: usize) -> Self {
        Self { rx: VecDeque::new(), tx: VecDeque::new(), mtu, tx_limit }
    }

    pub fn tx_has_room(&self) -> bool {
        self.tx.len() < self.tx_limit
    }
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        // A reply needs room too; without it leave the frame queued for the next poll.
        if !self.tx_has_room() {
            return None;
        }
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx_has_room() {
            Some(TxToken(&mut self.tx))
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps
    }
}
