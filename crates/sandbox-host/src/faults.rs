//! Test-only fault injection: `sandbox-host --inject-faults RATE[:SEED[:SKIP]]`
//! corrupts that share of the request frames the helper sends to Node (block,
//! filesystem and network requests), so tests can show that one bad frame
//! costs one operation and is reported, never a deadline or a process. The
//! first SKIP requests (default 0) pass intact, so a boot's own calls (the
//! block store's first `list`) can be spared. The frame header stays intact
//! (the stream must stay in sync); the payload is flipped, truncated or replaced.

use sandbox_protocol::HEADER_LEN;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct Faults {
    /// Out of 1_000_000.
    per_million: u32,
    skip: AtomicU64,
    rng: Mutex<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--inject-faults takes RATE[:SEED[:SKIP]] with RATE in 0..=1, got {0:?}")]
pub struct FaultSpecError(String);

impl Faults {
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        let bad = || FaultSpecError(spec.to_string());
        let mut parts = spec.split(':');
        let rate: f64 = parts.next().unwrap_or_default().parse().map_err(|_| bad())?;
        let seed: u64 = parts.next().unwrap_or("1").parse().map_err(|_| bad())?;
        let skip: u64 = parts.next().unwrap_or("0").parse().map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        if !(0.0..=1.0).contains(&rate) {
            return Err(bad());
        }
        // In range by the check above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let per_million = (rate * 1_000_000.0) as u32;
        Ok(Self { per_million, skip: AtomicU64::new(skip), rng: Mutex::new(seed | 1) })
    }

    fn next(&self) -> u64 {
        let mut s = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        // xorshift64: deterministic per seed, plenty for picking faults.
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Maybe corrupts one encoded frame in place.
    pub fn corrupt(&self, frame: &mut Vec<u8>) {
        if self.skip.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return;
        }
        if frame.len() <= HEADER_LEN || self.next() % 1_000_000 >= u64::from(self.per_million) {
            return;
        }
        let payload_len = frame.len() - HEADER_LEN;
        let pick = |n: usize| usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0);
        match self.next() % 3 {
            0 => {
                // Flip a few bytes of the payload (often inside the JSON header).
                for _ in 0..=pick(4) {
                    let at = HEADER_LEN + pick(payload_len.min(64));
                    frame[at] ^= 0x5a;
                }
            }
            1 => {
                // Cut the payload short and fix the length so the stream stays in sync.
                let keep = pick(payload_len);
                frame.truncate(HEADER_LEN + keep);
                let len = u32::try_from(keep + 5).unwrap_or(u32::MAX);
                frame[..4].copy_from_slice(&len.to_be_bytes());
            }
            _ => {
                // Replace the payload with JSON of the wrong shape.
                let junk = br#"{"op":null,"mount":-1}"#;
                frame.truncate(HEADER_LEN);
                frame.extend_from_slice(&u32::try_from(junk.len()).unwrap_or(0).to_be_bytes());
                frame.extend_from_slice(junk);
                let len = u32::try_from(frame.len() - 4).unwrap_or(u32::MAX);
                frame[..4].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_protocol::{self as proto, FrameDecoder};

    #[test]
    fn corrupted_frames_stay_frames() {
        let f = Faults::parse("1:7").unwrap();
        for i in 0..200u32 {
            let mut frame = proto::encode_framed(i + 1, &proto::BlockRequest::Flush, &[&[9u8; 100]]);
            f.corrupt(&mut frame);
            let mut dec = FrameDecoder::new();
            dec.push(&frame);
            let got = dec.next_frame().unwrap().unwrap();
            assert_eq!(got.channel, i + 1, "the header (and so the call id) survives");
            assert_eq!(dec.buffered(), 0);
        }
        let spared = Faults::parse("1:3:2").unwrap();
        for i in 0..3 {
            let mut frame = proto::encode_framed(1, &proto::BlockRequest::Flush, &[&[9u8; 100]]);
            let before = frame.clone();
            spared.corrupt(&mut frame);
            assert_eq!(frame == before, i < 2, "the first two pass intact");
        }
        assert!(Faults::parse("2").is_err());
        assert!(Faults::parse("0.1:1:2:3").is_err());
        assert!(Faults::parse("x").is_err());
        let none = Faults::parse("0").unwrap();
        let mut frame = proto::encode_framed(1, &proto::BlockRequest::Flush, &[]);
        let before = frame.clone();
        none.corrupt(&mut frame);
        assert_eq!(frame, before);
    }
}
