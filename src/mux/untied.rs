//! Which older listeners' answers a connection ends: an answer naming no
//! stream (see `handshake::untied_answer`) says that a listener which
//! knows nothing of version 3 set up a stream for one of our version-3
//! SYNs, and nobody will ever use that stream. Nothing in the answer says
//! which SYN it answers, and anyone who can publish to the connection's
//! queue can send one naming a queue of their choice. So an answer is
//! ended only when one of our own streams vouches for it:
//!
//! * a waiting stream that takes the answer as its refusal
//!   ([`UntiedAnswers::believed`]) ends the answer it took, if no other
//!   stream already did; if one did (several streams waiting at once are
//!   all handed the same first answer), it expects one more answer, to its
//!   own SYN, and ends the first one to come after the answer it took;
//! * a stream that doubts the answer (its listener is known to take
//!   version 3) vouches for nothing, and neither does a stream whose own
//!   version-3 answer comes after all ([`UntiedAnswers::own_answer_came`]
//!   takes its expectation back).
//!
//! Answers nobody vouches for are remembered for [`EXPECTED_FOR`] (at
//! most [`REMEMBERED`] of them) and then forgotten, ending nothing.

use crate::version::ProtocolVersion;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an answer, or a stream's expectation of one, is remembered.
pub(super) const EXPECTED_FOR: Duration = Duration::from_secs(60);

/// The most answers remembered (a flood of them pushes the oldest out).
const REMEMBERED: usize = 256;

/// The most expectations remembered: one per stream that fell back.
const EXPECTATIONS: usize = 4096;

/// An answer's stream to end: its queue and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ToEnd {
    pub(super) queue: String,
    pub(super) version: ProtocolVersion,
}

#[derive(Debug)]
struct Answer {
    number: u64,
    to_end: ToEnd,
    ended: bool,
    at: Instant,
}

#[derive(Debug)]
struct Expectation {
    stream: Arc<str>,
    due: Instant,
}

/// The answers naming no stream that came recently, and the streams
/// that expect one more.
#[derive(Debug, Default)]
pub(super) struct UntiedAnswers {
    /// The number the next answer gets.
    next: u64,
    recent: VecDeque<Answer>,
    expecting: VecDeque<Expectation>,
}

impl UntiedAnswers {
    /// An answer naming `to_end` came at `now`: whether to end its stream
    /// at once (a stream expects an answer) or to wait for a stream to
    /// vouch for it.
    pub(super) fn arrived(&mut self, to_end: ToEnd, now: Instant) -> bool {
        self.forget_lapsed(now);
        let number = self.next;
        self.next += 1;
        let ended = self.expecting.pop_front().is_some();
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(Answer {
            number,
            to_end,
            ended,
            at: now,
        });
        ended
    }

    /// `stream` took an answer naming `queue` as the refusal of its
    /// version-3 SYN, at `now`: the stream to end, if any is left.
    pub(super) fn believed(
        &mut self,
        stream: &Arc<str>,
        queue: &str,
        now: Instant,
    ) -> Option<ToEnd> {
        self.forget_lapsed(now);
        let taken = self
            .recent
            .iter_mut()
            .rev()
            .find(|answer| answer.to_end.queue == queue);
        let after = match taken {
            Some(answer) if !answer.ended => {
                answer.ended = true;
                return Some(answer.to_end.clone());
            }
            Some(answer) => answer.number,
            // Pushed out by many newer ones (or not recorded yet): only
            // answers from now on.
            None => self.next,
        };
        if let Some(answer) = self
            .recent
            .iter_mut()
            .find(|answer| !answer.ended && answer.number > after)
        {
            answer.ended = true;
            return Some(answer.to_end.clone());
        }
        if self.expecting.len() == EXPECTATIONS {
            self.expecting.pop_front();
        }
        self.expecting.push_back(Expectation {
            stream: Arc::clone(stream),
            due: now + EXPECTED_FOR,
        });
        None
    }

