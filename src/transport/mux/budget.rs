//! How often a connection may answer messages nobody on it asked for (a
//! frame for a stream it does not hold, an older listener's answer that
//! names no stream): whoever can publish to its queue sends those, so each
//! answer is taken from a budget that refills at a fixed rate. Past it the
//! message goes unanswered, and a flood of them makes the connection
//! publish no flood of its own.

use std::time::Instant;

/// How many stray frames from strangers a connection answers a second,
/// at most; as many at once after a quiet second.
pub(super) const ANSWERS_PER_SECOND: u32 = 100;

/// How many frames for streams it held recently (see `gone`) a
/// connection answers a second, at most: a budget apart from strangers'.
pub(super) const FORMER_PEER_ANSWERS_PER_SECOND: u32 = 1000;

/// What a connection's demultiplexer answers from: frames and answers
/// from strangers, and frames from the peers of streams it held recently
/// (see `gone`), each with a budget of its own.
pub(super) struct AnswerBudgets {
    pub(super) strangers: Budget,
    pub(super) former_peers: Budget,
}

/// A token bucket: `per_second` answers a second, and as many at once
/// after a quiet second.
pub(super) struct Budget {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// A full budget of `per_second` answers a second.
    pub(super) fn new(per_second: u32, now: Instant) -> Budget {
        Budget {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            last: now,
        }
    }

    /// Takes one answer from the budget at `now`; `false` when it is spent.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut budget = Budget::new(100, start);
        assert_eq!((0..1000).filter(|_| budget.take(start)).count(), 100);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..1000).filter(|_| budget.take(later)).count(), 50);
        // A long quiet time refills it to one second's worth, no more.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| budget.take(much_later)).count(), 100);
        // A clock read out of order takes nothing back.
        assert!(!budget.take(start));
    }
}
