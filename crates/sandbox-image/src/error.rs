//! Every way an import can fail, each with a stable `kind` the Node side
//! maps to a typed error, and a message that says what to do about it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImportError {
    /// The registry refused the credentials, or wants some and none were given.
    #[error("{0}")]
    Auth(String),
    /// The reference, tag, manifest or blob does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Bytes did not hash to the digest that names them.
    #[error("{what} has digest {actual}, but {expected} was expected; the source is corrupt or was tampered with")]
    DigestMismatch { what: String, expected: String, actual: String },
    /// A multi-platform index without a manifest for this host.
    #[error("{0}")]
    Platform(String),
    /// Valid input we do not handle (media type, schema, layer content).
    #[error("{0}")]
    Unsupported(String),
    /// A layout, archive or JSON document that is not what it claims to be.
    #[error("{0}")]
    InvalidSource(String),
    /// Connection-level failures talking to a registry.
    #[error("{0}")]
    Network(String),
    /// mke2fs, debugfs or qemu-img failed.
    #[error("{0}")]
    Tool(String),
    /// mke2fs stopped reading our stream; its own error says why.
    #[error("mke2fs stopped reading the filesystem stream")]
    OutputClosed,
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The request from Node was malformed (a bug on our side, not the user's).
    #[error("bad import request: {0}")]
    Request(String),
}

impl ImportError {
    /// Stable name of the failure class (mirrored in src/images/errors.ts).
    pub fn kind(&self) -> &'static str {
        match self {
            ImportError::Auth(_) => "auth",
            ImportError::NotFound(_) => "not-found",
            ImportError::DigestMismatch { .. } => "digest-mismatch",
            ImportError::Platform(_) => "platform",
            ImportError::Unsupported(_) => "unsupported",
            ImportError::InvalidSource(_) => "invalid-source",
            ImportError::Network(_) => "network",
            ImportError::Tool(_) | ImportError::OutputClosed => "tool",
            ImportError::Io { .. } => "io",
            ImportError::Request(_) => "request",
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        // A digest mismatch found inside a reader travels as an io::Error; unwrap it.
        if source.get_ref().is_some_and(|e| e.is::<DigestMismatchIo>()) {
            let inner = source.into_inner().expect("checked above");
            let m = inner.downcast::<DigestMismatchIo>().expect("checked above");
            return ImportError::DigestMismatch { what: m.what, expected: m.expected, actual: m.actual };
        }
        ImportError::Io { context: context.into(), source }
    }
}

/// A digest mismatch raised from inside a `Read` (see `digest::VerifyingReader`).
#[derive(Debug, Error)]
#[error("{what}: digest {actual}, expected {expected}")]
pub struct DigestMismatchIo {
    pub what: String,
    pub expected: String,
    pub actual: String,
}

pub type Result<T> = std::result::Result<T, ImportError>;
