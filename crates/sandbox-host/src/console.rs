//! Keeps the last bytes the VMM and guest console printed, for error reports.

use std::sync::{Arc, Mutex};

const KEEP: usize = 16 * 1024;

#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<Vec<u8>>>);

impl ConsoleTail {
    pub fn push(&self, bytes: &[u8]) {
        let Ok(mut buf) = self.0.lock() else { return };
        buf.extend_from_slice(bytes);
        if buf.len() > KEEP {
            let cut = buf.len() - KEEP;
            buf.drain(..cut);
        }
    }

    pub fn text(&self) -> String {
        self.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_only_the_tail() {
        let t = super::ConsoleTail::default();
        t.push(&vec![b'a'; 20_000]);
        t.push(b"panic");
        let s = t.text();
        assert_eq!(s.len(), super::KEEP);
        assert!(s.ends_with("apanic"));
    }
}
