//! A minimal QMP client on the helper's private monitor socket (a socketpair
//! end handed to QEMU: nothing else, least of all the guest, can reach it).
//! Blocking on purpose: it runs on checkpoint and restore threads only.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// One QMP line is far below this; a longer one means QEMU went wrong.
const MAX_LINE: usize = 1 << 20;
/// No single command should take longer (migration is polled, not awaited).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(stream: UnixStream) -> Result<Self, String> {
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(|e| format!("QMP socket: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let mut q = Self { reader: BufReader::new(stream), writer };
        let greeting = q.read_line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QEMU's monitor greeted with {greeting}"));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read_line(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = (&mut self.reader).take(MAX_LINE as u64).read_line(&mut line).map_err(|e| format!("QMP read: {e}"))?;
        if n == 0 {
            return Err("QEMU closed its monitor (the VMM exited)".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP sent something that is not JSON ({e})"))
    }

    /// Runs one command; events that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut msg = serde_json::to_vec(&json!({ "execute": command, "arguments": arguments })).map_err(|e| e.to_string())?;
        msg.push(b'\n');
        self.writer.write_all(&msg).map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let v = self.read_line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                return Err(format!("QEMU refused {command}: {desc}"));
            }
            // An asynchronous event (STOP, RESUME, MIGRATION, ...).
        }
    }

    /// Polls `query-migrate` until the migration in either direction ended.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execute("query-migrate", json!({}))?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let why = r.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                    return Err(format!("QEMU's migration failed: {why}"));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!("QEMU's migration did not finish within {} s", timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls `query-status` until the VM runs.
    pub fn wait_running(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execute("query-status", json!({}))?;
            if r.get("running").and_then(Value::as_bool) == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the restored VM did not start within {} s (QEMU status {r})", timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A path QEMU's `exec:` migration may name: its shell sees it single-quoted.
pub fn shell_path(p: &std::path::Path) -> Result<String, String> {
    let s = p.to_str().ok_or_else(|| format!("snapshot path {} is not UTF-8", p.display()))?;
    if s.contains('\'') || s.chars().any(char::is_control) {
        return Err(format!("snapshot path {s:?} has a quote or control character"));
    }
    Ok(format!("'{s}'"))
}

/// The monitor, connected on first use. A VM's launch must not wait for the
/// greeting: QEMU opens its disks first, and a `cow` disk's NBD handshake is
/// answered through Node, which the helper only relays once launch returns.
pub enum LazyQmp {
    Pending(UnixStream),
    Ready(Qmp),
    Failed(String),
}

impl LazyQmp {
    /// The connected monitor; the first call reads the greeting.
    pub fn get(&mut self) -> Result<&mut Qmp, String> {
        if let LazyQmp::Pending(_) = self {
            let LazyQmp::Pending(stream) = std::mem::replace(self, LazyQmp::Failed(String::new())) else { unreachable!() };
            *self = match Qmp::connect(stream) {
                Ok(q) => LazyQmp::Ready(q),
                Err(e) => LazyQmp::Failed(e),
            };
        }
        match self {
            LazyQmp::Ready(q) => Ok(q),
            LazyQmp::Failed(e) => Err(format!("QEMU's monitor is unusable: {e}")),
            LazyQmp::Pending(_) => unreachable!("connected above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_or_refused() {
        assert_eq!(shell_path(std::path::Path::new("/a b/state")).unwrap(), "'/a b/state'");
        assert!(shell_path(std::path::Path::new("/a'b")).is_err());
        assert!(shell_path(std::path::Path::new("/a\nb")).is_err());
    }

    #[test]
    fn talks_qmp_and_skips_events() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            let mut r = BufReader::new(theirs);
            w.write_all(b"{\"QMP\":{\"version\":{}}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\":{}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-migrate"));
            w.write_all(b"{\"event\":\"MIGRATION\"}\n{\"return\":{\"status\":\"failed\",\"error-desc\":\"disk full\"}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"nope\"}}\n").unwrap();
        });
        let mut q = Qmp::connect(ours).unwrap();
        let e = q.wait_migration(Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("disk full"), "{e}");
        let e = q.execute("stop", json!({})).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        fake.join().unwrap();
    }
}
