//! Capped exponential backoff between reconnection attempts.

use std::time::Duration;

/// Delays that double from `initial` up to `cap`, back to `initial` after
/// a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// The bridge's backoff between attempts to reach the broker again:
    /// 250 ms, doubling up to 15 s.
    pub fn reconnecting() -> Backoff {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(15))
    }

    /// A backoff starting at `initial` and never above `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap,
            next: initial.min(cap),
        }
    }

    /// The delay before the next attempt; each call doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        delay
    }

    /// Starts over from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(100));
    }
}
