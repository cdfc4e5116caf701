//! The stream ids a connection held recently. A frame for one of them
//! comes from a peer that does not know yet that its stream is gone (a
//! client that gave up before its listener's answer came, a peer whose
//! reset was lost with a connection): its answer must not wait behind a
//! stranger's flood of frames for ids nobody ever held, so it is taken
//! from a budget of its own. Stream ids are random: only a peer that was
//! told one can name it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stream id is remembered after the stream left: far longer
/// than any keepalive interval, so that its peer's next frame finds it.
pub(super) const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// The most ids remembered (the oldest go first): about 1 MiB.
const REMEMBERED: usize = 16 * 1024;

/// The stream ids that left recently, oldest first.
#[derive(Debug, Default)]
pub(super) struct GoneStreams {
    order: VecDeque<(Instant, Arc<str>)>,
    ids: HashSet<Arc<str>>,
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
        if self.ids.insert(Arc::clone(&id)) {
            self.order.push_back((now, id));
        }
    }

    /// Whether the stream `id` left within [`REMEMBERED_FOR`] of `now`.
    pub(super) fn held(&mut self, id: &str, now: Instant) -> bool {
        self.forget_lapsed(now);
        self.ids.contains(id)
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
        assert!(gone.held("a", start + Duration::from_secs(1)));
        assert!(!gone.held("b", start + Duration::from_secs(1)));
        assert!(!gone.held("a", start + REMEMBERED_FOR));
    }

    #[test]
    fn the_oldest_go_first() {
        let start = Instant::now();
        let mut gone = GoneStreams::default();
        for n in 0..REMEMBERED + 1 {
            gone.left(Arc::from(n.to_string()), start);
        }
        assert!(!gone.held("0", start));
        assert!(gone.held("1", start));
        assert!(gone.held(&REMEMBERED.to_string(), start));
        assert_eq!(gone.order.len(), REMEMBERED);
    }
}
