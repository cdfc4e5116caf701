//! Which older listeners' answers a connection ends: an answer naming no
//! stream (see `handshake::untied_answer`) says that a listener which
//! knows nothing of version 3 set up a stream for one of our version-3
//! SYNs, and nobody will ever use that stream. Nothing in the answer says
//! which SYN it answers, and anyone who can publish to the connection's
//! queue can send one naming a queue of their choice. So an answer is
//! ended only when one of our own streams vouches for it, and only if
//! that stream's own version-3 answer has not come [`GRACE`] later:
//!
//! * a waiting stream that takes the answer as its refusal
//!   ([`UntiedAnswers::believed`]) claims the answer it took, if no other
//!   stream already did; if one did (several streams waiting at once are
//!   all handed the same first answer), it claims the first unclaimed
//!   answer that came after the one it took, or, if none came yet,
//!   expects one more, to its own SYN, and claims the next to come;
//! * a stream that doubts the answer (its listener is known to take
//!   version 3) vouches for nothing;
//! * a stream whose own version-3 answer comes after all
//!   ([`UntiedAnswers::own_answer_came`]) was answered by a version-3
//!   listener: whatever it claimed is a stranger's, and is let go, and it
//!   expects nothing more. A claim is therefore ended only once it is
//!   [`GRACE`] old ([`UntiedAnswers::due`]).
//!
//! Answers nobody vouches for are remembered for [`EXPECTED_FOR`] (at
//! most [`REMEMBERED`] of them) and then forgotten, ending nothing.

use crate::version::ProtocolVersion;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an answer, or a stream's expectation of one, is remembered.
pub(super) const EXPECTED_FOR: Duration = Duration::from_secs(60);

/// How long a claimed answer waits before its stream is ended: the time
/// the claiming stream's own version-3 answer has to come (and show that
/// the answer it took was a stranger's) if its listener takes version 3.
pub(super) const GRACE: Duration = Duration::from_secs(3);

/// The most answers remembered (a flood of them pushes the oldest
/// unclaimed ones out).
const REMEMBERED: usize = 256;

/// The most expectations remembered: one per stream that fell back.
const EXPECTATIONS: usize = 4096;

/// An answer's stream to end: its queue and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ToEnd {
    pub(super) queue: String,
    pub(super) version: ProtocolVersion,
}

/// Who vouches for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    Unclaimed,
    /// The stream `by` vouches for it: it is ended at `due`, unless that
    /// stream's own answer comes first.
    Claimed {
        by: Arc<str>,
        due: Instant,
    },
    /// Its stream was ended for the stream `by` vouched for it (until
    /// that stream's own answer comes).
    Ended {
        by: Option<Arc<str>>,
    },
}

#[derive(Debug)]
struct Answer {
    number: u64,
    to_end: ToEnd,
    claim: Claim,
    at: Instant,
}

#[derive(Debug)]
struct Expectation {
    stream: Arc<str>,
    /// The number of the first answer it may claim.
    from: u64,
    lapses: Instant,
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
    /// An answer naming `to_end` came at `now`; returns whether a stream
    /// that expected it claimed it (it is then due within [`GRACE`]).
    pub(super) fn arrived(&mut self, to_end: ToEnd, now: Instant) -> bool {
        self.forget_lapsed(now);
        let number = self.next;
        self.next += 1;
        let claim = match self.expecting.iter().position(|e| e.from <= number) {
            Some(index) => Claim::Claimed {
                by: self.expecting.remove(index).map(|e| e.stream).unwrap(),
                due: now + GRACE,
            },
            None => Claim::Unclaimed,
        };
        let claimed = claim != Claim::Unclaimed;
        if self.recent.len() >= REMEMBERED {
            // A flood pushes out the oldest answers no stream claimed;
            // claims stay (one per stream of ours that fell back, each
            // for a few seconds).
            if let Some(oldest) = self
                .recent
                .iter()
                .position(|answer| !matches!(answer.claim, Claim::Claimed { .. }))
            {
                self.recent.remove(oldest);
            }
        }
        self.recent.push_back(Answer {
            number,
            to_end,
            claim,
            at: now,
        });
        claimed
    }

