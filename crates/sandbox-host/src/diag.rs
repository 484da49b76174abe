//! The helper's voice: what it used to print on stderr (which nobody reads)
//! goes to Node as `Diagnostic` frames, so the user sees it in
//! `boot({ onEvent })` and in the errors a lane ends with.

use crate::link::NodeTx;
use crate::rate::{Admit, RateLimit};
use sandbox_protocol::{self as proto, Diagnostic, DiagnosticLevel, DiagnosticSource, Text};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Diagnostics per second; past it they are counted and summarised.
const PER_SECOND: u32 = 50;

#[derive(Clone)]
pub struct Diag {
    tx: Option<NodeTx>,
    limit: Arc<Mutex<RateLimit>>,
}

impl Diag {
    pub fn new(tx: NodeTx) -> Self {
        Self { tx: Some(tx), limit: Arc::new(Mutex::new(RateLimit::new(PER_SECOND))) }
    }

    /// A sink that drops everything (unit tests).
    #[cfg(test)]
    pub fn none() -> Self {
        Self { tx: None, limit: Arc::new(Mutex::new(RateLimit::new(PER_SECOND))) }
    }

    pub fn report(&self, level: DiagnosticLevel, source: DiagnosticSource, message: impl Into<String>) {
        let Some(tx) = &self.tx else { return };
        let admit = self.limit.lock().unwrap_or_else(|p| p.into_inner()).admit(Instant::now());
        let send = |message: String| {
            // A full queue drops the record: diagnostics must never stall the data path.
            let _ = tx.try_send(proto::encode(0, &Diagnostic { level, source, message: Text::truncated(message) }));
        };
        match admit {
            Admit::Yes => send(message.into()),
            Admit::YesAfterDropping(n) => {
                send(format!("{n} diagnostics dropped (more than {PER_SECOND} per second)"));
                send(message.into());
            }
            Admit::No => {}
        }
    }

    pub fn warn(&self, source: DiagnosticSource, message: impl Into<String>) {
        self.report(DiagnosticLevel::Warn, source, message);
    }

    pub fn error(&self, source: DiagnosticSource, message: impl Into<String>) {
        self.report(DiagnosticLevel::Error, source, message);
    }
}
