//! The stream ids a connection held recently. A frame for one of them
//! comes from a peer that does not know yet that its stream is gone (a
//! client that gave up before its listener's answer came, a peer whose
//! reset was lost with a connection): its answer must not wait behind a
//! stranger's flood of frames for ids nobody ever held, so it is taken
//! from a budget of its own. Stream ids are random: only a peer that was
//! told one can name it. That peer may still flood frames for it, so each
//! id is answered at most once every [`ANSWER_GAP`]: one former peer
//! cannot spend the answers the others are owed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stream id is remembered after the stream left: far longer
/// than any keepalive interval, so that its peer's next frame finds it.
pub(super) const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// The most ids remembered (the oldest go first): about 1 MiB.
const REMEMBERED: usize = 16 * 1024;

/// The shortest time between two answers to frames for one id: a peer
/// needs one answer to learn its stream is gone (another a little later
/// if that one was lost), never a flood of them.
pub(super) const ANSWER_GAP: Duration = Duration::from_millis(50);

/// Whether a frame for a stream id is answered as a former peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FormerPeer {
    /// The id was not held recently: a stranger's frame.
    Unknown,
    /// The id was held recently, and its last answer is long enough ago.
    Answer,
    /// The id was held recently, and answered less than [`ANSWER_GAP`] ago.
    AnsweredJustNow,
}

/// The stream ids that left recently, oldest first, each with when a
/// frame for it was last answered.
#[derive(Debug, Default)]
pub(super) struct GoneStreams {
    order: VecDeque<(Instant, Arc<str>)>,
    ids: HashMap<Arc<str>, Option<Instant>>,
}

impl GoneStreams {
    /// The stream `id` left at `now`.
    pub(super) fn left(&mut self, id: Arc<str>, now: Instant) {
        self.forget_lapsed(now);
        if self.order.len() == REMEMBERED
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        if self.ids.insert(Arc::clone(&id), None).is_none() {
            self.order.push_back((now, id));
        }
    }

    /// Whether a frame for `id` that came at `now` is a former peer's
    /// (the stream left within [`REMEMBERED_FOR`]) to answer; an answer
    /// is counted as given.
    pub(super) fn answer(&mut self, id: &str, now: Instant) -> FormerPeer {
        self.forget_lapsed(now);
        let Some(last) = self.ids.get_mut(id) else {
            return FormerPeer::Unknown;
        };
        if last.is_some_and(|last| now.saturating_duration_since(last) < ANSWER_GAP) {
            return FormerPeer::AnsweredJustNow;
        }
        *last = Some(now);
        FormerPeer::Answer
    }

    fn forget_lapsed(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && *at + REMEMBERED_FOR <= now
        {
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_remembered_for_a_while() {
        let start = Instant::now();
        let mut gone = GoneStreams::default();
        gone.left(Arc::from("a"), start);
        let later = start + Duration::from_secs(1);
        assert_eq!(gone.answer("a", later), FormerPeer::Answer);
        assert_eq!(gone.answer("b", later), FormerPeer::Unknown);
        assert_eq!(
            gone.answer("a", start + REMEMBERED_FOR),
            FormerPeer::Unknown
        );
    }

    #[test]
    fn each_id_is_answered_at_most_once_a_gap() {
        let start = Instant::now();
        let mut gone = GoneStreams::default();
        gone.left(Arc::from("a"), start);
        gone.left(Arc::from("b"), start);
        assert_eq!(gone.answer("a", start), FormerPeer::Answer);
        for _ in 0..1000 {
            assert_eq!(gone.answer("a", start), FormerPeer::AnsweredJustNow);
        }
        // A flood for one id leaves the others' answers alone.
        assert_eq!(gone.answer("b", start), FormerPeer::Answer);
        assert_eq!(gone.answer("a", start + ANSWER_GAP), FormerPeer::Answer);
        // A clock read out of order gives nothing more.
        assert_eq!(gone.answer("a", start), FormerPeer::AnsweredJustNow);
    }

    #[test]
    fn the_oldest_go_first() {
        let start = Instant::now();
        let mut gone = GoneStreams::default();
        for n in 0..REMEMBERED + 1 {
            gone.left(Arc::from(n.to_string()), start);
        }
        assert_eq!(gone.answer("0", start), FormerPeer::Unknown);
        assert_eq!(gone.answer("1", start), FormerPeer::Answer);
        assert_eq!(
            gone.answer(&REMEMBERED.to_string(), start),
            FormerPeer::Answer
        );
        assert_eq!(gone.order.len(), REMEMBERED);
    }
}