    /// `stream` took an answer naming `queue` as the refusal of its
    /// version-3 SYN, at `now`: it claims that answer, or the next one
    /// for its own SYN (see the module's notes); returns whether it
    /// claimed one that came already.
    pub(super) fn believed(&mut self, stream: &Arc<str>, queue: &str, now: Instant) -> bool {
        self.forget_lapsed(now);
        let taken = self
            .recent
            .iter_mut()
            .rev()
            .find(|answer| answer.to_end.queue == queue);
        let from = match taken {
            Some(answer) if answer.claim == Claim::Unclaimed => {
                answer.claim = Claim::Claimed {
                    by: Arc::clone(stream),
                    due: now + GRACE,
                };
                return true;
            }
            // Claimed or ended by another stream: the first unclaimed one
            // from it on (it is let go if its claimer's own answer comes).
            Some(answer) => answer.number,
            // Pushed out by many newer ones (or not recorded yet): only
            // answers from now on.
            None => self.next,
        };
        if let Some(answer) = self
            .recent
            .iter_mut()
            .find(|answer| answer.claim == Claim::Unclaimed && answer.number >= from)
        {
            answer.claim = Claim::Claimed {
                by: Arc::clone(stream),
                due: now + GRACE,
            };
            return true;
        }
        if self.expecting.len() == EXPECTATIONS {
            self.expecting.pop_front();
        }
        self.expecting.push_back(Expectation {
            stream: Arc::clone(stream),
            from,
            lapses: now + EXPECTED_FOR,
        });
        false
    }

    /// A frame for `stream` came at `now` (its own version-3 answer,
    /// after it took an answer naming no stream): what it claimed was not
    /// its listener's, and it expects nothing more. What it claimed goes
    /// to the first stream that expects an answer from that one on (one
    /// that took the same answer, say), or stays unclaimed.
    pub(super) fn own_answer_came(&mut self, stream: &str, now: Instant) {
        self.expecting
            .retain(|expectation| &*expectation.stream != stream);
        for answer in &mut self.recent {
            if matches!(&answer.claim, Claim::Ended { by: Some(by) } if &**by == stream) {
                // Ended already, and not for this stream's SYN: for the
                // SYN of a stream that took it too and expects one more,
                // which is therefore due no more.
                answer.claim = Claim::Ended { by: None };
                if let Some(met) = self
                    .expecting
                    .iter()
                    .position(|expectation| expectation.from <= answer.number)
                {
                    self.expecting.remove(met);
                }
                continue;
            }
            if !matches!(&answer.claim, Claim::Claimed { by, .. } if &**by == stream) {
                continue;
            }
            let heir = self
                .expecting
                .iter()
                .position(|expectation| expectation.from <= answer.number);
            answer.claim = match heir.and_then(|heir| self.expecting.remove(heir)) {
                Some(heir) => Claim::Claimed {
                    by: heir.stream,
                    due: now + GRACE,
                },
                None => Claim::Unclaimed,
            };
        }
    }

    /// The claimed answers whose grace is over at `now`: their streams to
    /// end (each once).
    pub(super) fn due(&mut self, now: Instant) -> Vec<ToEnd> {
        let mut ended = Vec::new();
        for answer in &mut self.recent {
            if let Claim::Claimed { by, due } = &answer.claim
                && *due <= now
            {
                answer.claim = Claim::Ended {
                    by: Some(Arc::clone(by)),
                };
                ended.push(answer.to_end.clone());
            }
        }
        ended
    }

