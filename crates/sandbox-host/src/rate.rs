//! A one-second-window rate limit for records sent to Node (audit records,
//! diagnostics), so a guest that provokes them cannot queue frames without
//! bound: past the limit they are counted and summarised.

use std::time::{Duration, Instant};

#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Admitted; `n` records were dropped since the last admitted one.
    YesAfterDropping(u64),
    No,
}

pub struct RateLimit {
    per_second: u32,
    window: Option<Instant>,
    used: u32,
    dropped: u64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        Self { per_second, window: None, used: 0, dropped: 0 }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        if self.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= self.per_second {
            self.dropped += 1;
            return Admit::No;
        }
        self.used += 1;
        match std::mem::take(&mut self.dropped) {
            0 => Admit::Yes,
            n => Admit::YesAfterDropping(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_drops() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(2);
        assert_eq!(l.admit(t0), Admit::Yes);
        assert_eq!(l.admit(t0), Admit::Yes);
        assert_eq!(l.admit(t0), Admit::No);
        assert_eq!(l.admit(t0 + Duration::from_millis(500)), Admit::No);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Admit::YesAfterDropping(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Admit::Yes);
    }
}