    /// A frame for `stream` came (its own version-3 answer, after it fell
    /// back): it expects no answer naming no stream any more.
    pub(super) fn own_answer_came(&mut self, stream: &str) {
        self.expecting
            .retain(|expectation| &*expectation.stream != stream);
    }

    fn forget_lapsed(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|answer| answer.at + EXPECTED_FOR <= now)
        {
            self.recent.pop_front();
        }
        self.expecting.retain(|expectation| expectation.due > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(queue: &str) -> ToEnd {
        ToEnd {
            queue: queue.to_string(),
            version: ProtocolVersion::V1,
        }
    }

    fn stream(n: u8) -> Arc<str> {
        Arc::from(format!("{n:032x}"))
    }

    #[test]
    fn an_answer_nobody_believes_ends_nothing() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        for n in 0..10 {
            assert!(!untied.arrived(answer(&format!("q{n}")), start));
        }
        // Long after, a stream believes an answer that came then.
        let later = start + EXPECTED_FOR;
        assert_eq!(untied.believed(&stream(1), "q3", later), None);
        assert!(untied.arrived(answer("mine"), later));
    }

    #[test]
    fn each_believer_ends_one_answer() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        assert!(!untied.arrived(answer("first"), start));
        // Three streams were waiting and all took the first answer.
        assert_eq!(
            untied.believed(&stream(1), "first", start),
            Some(answer("first"))
        );
        assert_eq!(untied.believed(&stream(2), "first", start), None);
        assert_eq!(untied.believed(&stream(3), "first", start), None);
        // The answers to streams 2's and 3's SYNs; nothing else expected.
        assert!(untied.arrived(answer("second"), start));
        assert!(untied.arrived(answer("third"), start));
        assert!(!untied.arrived(answer("stranger"), start));
    }

    #[test]
    fn an_answer_that_came_before_a_believer_spoke_is_its_own() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        assert!(!untied.arrived(answer("first"), start));
        assert!(!untied.arrived(answer("second"), start));
        assert_eq!(
            untied.believed(&stream(1), "first", start),
            Some(answer("first"))
        );
        assert_eq!(
            untied.believed(&stream(2), "first", start),
            Some(answer("second"))
        );
        assert!(!untied.arrived(answer("stranger"), start));
    }

    #[test]
    fn an_answer_before_the_one_believed_is_not_taken_for_a_later_one() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        assert!(!untied.arrived(answer("stranger"), start));
        assert!(!untied.arrived(answer("first"), start));
        assert_eq!(
            untied.believed(&stream(1), "first", start),
            Some(answer("first"))
        );
        assert_eq!(untied.believed(&stream(2), "first", start), None);
        assert!(untied.arrived(answer("second"), start));
    }

    #[test]
    fn a_streams_own_answer_takes_its_expectation_back() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        assert!(!untied.arrived(answer("first"), start));
        assert!(untied.believed(&stream(1), "first", start).is_some());
        assert_eq!(untied.believed(&stream(2), "first", start), None);
        untied.own_answer_came(&stream(2));
        assert!(!untied.arrived(answer("stranger"), start));
    }

    #[test]
    fn an_expectation_lapses() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        assert!(!untied.arrived(answer("first"), start));
        assert!(untied.believed(&stream(1), "first", start).is_some());
        assert_eq!(untied.believed(&stream(2), "first", start), None);
        assert!(!untied.arrived(answer("late"), start + EXPECTED_FOR));
    }

    #[test]
    fn a_flood_of_answers_is_remembered_only_in_part() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        for n in 0..10 * REMEMBERED {
            untied.arrived(answer(&format!("q{n}")), start);
        }
        assert_eq!(untied.recent.len(), REMEMBERED);
        // An answer pushed out is not ended; the believer expects one more.
        assert_eq!(untied.believed(&stream(1), "q0", start), None);
        assert!(untied.arrived(answer("mine"), start));
    }
}
