use crate::Kind;

/// Bytes before the payload: length (4) + kind (1) + channel (4).
pub const HEADER_LEN: usize = 9;
/// Largest payload accepted from a peer. Bigger frames end the connection:
/// the guest is untrusted and must not make the host allocate without bound.
/// 1 MiB of data plus 64 KiB for a header, so a mount's 1 MiB READ or WRITE
/// (`sandbox_fs::MAX_WRITE`) crosses to Node in one frame.
pub const MAX_PAYLOAD: usize = (1 << 20) + (64 << 10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub channel: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0} is shorter than the 5-byte kind+channel header")]
    TooShort(u32),
    #[error("frame payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
}

impl Frame {
    pub fn new(kind: Kind, channel: u32, payload: Vec<u8>) -> Self {
        Self { kind, channel, payload }
    }

    /// Serialises the frame; panics never: oversize payloads are split by callers.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        encode_into(&mut out, self.kind, self.channel, &self.payload);
        out
    }
}

/// The header of a frame whose payload is `payload_len` bytes, for writers
/// that place the payload after it themselves (no copy of the payload).
pub fn encode_header(kind: Kind, channel: u32, payload_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    // Payloads are at most MAX_PAYLOAD (1 MiB + 64 KiB), far below u32::MAX.
    let len = u32::try_from(payload_len + 5).unwrap_or(u32::MAX);
    h[..4].copy_from_slice(&len.to_be_bytes());
    h[4] = kind as u8;
    h[5..].copy_from_slice(&channel.to_be_bytes());
    h
}

/// Appends one encoded frame to `out`.
pub fn encode_into(out: &mut Vec<u8>, kind: Kind, channel: u32, payload: &[u8]) {
    out.extend_from_slice(&encode_header(kind, channel, payload.len()));
    out.extend_from_slice(payload);
}

/// Sans-IO incremental decoder: push bytes in, pop whole frames out.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame's raw bytes (header included) without
    /// interpreting the kind; used by relays that forward frames verbatim.
    pub fn next_raw(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        if len < 5 {
            return Err(FrameError::TooShort(len));
        }
        let payload_len = len as usize - 5;
        if payload_len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(payload_len));
        }
        let total = 4 + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let kind = avail[4];
        let raw = avail[..total].to_vec();
        self.advance(total);
        Ok(Some((kind, raw)))
    }

    /// Returns the next complete, typed frame.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            // Still validate the length early so a hostile peer cannot make us wait
            // for a gigantic frame.
            if avail.len() >= 4 {
                let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
                if len < 5 {
                    return Err(FrameError::TooShort(len));
                }
            }
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        if len < 5 {
            return Err(FrameError::TooShort(len));
        }
        let payload_len = len as usize - 5;
        if payload_len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(payload_len));
        }
        let kind = Kind::try_from(avail[4]).map_err(FrameError::UnknownKind)?;
        let total = 4 + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let channel = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]);
        let payload = avail[HEADER_LEN..total].to_vec();
        self.advance(total);
        Ok(Some(Frame { kind, channel, payload }))
    }

    fn advance(&mut self, n: usize) {
        self.start += n;
        // Compact once the consumed prefix dominates, keeping pushes amortised O(1).
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether bytes of an incomplete frame are waiting for the rest.
    pub fn has_partial(&self) -> bool {
        self.buffered() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_split_frames() {
        let a = Frame::new(Kind::Stdout, 7, b"hello".to_vec());
        let b = Frame::new(Kind::Exit, 7, b"{}".to_vec());
        let mut bytes = a.encode();
        bytes.extend(b.encode());
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in bytes {
            dec.push(&[byte]);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn rejects_hostile_lengths() {
        let mut dec = FrameDecoder::new();
        dec.push(&2u32.to_be_bytes());
        assert_eq!(dec.next_frame(), Err(FrameError::TooShort(2)));
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        dec.push(&[Kind::Stdout as u8, 0, 0, 0, 0]);
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn rejects_unknown_kind() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 5, 0x7f, 0, 0, 0, 1]);
        assert_eq!(dec.next_frame(), Err(FrameError::UnknownKind(0x7f)));
    }

    #[test]
    fn raw_relay_keeps_bytes() {
        let f = Frame::new(Kind::Stdin, 3, vec![1, 2, 3]).encode();
        let mut dec = FrameDecoder::new();
        dec.push(&f);
        let (kind, raw) = dec.next_raw().unwrap().unwrap();
        assert_eq!(kind, Kind::Stdin as u8);
        assert_eq!(raw, f);
    }
}
