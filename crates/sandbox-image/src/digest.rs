//! sha256 digests: parsing `sha256:<hex>`, hashing bytes, and a reader that
//! checks the digest of everything read through it when it reaches the end.

use crate::error::{DigestMismatchIo, ImportError, Result};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(ImportError::Unsupported(format!(
                "digest {s:?} is not a sha256 digest (only sha256:<64 hex digits> is supported)"
            )));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ImportError::InvalidSource(format!("malformed digest {s:?}: expected sha256:<64 lowercase hex digits>")));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// Fails with a typed mismatch unless `bytes` hash to this digest.
    pub fn verify(&self, what: &str, bytes: &[u8]) -> Result<()> {
        let actual = Digest::of(bytes);
        if &actual != self {
            return Err(ImportError::DigestMismatch { what: what.to_string(), expected: self.0.clone(), actual: actual.0 });
        }
        Ok(())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hashes what passes through; at end of input, compares with the expected
/// digest (if any) and turns a mismatch into an error instead of EOF, so no
/// consumer can mistake corrupt bytes for a complete stream.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Option<Digest>,
    what: String,
    bytes: u64,
    done: Option<Digest>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Option<Digest>, what: impl Into<String>) -> Self {
        VerifyingReader { inner, hasher: Sha256::new(), expected, what: what.into(), bytes: 0, done: None }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Reads whatever is left (tar archives end before their trailing
    /// padding) and returns the digest of the whole stream, verified.
    pub fn drain(&mut self) -> io::Result<Digest> {
        io::copy(self, &mut io::sink())?;
        Ok(self.done.clone().expect("EOF reached"))
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done.is_some() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            let actual = Digest(format!("sha256:{}", hex::encode(self.hasher.finalize_reset())));
            if let Some(expected) = &self.expected {
                if expected != &actual {
                    return Err(io::Error::other(DigestMismatchIo {
                        what: self.what.clone(),
                        expected: expected.0.clone(),
                        actual: actual.0,
                    }));
                }
            }
            self.done = Some(actual);
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256() {
        assert!(Digest::parse("sha256:0000000000000000000000000000000000000000000000000000000000000000").is_ok());
        assert!(matches!(Digest::parse("sha512:00"), Err(ImportError::Unsupported(_))));
        assert!(matches!(Digest::parse("sha256:ABC"), Err(ImportError::InvalidSource(_))));
        assert!(Digest::parse("latest").is_err());
    }

    #[test]
    fn reader_refuses_wrong_bytes_at_eof() {
        let good = Digest::of(b"hello");
        let mut r = VerifyingReader::new(&b"hello"[..], Some(good.clone()), "blob");
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello");

        let mut r = VerifyingReader::new(&b"hellO"[..], Some(good), "blob");
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        match ImportError::io("x", err) {
            ImportError::DigestMismatch { what, expected, actual } => {
                assert_eq!(what, "blob");
                assert_ne!(expected, actual);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