    /// When the next claimed answer is due, if any is claimed.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.recent
            .iter()
            .filter_map(|answer| match answer.claim {
                Claim::Claimed { due, .. } => Some(due),
                _ => None,
            })
            .min()
    }

    fn forget_lapsed(&mut self, now: Instant) {
        self.recent.retain(|answer| {
            matches!(answer.claim, Claim::Claimed { .. }) || answer.at + EXPECTED_FOR > now
        });
        self.expecting
            .retain(|expectation| expectation.lapses > now);
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

    /// The queues of the answers due at `now`.
    fn due_at(untied: &mut UntiedAnswers, now: Instant) -> Vec<String> {
        untied.due(now).into_iter().map(|end| end.queue).collect()
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
        assert!(!untied.believed(&stream(1), "q3", later));
        assert!(due_at(&mut untied, later + GRACE).is_empty());
        assert!(untied.arrived(answer("mine"), later));
        assert_eq!(due_at(&mut untied, later + GRACE), ["mine"]);
    }

    #[test]
    fn a_claim_is_ended_once_after_its_grace() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("first"), start);
        assert!(untied.believed(&stream(1), "first", start));
        assert_eq!(untied.next_due(), Some(start + GRACE));
        assert!(due_at(&mut untied, start + GRACE / 2).is_empty());
        assert_eq!(due_at(&mut untied, start + GRACE), ["first"]);
        assert!(due_at(&mut untied, start + 2 * GRACE).is_empty());
        assert_eq!(untied.next_due(), None);
    }

    #[test]
    fn each_believer_ends_one_answer() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("first"), start);
        // Three streams were waiting and all took the first answer.
        assert!(untied.believed(&stream(1), "first", start));
        assert!(!untied.believed(&stream(2), "first", start));
        assert!(!untied.believed(&stream(3), "first", start));
        // The answers to streams 2's and 3's SYNs; nothing else expected.
        assert!(untied.arrived(answer("second"), start));
        assert!(untied.arrived(answer("third"), start));
        assert!(!untied.arrived(answer("stranger"), start));
        assert_eq!(
            due_at(&mut untied, start + GRACE),
            ["first", "second", "third"]
        );
    }

    #[test]
    fn an_answer_that_came_before_a_believer_spoke_is_its_own() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("first"), start);
        untied.arrived(answer("second"), start);
        assert!(untied.believed(&stream(1), "first", start));
        assert!(untied.believed(&stream(2), "first", start));
        assert!(!untied.arrived(answer("stranger"), start));
        assert_eq!(due_at(&mut untied, start + GRACE), ["first", "second"]);
    }

    #[test]
    fn an_answer_before_the_one_believed_is_not_taken_for_a_later_one() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("stranger"), start);
        untied.arrived(answer("first"), start);
        assert!(untied.believed(&stream(1), "first", start));
        assert!(!untied.believed(&stream(2), "first", start));
        assert!(untied.arrived(answer("second"), start));
        assert_eq!(due_at(&mut untied, start + GRACE), ["first", "second"]);
    }

    #[test]
    fn a_streams_own_answer_takes_its_expectation_back() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("first"), start);
        assert!(untied.believed(&stream(1), "first", start));
        assert!(!untied.believed(&stream(2), "first", start));
        untied.own_answer_came(&stream(2), start);
        assert!(!untied.arrived(answer("stranger"), start));
        assert_eq!(due_at(&mut untied, start + GRACE), ["first"]);
    }

    #[test]
    fn forged_answers_claimed_by_streams_whose_own_answers_came_end_nothing() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        // Two forged answers, then the streams' own version-3 answers.
        untied.arrived(answer("forged1"), start);
        untied.arrived(answer("forged2"), start);
        assert!(untied.believed(&stream(1), "forged1", start));
        assert!(untied.believed(&stream(2), "forged1", start));
        untied.own_answer_came(&stream(1), start);
        untied.own_answer_came(&stream(2), start);
        assert!(due_at(&mut untied, start + GRACE).is_empty());
        assert!(!untied.arrived(answer("stranger"), start + GRACE));
    }

    #[test]
    fn a_claim_let_go_goes_to_a_stream_that_took_the_same_answer() {
        let start = Instant::now();
        let later = start + GRACE / 2;
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("older"), start);
        // A stream answered by a version-3 listener claims it first; the
        // older listener's own client expects one more.
        assert!(untied.believed(&stream(2), "older", start));
        assert!(!untied.believed(&stream(1), "older", start));
        untied.own_answer_came(&stream(2), later);
        assert!(due_at(&mut untied, start + GRACE).is_empty());
        assert_eq!(due_at(&mut untied, later + GRACE), ["older"]);
        // Nobody expects a stranger's answer.
        assert!(!untied.arrived(answer("stranger"), later));
    }

    #[test]
    fn an_answer_ended_for_a_stream_whose_own_answer_came_late_meets_an_expectation() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("older"), start);
        // A stream a slow version-3 listener answers claims it first.
        assert!(untied.believed(&stream(2), "older", start));
        assert!(!untied.believed(&stream(1), "older", start));
        assert_eq!(due_at(&mut untied, start + GRACE), ["older"]);
        // Its own answer comes after the end: the end was stream 1's.
        untied.own_answer_came(&stream(2), start + 2 * GRACE);
        untied.own_answer_came(&stream(2), start + 2 * GRACE);
        assert!(!untied.arrived(answer("stranger"), start + 2 * GRACE));
    }

    #[test]
    fn claims_outnumbering_the_answers_remembered_all_stay() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("first"), start);
        let believers = REMEMBERED + 50;
        let streams: Vec<_> = (0..believers)
            .map(|n| Arc::from(format!("{n:032x}")))
            .collect();
        for stream in &streams {
            untied.believed(stream, "first", start);
        }
        for n in 1..believers {
            assert!(untied.arrived(answer(&format!("q{n}")), start));
        }
        assert_eq!(untied.due(start + GRACE).len(), believers);
    }

    #[test]
    fn an_expectation_lapses() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("first"), start);
        assert!(untied.believed(&stream(1), "first", start));
        assert!(!untied.believed(&stream(2), "first", start));
        assert!(!untied.arrived(answer("late"), start + EXPECTED_FOR));
    }

    #[test]
    fn a_flood_of_answers_is_remembered_only_in_part_and_keeps_claims() {
        let start = Instant::now();
        let mut untied = UntiedAnswers::default();
        untied.arrived(answer("claimed"), start);
        assert!(untied.believed(&stream(9), "claimed", start));
        for n in 0..10 * REMEMBERED {
            untied.arrived(answer(&format!("q{n}")), start);
        }
        assert_eq!(untied.recent.len(), REMEMBERED);
        // An answer pushed out is not ended; the believer expects one more.
        assert!(!untied.believed(&stream(1), "q0", start));
        assert!(untied.arrived(answer("mine"), start));
        assert_eq!(due_at(&mut untied, start + GRACE), ["claimed", "mine"]);
    }
}
