//! A token bucket: at most `burst` events at once, refilled at `per_sec`.

use std::time::Instant;

pub struct TokenBucket {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            per_sec,
            burst,
            last: None,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            self.tokens = (self.tokens
                + now.saturating_duration_since(last).as_secs_f64() * self.per_sec)
                .min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
