//! The guest's NIC as a byte stream: `u32 BE length | Ethernet frame`, as spoken by
//! QEMU `-netdev stream` and libkrun's unixstream backend.
//!
//! The decoder is incremental and never allocates more than one maximum frame, so a
//! hostile length prefix costs the guest its own bandwidth and nothing else.

/// Largest frame accepted: a 64 KiB IP packet plus the Ethernet header.
pub const MAX_FRAME: usize = 65535 + 14;

/// Why a frame was discarded by the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("zero-length frame")]
    Empty,
    #[error("frame of {0} bytes exceeds {MAX_FRAME}")]
    Oversize(u32),
}

enum State {
    Header { got: usize, bytes: [u8; 4] },
    Body { len: usize },
    /// Discarding the body of an oversize frame: reading it is the only way to stay in
    /// sync with the stream, keeping it would mean allocating what the guest asks for.
    Skip { remaining: u64 },
}

/// Incremental decoder for the length-prefixed stream.
pub struct FrameDecoder {
    state: State,
    body: Vec<u8>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self { state: State::Header { got: 0, bytes: [0; 4] }, body: Vec::new() }
    }

    /// Feeds bytes read from the stream; calls `on` for every complete frame or
    /// rejected frame, in stream order.
    pub fn push(&mut self, mut input: &[u8], mut on: impl FnMut(Result<&[u8], FrameError>)) {
        while !input.is_empty() {
            match &mut self.state {
                State::Header { got, bytes } => {
                    let take = (4 - *got).min(input.len());
                    bytes[*got..*got + take].copy_from_slice(&input[..take]);
                    *got += take;
                    input = &input[take..];
                    if *got < 4 {
                        continue;
                    }
                    let len = u32::from_be_bytes(*bytes);
                    if len == 0 {
                        on(Err(FrameError::Empty));
                        self.state = State::Header { got: 0, bytes: [0; 4] };
                    } else if len as usize > MAX_FRAME {
                        on(Err(FrameError::Oversize(len)));
                        self.state = State::Skip { remaining: u64::from(len) };
                    } else {
                        self.body.clear();
                        self.state = State::Body { len: len as usize };
                    }
                }
                State::Body { len } => {
                    let len = *len;
                    let take = (len - self.body.len()).min(input.len());
                    self.body.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.body.len() == len {
                        on(Ok(&self.body));
                        self.body.clear();
                        self.state = State::Header { got: 0, bytes: [0; 4] };
                    }
                }
                State::Skip { remaining } => {
                    let take = (*remaining).min(input.len() as u64);
                    *remaining -= take;
                    input = &input[take as usize..];
                    if *remaining == 0 {
                        self.state = State::Header { got: 0, bytes: [0; 4] };
                    }
                }
            }
        }
    }
}

/// Appends one encoded frame to `out`.
pub fn encode(frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if frame.is_empty() {
        return Err(FrameError::Empty);
    }
    if frame.len() > MAX_FRAME {
        return Err(FrameError::Oversize(u32::try_from(frame.len()).unwrap_or(u32::MAX)));
    }
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Vec<FrameError>) {
        let mut d = FrameDecoder::new();
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for part in input.chunks(chunk.max(1)) {
            d.push(part, |r| match r {
                Ok(f) => ok.push(f.to_vec()),
                Err(e) => bad.push(e),
            });
        }
        (ok, bad)
    }

    #[test]
    fn round_trip_any_chunking() {
        let mut wire = Vec::new();
        let frames: Vec<Vec<u8>> = (1..40usize).map(|n| (0..n * 37).map(|i| i as u8).collect()).collect();
        for f in &frames {
            encode(f, &mut wire).unwrap();
        }
        for chunk in [1, 2, 3, 7, 64, 1500, wire.len()] {
            let (ok, bad) = decode_all(&wire, chunk);
            assert_eq!(ok, frames, "chunk {chunk}");
            assert!(bad.is_empty());
        }
    }

    #[test]
    fn hostile_lengths_are_skipped_and_resync() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&0u32.to_be_bytes()); // empty
        let over = (MAX_FRAME + 1) as u32;
        wire.extend_from_slice(&over.to_be_bytes());
        wire.extend(std::iter::repeat_n(0xAA, over as usize));
        encode(b"hello frame", &mut wire).unwrap();
        let (ok, bad) = decode_all(&wire, 4096);
        assert_eq!(bad, vec![FrameError::Empty, FrameError::Oversize(over)]);
        assert_eq!(ok, vec![b"hello frame".to_vec()]);
    }

    #[test]
    fn huge_prefix_does_not_allocate() {
        let mut d = FrameDecoder::new();
        let mut errs = 0;
        d.push(&u32::MAX.to_be_bytes(), |r| {
            assert_eq!(r, Err(FrameError::Oversize(u32::MAX)));
            errs += 1;
        });
        d.push(&[0u8; 1 << 16], |_| panic!("nothing is complete yet"));
        assert_eq!(errs, 1);
        assert_eq!(d.body.capacity(), 0);
        assert!(matches!(d.state, State::Skip { .. }));
    }

    #[test]
    fn max_frame_accepted_and_encode_bounds() {
        let big = vec![7u8; MAX_FRAME];
        let mut wire = Vec::new();
        encode(&big, &mut wire).unwrap();
        let (ok, bad) = decode_all(&wire, 9000);
        assert_eq!(ok.len(), 1);
        assert!(bad.is_empty());
        assert_eq!(encode(&[], &mut wire), Err(FrameError::Empty));
        assert!(encode(&vec![0; MAX_FRAME + 1], &mut wire).is_err());
    }
}
