//! How many answers naming no stream a connection still expects: one for
//! each version-3 SYN of its own that such an answer counted as refused
//! (see `demux::hand_untied_answer`). Several streams waiting at once are
//! all handed the first answer and ask again as version 2; the answers to
//! their other SYNs come afterwards, when nobody waits any more, and the
//! streams those older listeners set up for them must still be ended. An
//! answer nobody expects (a stranger's) ends nothing. An expectation
//! lapses after [`EXPECTED_FOR`]: a SYN whose own version-3 answer came
//! after all gets no second one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long an answer to a SYN is expected after the first answer came.
pub(super) const EXPECTED_FOR: Duration = Duration::from_secs(60);

/// The answers expected, each by when.
#[derive(Debug, Default)]
pub(super) struct ExpectedAnswers {
    due: VecDeque<Instant>,
}

impl ExpectedAnswers {
    /// An answer naming no stream came at `now` and was handed to
    /// `waiting` streams, each with a SYN out: expects one answer for
    /// each, and takes one for this one. `false` when this one was not
    /// expected.
    pub(super) fn answer_came(&mut self, waiting: usize, now: Instant) -> bool {
        while self.due.front().is_some_and(|due| *due <= now) {
            self.due.pop_front();
        }
        self.due
            .extend(std::iter::repeat_n(now + EXPECTED_FOR, waiting));
        self.due.pop_front().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_waiting_syn_expects_one_answer() {
        let start = Instant::now();
        let mut expected = ExpectedAnswers::default();
        // A stranger's answer, nobody waiting.
        assert!(!expected.answer_came(0, start));
        // Two SYNs waiting: the first answer and one more are expected.
        assert!(expected.answer_came(2, start));
        assert!(expected.answer_came(0, start + Duration::from_secs(1)));
        assert!(!expected.answer_came(0, start + Duration::from_secs(1)));
    }

    #[test]
    fn an_expectation_lapses() {
        let start = Instant::now();
        let mut expected = ExpectedAnswers::default();
        assert!(expected.answer_came(2, start));
        assert!(!expected.answer_came(0, start + EXPECTED_FOR));
    }
}
