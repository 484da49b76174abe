//! One layer as a tar stream: the stored blob (gzip, zstd or plain tar,
//! recognised by its magic bytes rather than trusted media types), checked
//! twice — the blob against its digest, the tar against the config's diff_id.

use crate::digest::{Digest, VerifyingReader};
use crate::error::{ImportError, Result};
use flate2::read::MultiGzDecoder;
use std::io::{self, BufRead, BufReader, Read};

/// A layer's tar bytes; `finish` reads both streams to their ends so every
/// byte is hashed, and fails if a digest does not match.
pub trait LayerStream: Read + Send {
    fn finish(self: Box<Self>) -> Result<()>;
}

type Blob = BufReader<Box<dyn Read + Send>>;

#[allow(clippy::large_enum_variant)] // one per layer, never moved in a hot loop
enum Decoder {
    Gzip(MultiGzDecoder<Blob>),
    Zstd(zstd::Decoder<'static, Blob>),
    Plain(Blob),
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(d) => d.read(buf),
        }
    }
}

impl Decoder {
    fn into_blob(self) -> Blob {
        match self {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Plain(d) => d,
        }
    }
}

/// A blob decoded into its tar stream and checked against `diff_id`.
pub struct DecodedLayer {
    tar: VerifyingReader<Decoder>,
    what: String,
}

impl DecodedLayer {
    /// `blob` must already verify its own digest when read to the end (or be
    /// trusted: a registry download is verified as it is written).
    pub fn open(blob: Box<dyn Read + Send>, diff_id: Option<Digest>, what: &str) -> Result<DecodedLayer> {
        let mut blob = BufReader::with_capacity(1 << 20, blob);
        let head = blob.fill_buf().map_err(|e| ImportError::io(format!("reading {what}"), e))?;
        let decoder = if head.starts_with(&[0x1f, 0x8b]) {
            Decoder::Gzip(MultiGzDecoder::new(blob))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Decoder::Zstd(zstd::Decoder::with_buffer(blob).map_err(|e| ImportError::io(format!("opening {what} (zstd)"), e))?)
        } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
            return Err(ImportError::Unsupported(format!(
                "{what} is bzip2/xz-compressed; OCI layers are tar, gzip or zstd — re-push it with a current tool"
            )));
        } else {
            Decoder::Plain(blob)
        };
        Ok(DecodedLayer { tar: VerifyingReader::new(decoder, diff_id, format!("{what} (uncompressed, diff_id)")), what: what.into() })
    }

    pub fn uncompressed_bytes(&self) -> u64 {
        self.tar.bytes_read()
    }
}

impl Read for DecodedLayer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read(buf)
    }
}

impl LayerStream for DecodedLayer {
    fn finish(mut self: Box<Self>) -> Result<()> {
        let what = self.what.clone();
        self.tar.drain().map_err(|e| ImportError::io(format!("reading {what}"), e))?;
        let mut blob = self.tar.into_inner().into_blob();
        io::copy(&mut blob, &mut io::sink()).map_err(|e| ImportError::io(format!("reading {what}"), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn compressed(kind: &str, data: &[u8]) -> Vec<u8> {
        match kind {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "zstd" => zstd::encode_all(data, 3).unwrap(),
            _ => data.to_vec(),
        }
    }

    #[test]
    fn decodes_each_format_and_checks_diff_id() {
        let data = vec![7u8; 100_000];
        for kind in ["gzip", "zstd", "plain"] {
            let blob = compressed(kind, &data);
            let mut layer = DecodedLayer::open(Box::new(std::io::Cursor::new(blob.clone())), Some(Digest::of(&data)), "layer").unwrap();
            let mut out = Vec::new();
            layer.read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{kind}");
            Box::new(layer).finish().unwrap();

            let mut wrong = DecodedLayer::open(Box::new(std::io::Cursor::new(blob)), Some(Digest::of(b"other")), "layer").unwrap();
            let mut first = [0u8; 10];
            wrong.read_exact(&mut first).unwrap();
            assert!(matches!(Box::new(wrong).finish(), Err(ImportError::DigestMismatch { .. })), "{kind}");
        }
    }

    #[test]
    fn refuses_xz() {
        let blob = vec![0xfd, b'7', b'z', b'X', b'Z', 0];
        assert!(matches!(DecodedLayer::open(Box::new(std::io::Cursor::new(blob)), None, "l"), Err(ImportError::Unsupported(_))));
    }
}
