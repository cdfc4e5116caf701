//! Capped exponential backoff between reconnection attempts, and how
//! often they are logged.

use std::time::{Duration, Instant};

/// How many failed attempts in a row are each logged at `warn`.
const EACH_LOGGED: u32 = 5;
/// After those, how often one is (the others go to `debug`).
const LOGGED_EVERY: Duration = Duration::from_secs(60);

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

/// Decides which failed attempts of a retry loop are logged at `warn`:
/// the first few each, then one a minute at most, so a broker that stays
/// away for a day does not fill the journal.
#[derive(Debug, Default)]
pub struct RetryLog {
    failures: u32,
    last_warned: Option<Instant>,
}

impl RetryLog {
    /// A loop that has not failed yet.
    pub fn new() -> RetryLog {
        RetryLog::default()
    }

    /// Counts a failed attempt, and says how to log it: at `warn` when
    /// its turn has come (the later ones saying how many failed so far),
    /// else at `debug`.
    pub fn failed(&mut self) -> (log::Level, String) {
        self.failures = self.failures.saturating_add(1);
        let now = Instant::now();
        let due = self.failures <= EACH_LOGGED
            || self
                .last_warned
                .is_none_or(|last| now.duration_since(last) >= LOGGED_EVERY);
        if !due {
            (log::Level::Debug, String::new())
        } else if self.failures <= EACH_LOGGED {
            self.last_warned = Some(now);
            (log::Level::Warn, String::new())
        } else {
            self.last_warned = Some(now);
            let note = format!(" ({} attempts so far; logged once a minute)", self.failures);
            (log::Level::Warn, note)
        }
    }

    /// Starts over (after a success).
    pub fn reset(&mut self) {
        *self = RetryLog::default();
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

    #[test]
    fn the_first_failures_are_each_warned_then_one_a_minute() {
        let mut log = RetryLog::new();
        for _ in 0..EACH_LOGGED {
            assert_eq!(log.failed().0, log::Level::Warn);
        }
        let before = log.last_warned;
        assert!(before.is_some());
        // The next ones, right after: not due (the last warning is recent).
        assert_eq!(log.failed().0, log::Level::Debug);
        assert_eq!(log.failed().0, log::Level::Debug);
        assert_eq!(log.last_warned, before, "no other warning within a minute");
        log.last_warned = Some(Instant::now() - LOGGED_EVERY);
        let (level, note) = log.failed();
        assert_eq!(level, log::Level::Warn);
        assert!(note.contains("8 attempts"), "{note}");
        assert!(log.last_warned.unwrap() > before.unwrap());
        assert_eq!(log.failures, EACH_LOGGED + 3);
        log.reset();
        assert_eq!(log.failures, 0);
    }
}
