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
    GuestProtocol(String),
    #[error("cannot start the VMM ({backend}): {message}")]
    Launch { backend: &'static str, message: String },
    #[error("invalid launch request: {0}")]
    InvalidLaunch(String),
    #[error("setting up the helper failed: {0}")]
    Setup(String),
}
