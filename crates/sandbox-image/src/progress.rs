//! Progress and result events, one JSON object per line on stdout.
//! Byte counters are throttled so a fast local copy does not flood Node.

use serde_json::{json, Value};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_millis(100);

pub struct Reporter {
    out: Mutex<Box<dyn Write + Send>>,
    last: Mutex<Vec<(String, Instant)>>,
}

impl Reporter {
    pub fn new(out: Box<dyn Write + Send>) -> Reporter {
        Reporter { out: Mutex::new(out), last: Mutex::new(Vec::new()) }
    }

    /// A reporter that discards everything (tests).
    pub fn silent() -> Reporter {
        Reporter::new(Box::new(std::io::sink()))
    }

    pub fn emit(&self, event: &str, mut fields: Value) {
        fields["event"] = json!(event);
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Node reads these lines; if it went away there is nobody to tell.
        let _ = writeln!(out, "{fields}");
        let _ = out.flush();
    }

    /// Like `emit`, at most every 100 ms per `key` unless `force`.
    pub fn throttled(&self, key: &str, event: &str, fields: Value, force: bool) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            match last.iter_mut().find(|(k, _)| k == key) {
                Some((_, at)) if !force && now.duration_since(*at) < EVERY => return,
                Some((_, at)) => *at = now,
                None => last.push((key.to_string(), now)),
            }
        }
        self.emit(event, fields);
    }

    pub fn stage(&self, stage: &str) {
        self.emit("stage", json!({ "stage": stage }));
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.emit("warning", json!({ "message": message.into() }));
    }
}
