use crate::guest::Violation;
use sandbox_protocol::{self as proto, FailureCause, Text};
use std::io;

/// Everything that can end a helper, with a message meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the Node process closed the control socket")]
    ParentGone,
    #[error("control socket I/O with Node failed: {0}")]
    NodeIo(io::Error),
    #[error("protocol error from Node: {0}")]
    Protocol(String),
    #[error("the guest broke the control protocol: {0}")]
    GuestProtocol(Violation),
    #[error("cannot start the VMM ({backend}): {message}")]
    Launch { backend: &'static str, message: String },
    #[error("invalid launch request: {0}")]
    InvalidLaunch(String),
    #[error("setting up the helper failed: {0}")]
    Setup(String),
    /// The relay already sent Node the `HelperError` describing the failure.
    #[error("the failure was reported to Node")]
    Reported,
}

impl HostError {
    /// The `HelperError` frame body Node turns into a typed error.
    pub fn to_wire(&self) -> proto::HelperError {
        let cause = match self {
            HostError::ParentGone | HostError::NodeIo(_) => FailureCause::NodeIo,
            HostError::Protocol(_) => FailureCause::NodeProtocol,
            HostError::GuestProtocol(_) => FailureCause::GuestProtocol,
            HostError::Launch { .. } => FailureCause::Launch,
            HostError::InvalidLaunch(_) => FailureCause::InvalidLaunch,
            HostError::Setup(_) | HostError::Reported => FailureCause::Setup,
        };
        let (frame_kind, channel) = match self {
            HostError::GuestProtocol(v) => (v.kind, v.kind.map(|_| v.channel)),
            _ => (None, None),
        };
        proto::HelperError { cause, message: Text::truncated(self.to_string()), frame_kind, channel }
    }
}
