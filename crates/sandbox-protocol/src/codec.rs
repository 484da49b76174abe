//! Typed payloads: each message type is bound to its frame kind, so a frame
//! can only be built with the payload its kind declares.

use crate::frame::{encode_header, HEADER_LEN, MAX_PAYLOAD};
use crate::kind::{Kind, Payload};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A JSON message and the kind of frame that carries it.
pub trait Message: Serialize + DeserializeOwned {
    const KIND: Kind;
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{kind:?} payload is not a valid message: {reason}")]
    Invalid { kind: Kind, reason: String },
    #[error("{kind:?} payload of {len} bytes is shorter than its 4-byte header length")]
    NoHeaderLength { kind: Kind, len: usize },
    #[error("{kind:?} header length {header} exceeds the {len}-byte payload")]
    HeaderTooLong { kind: Kind, header: usize, len: usize },
    #[error("{kind:?} must have an empty payload, got {len} bytes")]
    NotEmpty { kind: Kind, len: usize },
}

/// Decodes a JSON payload into its message type.
pub fn decode<M: Message>(payload: &[u8]) -> Result<M, DecodeError> {
    debug_assert_eq!(M::KIND.info().payload, Payload::Json);
    serde_json::from_slice(payload).map_err(|e| DecodeError::Invalid { kind: M::KIND, reason: e.to_string() })
}

/// Decodes a framed payload: its message header and the bytes after it.
pub fn decode_framed<M: Message>(payload: &[u8]) -> Result<(M, &[u8]), DecodeError> {
    debug_assert_eq!(M::KIND.info().payload, Payload::Framed);
    let kind = M::KIND;
    let Some((len, rest)) = payload.split_first_chunk::<4>() else {
        return Err(DecodeError::NoHeaderLength { kind, len: payload.len() });
    };
    let header = u32::from_be_bytes(*len) as usize;
    if header > rest.len() {
        return Err(DecodeError::HeaderTooLong { kind, header, len: payload.len() });
    }
    let (json, bytes) = rest.split_at(header);
    let msg = serde_json::from_slice(json).map_err(|e| DecodeError::Invalid { kind, reason: e.to_string() })?;
    Ok((msg, bytes))
}

/// Checks that a payload declared empty is.
pub fn expect_empty(kind: Kind, payload: &[u8]) -> Result<(), DecodeError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::NotEmpty { kind, len: payload.len() })
    }
}

fn json<M: Serialize>(msg: &M) -> Vec<u8> {
    // The message types are plain structs and enums with string keys:
    // serialising them cannot fail.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Appends a frame carrying `msg` as JSON.
pub fn encode_into<M: Message>(out: &mut Vec<u8>, channel: u32, msg: &M) {
    debug_assert_eq!(M::KIND.info().payload, Payload::Json);
    let body = json(msg);
    debug_assert!(body.len() <= MAX_PAYLOAD, "{:?} payload too large", M::KIND);
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&encode_header(M::KIND, channel, body.len()));
    out.extend_from_slice(&body);
}

/// One frame carrying `msg` as JSON.
pub fn encode<M: Message>(channel: u32, msg: &M) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, channel, msg);
    out
}

/// One frame carrying `header` and `bytes` as a framed payload.
pub fn encode_framed<M: Message>(channel: u32, header: &M, bytes: &[&[u8]]) -> Vec<u8> {
    debug_assert_eq!(M::KIND.info().payload, Payload::Framed);
    let head = json(header);
    let total: usize = bytes.iter().map(|b| b.len()).sum();
    let payload_len = 4 + head.len() + total;
    debug_assert!(payload_len <= MAX_PAYLOAD, "{:?} payload too large", M::KIND);
    let mut out = Vec::with_capacity(HEADER_LEN + payload_len);
    out.extend_from_slice(&encode_header(M::KIND, channel, payload_len));
    // The header is a few hundred bytes at most; u32 cannot truncate it.
    out.extend_from_slice(&u32::try_from(head.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&head);
    for b in bytes {
        out.extend_from_slice(b);
    }
    out
}

/// A frame with no payload (`Shutdown`, `StdinEof`) or raw bytes (process I/O).
pub fn encode_raw(kind: Kind, channel: u32, bytes: &[u8]) -> Vec<u8> {
    debug_assert!(matches!(kind.info().payload, Payload::Raw | Payload::Empty));
    let mut out = Vec::with_capacity(HEADER_LEN + bytes.len());
    out.extend_from_slice(&encode_header(kind, channel, bytes.len()));
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::message::*;

    #[test]
    fn framed_payloads_round_trip_and_reject_truncation() {
        let req = BlockRequest::Write { blocks: vec![crate::JsU64::new(3).unwrap()] };
        let frame = encode_framed(7, &req, &[&[1, 2, 3]]);
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        let f = dec.next_frame().unwrap().unwrap();
        assert_eq!((f.kind, f.channel), (Kind::BlockRequest, 7));
        let (back, bytes): (BlockRequest, &[u8]) = decode_framed(&f.payload).unwrap();
        assert_eq!(back, req);
        assert_eq!(bytes, &[1, 2, 3]);
        assert!(matches!(decode_framed::<BlockRequest>(&f.payload[..2]), Err(DecodeError::NoHeaderLength { .. })));
        assert!(matches!(decode_framed::<BlockRequest>(&[0, 0, 1, 0, b'{']), Err(DecodeError::HeaderTooLong { .. })));
    }

    #[test]
    fn json_payloads_are_strict() {
        let ok: Exit = decode(br#"{"exitCode":3,"signal":null,"timedOut":false}"#).unwrap();
        assert_eq!(ok.exit_code.get(), 3);
        for bad in [
            &br#"null"#[..],
            br#"{"exitCode":3,"signal":null}"#,
            br#"{"exitCode":-1,"signal":null,"timedOut":false}"#,
            br#"{"exitCode":3,"signal":99,"timedOut":false}"#,
            br#"{"exitCode":3,"signal":null,"timedOut":false,"extra":1}"#,
            br#"{"exitCode":"3","signal":null,"timedOut":false}"#,
            b"\xff\xfe",
        ] {
            assert!(decode::<Exit>(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(decode::<HelperError>(br#"{"cause":"no-such-cause","message":"x"}"#).is_err());
    }
}
