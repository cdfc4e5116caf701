//! The stream's state machine: every decision a connected stream's worker
//! makes, with no I/O and no channels.
//!
//! The worker ([`Worker`](super::connected::Worker)) does the I/O: it
//! publishes, takes confirms and returns, answers the user's handles. It
//! asks this state what to do and tells it what happened. What the state
//! needs from outside (whether the broker has confirmed everything
//! published, whether the stream has failed) comes in as arguments, so
//! every rule here is tested without a broker.
//!
//! A stream's life once connected:
//!
//! * **running**: data and control frames flow; a keepalive is due every
//!   interval;
//! * **finishing**: both directions are over, the last handle is gone, or
//!   the stream failed; the worker waits for the broker's confirms, at
//!   most the linger time once the last handle is gone, and answers the
//!   flushes the handles still ask for;
//! * **finished**: everything is confirmed, the stream failed, or the
//!   linger ran out; the worker ends.

use crate::protocol::frame;
use crate::version::ProtocolVersion;
use std::time::{Duration, Instant};

/// Where a connected stream is in its life (the worker ends once
/// finished: there is no state for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Carrying data; keepalives are due every interval.
    Running,
    /// Closing, waiting for the broker's confirms.
    Finishing {
        /// Give up waiting for confirms then (once the last handle is
        /// gone).
        deadline: Option<Instant>,
        /// The user's handles may still ask for flushes.
        handles_left: bool,
    },
}

/// What to do about a FIN the user asked for (a shutdown or a close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinStep {
    /// Publish it now.
    Send,
    /// It went already: nothing to do, and that is fine.
    AlreadySent,
    /// Version 1: hold it back until every message before it is
    /// confirmed (see [`StreamState::settle_fin`]).
    Hold,
    /// The stream failed: no FIN, the caller gets the failure's error.
    Refuse,
}

/// What to do about a reset (an abortive close, a refused message, a
/// protocol violation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResetStep {
    /// Publish a reset frame to the peer.
    Send,
    /// Version 1 has no reset frame, and a FIN in its place would be a
    /// clean end after whatever was dropped: nothing is sent, the peer
    /// finds our queue gone (deleted with our consumer) and fails.
    Abort,
    /// Nobody to tell (the peer is gone) or no way to (the broker is
    /// lost).
    Skip,
}

/// What follows from the peer leaving (see [`StreamState::peer_left`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerLeft {
    /// The stream fails: something of ours did not, or will not, reach
    /// the peer.
    pub(crate) fails: bool,
    /// The reader needs a "peer gone" marker behind the data already
    /// queued for it, to know where the stream ends.
    pub(crate) marks: bool,
}

/// `now + interval`, or far enough in the future when that cannot be
/// counted (`Duration::MAX` means no limit).
fn later(now: Instant, interval: Duration) -> Instant {
    now.checked_add(interval)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// The state of a connected stream: its sequence numbers, what went and
/// came, and its phase.
#[derive(Debug)]
pub(crate) struct StreamState {
    version: ProtocolVersion,
    keepalive_interval: Duration,
    /// How long finishing waits for confirms once the last handle is
    /// gone: the options' linger, or the stream's own once it set one.
    linger: Duration,
    /// The last handle is gone (closed or reset).
    closing: bool,
    /// The sequence number of the last data or FIN frame sent.
    sequence: u64,
    /// The delivery tag acknowledged last (acks cover all before it).
    acked: u64,
    /// When something was last published to the peer.
    last_sent: Instant,
    fin_sent: bool,
    /// Version 1: a FIN held back until the broker has confirmed every
    /// message before it. Version 1 has no sequence numbers: a data
    /// message refused after the FIN went out would leave the peer a
    /// clean EOF after a gap. Held back, a refusal fails the stream and
    /// no FIN is ever sent.
    fin_waiting: bool,
    /// The reader has taken the peer's FIN.
    fin_received: bool,
    /// The peer is gone (its queue, or a reset from it).
    peer_gone: bool,
    /// The reader knows the stream's end (the peer's FIN, or the marker
    /// that the peer is gone).
    reader_done: bool,
    phase: Phase,
    /// When the next keepalive is due (while running).
    next_keepalive: Instant,
}

impl StreamState {
    /// A stream connected at `now`.
    pub(crate) fn new(
        version: ProtocolVersion,
        keepalive_interval: Duration,
        linger: Duration,
        now: Instant,
    ) -> StreamState {
        StreamState {
            version,
            keepalive_interval,
            linger,
            closing: false,
            sequence: 0,
            acked: 0,
            last_sent: now,
            fin_sent: false,
            fin_waiting: false,
            fin_received: false,
            peer_gone: false,
            reader_done: false,
            phase: Phase::Running,
            next_keepalive: later(now, keepalive_interval),
        }
    }

    /// The protocol version the stream speaks.
    pub(crate) fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The phase the stream is in.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether a broker's confirm could move the stream on by itself (a
    /// held-back FIN, closing), besides held-back data and flushes, which
    /// the worker knows of.
    pub(crate) fn waits_for_confirms(&self) -> bool {
        self.fin_waiting || self.closing || self.phase != Phase::Running
    }

    /// The stream is over in both directions, or the peer is gone and the
    /// reader knows: running is over.
    pub(crate) fn done(&self) -> bool {
        (self.fin_sent && self.fin_received) || (self.peer_gone && self.reader_done)
    }

    // Running to finishing to finished.

    /// Running is over (both directions done, the last handle gone, or
    /// the stream failed): wait for the confirms, at most the linger time
    /// if the last handle is gone, else until it goes and then the linger
    /// time.
    pub(crate) fn start_finishing(&mut self, now: Instant) {
        self.phase = Phase::Finishing {
            deadline: self.closing.then(|| now.checked_add(self.linger)).flatten(),
            handles_left: !self.closing,
        };
    }

    /// The user's last handle is gone, with the linger it set (`None`:
    /// the options' linger holds). From now on finishing waits at most
    /// that long; if it was finishing already, that long from `now`.
    pub(crate) fn last_handle_gone(&mut self, linger: Option<Duration>, now: Instant) {
        self.closing = true;
        if let Some(linger) = linger {
            self.linger = linger;
        }
        if let Phase::Finishing { .. } = self.phase {
            self.phase = Phase::Finishing {
                deadline: now.checked_add(self.linger),
                handles_left: false,
            };
        }
    }

    /// Finishing: whether the user's handles may still ask something.
    pub(crate) fn handles_left(&self) -> bool {
        matches!(
            self.phase,
            Phase::Finishing {
                handles_left: true,
                ..
            }
        )
    }

    /// Finishing: whether the linger ran out.
    pub(crate) fn out_of_time(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Finishing { deadline: Some(deadline), .. } if now >= deadline)
    }

    /// When the worker must look again with nothing else to wake it: the
    /// next keepalive while running, the linger's end while finishing.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running => Some(self.next_keepalive),
            Phase::Finishing { deadline, .. } => deadline,
        }
    }

    /// Finishing is over once everything is confirmed, or the stream
    /// failed (nothing more will be confirmed that matters).
    pub(crate) fn nothing_to_wait_for(all_confirmed: bool, failed: bool) -> bool {
        all_confirmed || failed
    }

    /// A finished stream closed cleanly if everything was confirmed and
    /// it did not fail: a later flush has nothing to wait for.
    pub(crate) fn closed_cleanly(all_confirmed: bool, failed: bool) -> bool {
        all_confirmed && !failed
    }

    // Sending.

    /// The sequence number of the next data or FIN frame.
    pub(crate) fn next_sequence(&self) -> u64 {
        self.sequence + 1
    }

    /// A data frame went, numbered [`next_sequence`](Self::next_sequence).
    pub(crate) fn data_sent(&mut self) {
        self.sequence += 1;
    }

    /// The FIN went, numbered [`next_sequence`](Self::next_sequence).
    pub(crate) fn fin_published(&mut self) {
        self.sequence += 1;
        self.fin_sent = true;
    }

    /// Something (any frame) was published to the peer at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// The FIN the user asked for, once the data before it is published:
    /// version 1 holds it back while anything is unconfirmed (version 2's
    /// sequence numbers expose any refused message before it; version 1
    /// has none).
    pub(crate) fn fin_after_data(&mut self, all_confirmed: bool, failed: bool) -> FinStep {
        if self.version == ProtocolVersion::V1 && !all_confirmed {
            if failed {
                return FinStep::Refuse;
            }
            self.fin_waiting = true;
            return FinStep::Hold;
        }
        self.fin_now(failed)
    }

    /// Whether the FIN goes when asked for now.
    pub(crate) fn fin_now(&self, failed: bool) -> FinStep {
        if self.fin_sent {
            FinStep::AlreadySent
        } else if failed {
            FinStep::Refuse
        } else {
            FinStep::Send
        }
    }

    /// Version 1: whether a held-back FIN goes now (everything before it
    /// is confirmed). A failed stream never sends it; either way it is
    /// held back no longer.
    pub(crate) fn settle_fin(&mut self, all_confirmed: bool, failed: bool) -> bool {
        if !self.fin_waiting || !all_confirmed {
            return false;
        }
        self.fin_waiting = false;
        !failed
    }

    /// Version 1: whether a held-back FIN goes when the linger ran out
    /// with data unconfirmed: it goes behind the data, as it would have
    /// without holding it back (dropping it would turn a clean close into
    /// a reset only because the broker confirmed slowly).
    pub(crate) fn fin_on_timeout(&mut self, failed: bool) -> bool {
        if !self.fin_waiting || failed {
            return false;
        }
        self.fin_waiting = false;
        true
    }

    /// Whether a close sends the FIN (after what is unsent): not if it
    /// went or is held back already.
    pub(crate) fn close_sends_fin(&self) -> bool {
        !self.fin_sent && !self.fin_waiting
    }

    /// Whether a reset goes to the peer.
    pub(crate) fn reset_step(&self, broker_lost: bool) -> ResetStep {
        if self.peer_gone || broker_lost {
            ResetStep::Skip
        } else if self.version == ProtocolVersion::V1 {
            ResetStep::Abort
        } else {
            ResetStep::Send
        }
    }

    /// Whether a report of what our reader consumed goes to the peer.
    pub(crate) fn window_goes(&self, failed: bool) -> bool {
        !self.peer_gone && !failed
    }

    /// Whether a delivery needs acknowledging (acks are cumulative: one
    /// for a later delivery covered it); if so, it is taken as acked.
    pub(crate) fn ack(&mut self, delivery_tag: u64) -> bool {
        if delivery_tag <= self.acked {
            return false;
        }
        self.acked = delivery_tag;
        true
    }

    // Keepalives.

    /// Whether a keepalive round is due at `now` (only while running);
    /// if so, the next one is due an interval later.
    pub(crate) fn keepalive_due(&mut self, now: Instant) -> bool {
        if self.phase != Phase::Running || now < self.next_keepalive {
            return false;
        }
        self.next_keepalive = later(now, self.keepalive_interval);
        true
    }

    /// Version 2 and later: whether a keepalive frame goes at `now`. Not
    /// when both FINs went (ours, and the peer's, taken by the reader or
    /// waiting for it, `inbox_fin_seen`): the peer sends nothing more,
    /// we send nothing more, and it may be gone, cleanly. Nor when the
    /// peer is gone or the stream failed, nor when something else went
    /// to the peer within half an interval (the tick comes every
    /// interval: this allows for its jitter).
    ///
    /// After the peer's FIN alone they still go: our direction is open,
    /// and a writer waiting for credit from a peer that died after its
    /// FIN would otherwise wait for ever (nothing else goes that could
    /// come back to say the peer is gone).
    pub(crate) fn keepalive_goes(&self, now: Instant, inbox_fin_seen: bool, failed: bool) -> bool {
        let peer_finished = self.fin_received || inbox_fin_seen;
        if self.peer_gone || (peer_finished && self.fin_sent) || failed {
            return false;
        }
        now.saturating_duration_since(self.last_sent) >= self.keepalive_interval / 2
    }

    /// Version 1: whether to check that the peer's queue still exists:
    /// not once the peer is known gone or its FIN came.
    pub(crate) fn probe_wanted(&self) -> bool {
        !self.peer_gone && !self.fin_received
    }

    // What the reader and the broker report.

    /// The reader has taken the peer's FIN.
    pub(crate) fn fin_received(&mut self) {
        self.fin_received = true;
        self.reader_done = true;
    }

    /// The reader has taken the "peer gone" marker.
    pub(crate) fn peer_gone_seen(&mut self) {
        self.reader_done = true;
    }

    /// The peer reset the stream.
    pub(crate) fn peer_reset(&mut self) {
        self.peer_gone = true;
    }

    /// The peer is gone (its queue, found missing); `ours_lost`: a message
    /// of ours did not reach it. `None` if it was known gone already.
    ///
    /// A peer that goes after our FIN was sent, with nothing of ours
    /// lost, may simply have closed (its queue goes with its consumer):
    /// our direction is complete, so only reading can fail (if its FIN
    /// never came). Data it sent before going stays readable: unless the
    /// reader has its FIN already, a marker behind that data tells it
    /// where the stream ends.
    pub(crate) fn peer_left(&mut self, ours_lost: bool) -> Option<PeerLeft> {
        if self.peer_gone {
            return None;
        }
        self.peer_gone = true;
        let fails = ours_lost || !self.fin_sent;
        if self.fin_received {
            self.reader_done = true;
        }
        Some(PeerLeft {
            fails,
            marks: !self.fin_received,
        })
    }

    /// Versions 2 and later: whether data that reached the stream after
    /// its last handle went would be answered with a reset (the peer
    /// still writing to a stream closed with nothing unread at the time),
    /// as TCP answers data for a closed socket. Not while a handle is
    /// left, nor when the peer is gone or the stream failed.
    pub(crate) fn late_data_resets(&self, failed: bool) -> bool {
        self.closing && self.version >= ProtocolVersion::V2 && !self.peer_gone && !failed
    }
}

/// Nagle's algorithm, with the broker's confirm as the ACK: how many of
/// `unsent` bytes go in the next message, if one goes now. Full messages
/// (`max` bytes) always go; the partial rest only when `all` is asked
/// (a flush, a FIN, a close), `nodelay` is on, or nothing published is
/// still waiting for its confirm (whose arrival asks again).
pub(crate) fn next_message(
    unsent: usize,
    max: usize,
    all: bool,
    nodelay: bool,
    all_confirmed: bool,
) -> Option<usize> {
    if unsent == 0 {
        return None;
    }
    let full = unsent >= max;
    (full || all || nodelay || all_confirmed).then(|| unsent.min(max))
}

/// Whether a message the broker returned (unroutable: the peer's queue
/// is gone) cost a byte of the stream: data, a FIN or a reset does; a
/// keepalive or window report does not, nor the "peer gone" marker on our
/// own queue.
pub(crate) fn returned_costs_data(
    kind: Option<&str>,
    routing_key: &str,
    local_queue: &str,
) -> bool {
    let control =
        matches!(kind, Some(frame::KEEPALIVE | frame::WINDOW)) || routing_key == local_queue;
    !control
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);
    const LINGER: Duration = Duration::from_secs(3);

    fn state(version: ProtocolVersion) -> (StreamState, Instant) {
        let now = Instant::now();
        (StreamState::new(version, INTERVAL, LINGER, now), now)
    }

    #[test]
    fn data_and_fin_are_numbered_from_one() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert_eq!(s.next_sequence(), 1);
        s.data_sent();
        assert_eq!(s.next_sequence(), 2);
        s.data_sent();
        assert_eq!(s.fin_now(false), FinStep::Send);
        assert_eq!(s.next_sequence(), 3);
        s.fin_published();
        assert_eq!(s.fin_now(false), FinStep::AlreadySent);
        assert_eq!(s.next_sequence(), 4);
    }

    #[test]
    fn full_messages_always_go_the_partial_rest_waits_for_confirms() {
        // Nothing to send.
        assert_eq!(next_message(0, 10, true, true, true), None);
        // A full message goes even with confirms outstanding.
        assert_eq!(next_message(25, 10, false, false, false), Some(10));
        assert_eq!(next_message(10, 10, false, false, false), Some(10));
        // The partial rest waits for the outstanding confirm...
        assert_eq!(next_message(5, 10, false, false, false), None);
        // ...unless everything is confirmed, all is asked, or nodelay.
        assert_eq!(next_message(5, 10, false, false, true), Some(5));
        assert_eq!(next_message(5, 10, true, false, false), Some(5));
        assert_eq!(next_message(5, 10, false, true, false), Some(5));
    }

    #[test]
    fn version_2_sends_the_fin_behind_unconfirmed_data() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert_eq!(s.fin_after_data(false, false), FinStep::Send);
        assert_eq!(s.fin_after_data(false, true), FinStep::Refuse);
        s.fin_published();
        assert_eq!(s.fin_after_data(false, false), FinStep::AlreadySent);
    }

    #[test]
    fn version_1_holds_the_fin_until_everything_is_confirmed() {
        let (mut s, _) = state(ProtocolVersion::V1);
        assert_eq!(s.fin_after_data(true, false), FinStep::Send);
        assert_eq!(s.fin_after_data(false, false), FinStep::Hold);
        assert!(!s.close_sends_fin(), "held back: a close adds none");
        assert!(!s.settle_fin(false, false), "still unconfirmed");
        assert!(s.settle_fin(true, false), "confirmed: it goes");
        assert!(!s.settle_fin(true, false), "once");
        assert!(s.close_sends_fin(), "it is not sent until published");
    }

    #[test]
    fn version_1_never_sends_a_held_fin_after_a_failure() {
        let (mut s, _) = state(ProtocolVersion::V1);
        // Failed before the FIN was asked for: refused, not held.
        assert_eq!(s.fin_after_data(false, true), FinStep::Refuse);
        assert!(s.close_sends_fin());
        // Failed while held: released without being sent.
        assert_eq!(s.fin_after_data(false, false), FinStep::Hold);
        assert!(!s.settle_fin(true, true));
        assert!(s.close_sends_fin(), "held no longer");
        assert!(!s.fin_on_timeout(false), "nothing held");
    }

    #[test]
    fn version_1_sends_a_held_fin_when_the_linger_runs_out() {
        let (mut s, _) = state(ProtocolVersion::V1);
        assert!(!s.fin_on_timeout(false), "nothing held");
        assert_eq!(s.fin_after_data(false, false), FinStep::Hold);
        assert!(!s.fin_on_timeout(true), "failed: never");
        assert!(s.fin_on_timeout(false));
        assert!(!s.fin_on_timeout(false), "once");
    }

    #[test]
    fn a_close_sends_the_fin_unless_it_went() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert!(s.close_sends_fin());
        s.fin_published();
        assert!(!s.close_sends_fin());
    }

    #[test]
    fn done_when_both_directions_end_or_the_reader_knows_the_peer_is_gone() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert!(!s.done());
        s.fin_published();
        assert!(!s.done(), "our direction only");
        s.fin_received();
        assert!(s.done());

        let (mut s, _) = state(ProtocolVersion::V2);
        s.fin_received();
        assert!(!s.done(), "their direction only");

        let (mut s, _) = state(ProtocolVersion::V2);
        s.peer_reset();
        assert!(!s.done(), "the reader does not know yet");
        s.peer_gone_seen();
        assert!(s.done());
    }

    #[test]
    fn finishing_before_the_last_handle_goes_waits_for_it_then_the_linger() {
        let (mut s, now) = state(ProtocolVersion::V2);
        assert_eq!(s.phase(), Phase::Running);
        assert_eq!(s.next_wake(), Some(now + INTERVAL));
        s.start_finishing(now);
        assert_eq!(
            s.phase(),
            Phase::Finishing {
                deadline: None,
                handles_left: true
            }
        );
        assert!(s.handles_left());
        assert_eq!(s.next_wake(), None, "no deadline while a handle is left");
        assert!(!s.out_of_time(now + Duration::from_secs(3600)));
        let later = now + Duration::from_secs(1);
        s.last_handle_gone(Some(Duration::from_secs(7)), later);
        assert!(!s.handles_left());
        let deadline = later + Duration::from_secs(7);
        assert_eq!(s.next_wake(), Some(deadline), "the handle's own linger");
        assert!(!s.out_of_time(deadline - Duration::from_millis(1)));
        assert!(s.out_of_time(deadline));
    }

    #[test]
    fn finishing_after_the_last_handle_went_waits_the_linger() {
        let (mut s, now) = state(ProtocolVersion::V2);
        s.last_handle_gone(None, now);
        assert_eq!(s.phase(), Phase::Running, "running until the worker says");
        let later = now + Duration::from_secs(1);
        s.start_finishing(later);
        assert_eq!(
            s.phase(),
            Phase::Finishing {
                deadline: Some(later + LINGER),
                handles_left: false
            }
        );
        assert!(s.out_of_time(later + LINGER));
    }

    #[test]
    fn finishing_ends_once_confirmed_or_failed_and_is_clean_only_if_both() {
        assert!(!StreamState::nothing_to_wait_for(false, false));
        assert!(StreamState::nothing_to_wait_for(true, false));
        assert!(StreamState::nothing_to_wait_for(false, true));
        assert!(StreamState::closed_cleanly(true, false));
        assert!(!StreamState::closed_cleanly(true, true));
        assert!(!StreamState::closed_cleanly(false, false));
    }

    #[test]
    fn a_keepalive_round_is_due_every_interval_while_running() {
        let (mut s, now) = state(ProtocolVersion::V2);
        assert!(!s.keepalive_due(now));
        assert!(s.keepalive_due(now + INTERVAL));
        assert!(
            !s.keepalive_due(now + INTERVAL),
            "the next is an interval on"
        );
        assert_eq!(s.next_wake(), Some(now + 2 * INTERVAL));
        s.start_finishing(now);
        assert!(
            !s.keepalive_due(now + 10 * INTERVAL),
            "none while finishing"
        );
    }

    #[test]
    fn a_keepalive_goes_only_after_half_an_interval_of_silence() {
        let (mut s, now) = state(ProtocolVersion::V2);
        assert!(!s.keepalive_goes(now + INTERVAL / 2 - Duration::from_millis(1), false, false));
        assert!(s.keepalive_goes(now + INTERVAL / 2, false, false));
        s.sent(now + INTERVAL);
        assert!(!s.keepalive_goes(now + INTERVAL, false, false));
        assert!(s.keepalive_goes(now + 2 * INTERVAL, false, false));
    }

    #[test]
    fn no_keepalive_after_both_fins_the_peers_departure_or_a_failure() {
        let later = |now: Instant| now + 2 * INTERVAL;
        let (mut s, now) = state(ProtocolVersion::V2);
        s.fin_published();
        assert!(!s.keepalive_goes(later(now), true, false), "FIN waiting");
        let (s, now) = state(ProtocolVersion::V2);
        assert!(!s.keepalive_goes(later(now), false, true), "failed");
        let (mut s, now) = state(ProtocolVersion::V3);
        s.fin_published();
        s.fin_received();
        assert!(!s.keepalive_goes(later(now), false, false), "FIN read");
        let (mut s, now) = state(ProtocolVersion::V2);
        s.peer_reset();
        assert!(!s.keepalive_goes(later(now), false, false), "peer gone");
    }

    #[test]
    fn keepalives_go_on_after_the_peers_fin_while_our_direction_is_open() {
        let later = |now: Instant| now + 2 * INTERVAL;
        for version in [ProtocolVersion::V2, ProtocolVersion::V3] {
            let (s, now) = state(version);
            assert!(s.keepalive_goes(later(now), true, false), "FIN waiting");
            let (mut s, now) = state(version);
            s.fin_received();
            assert!(s.keepalive_goes(later(now), false, false), "FIN read");
            s.fin_published();
            assert!(!s.keepalive_goes(later(now), false, false), "both FINs");
        }
        let (mut s, now) = state(ProtocolVersion::V2);
        s.fin_published();
        assert!(
            s.keepalive_goes(later(now), false, false),
            "our FIN alone: reading, the peer is checked"
        );
    }

    #[test]
    fn version_1_probes_until_the_peer_is_gone_or_its_fin_came() {
        let (mut s, _) = state(ProtocolVersion::V1);
        assert!(s.probe_wanted());
        s.fin_received();
        assert!(!s.probe_wanted());
        let (mut s, _) = state(ProtocolVersion::V1);
        assert!(s.peer_left(false).is_some());
        assert!(!s.probe_wanted());
    }

    #[test]
    fn a_peer_leaving_before_our_fin_fails_the_stream() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert_eq!(
            s.peer_left(false),
            Some(PeerLeft {
                fails: true,
                marks: true
            })
        );
        assert_eq!(s.reset_step(false), ResetStep::Skip, "gone");
        assert_eq!(s.peer_left(true), None, "once");
        assert!(!s.done(), "until the reader takes the marker");
        s.peer_gone_seen();
        assert!(s.done());
    }

    #[test]
    fn a_peer_leaving_after_our_fin_fails_only_if_something_of_ours_was_lost() {
        let (mut s, _) = state(ProtocolVersion::V2);
        s.fin_published();
        assert_eq!(
            s.peer_left(false),
            Some(PeerLeft {
                fails: false,
                marks: true
            })
        );
        let (mut s, _) = state(ProtocolVersion::V2);
        s.fin_published();
        assert_eq!(
            s.peer_left(true),
            Some(PeerLeft {
                fails: true,
                marks: true
            })
        );
    }

    #[test]
    fn a_peer_leaving_after_its_fin_was_read_needs_no_marker() {
        let (mut s, _) = state(ProtocolVersion::V2);
        s.fin_received();
        assert_eq!(
            s.peer_left(false),
            Some(PeerLeft {
                fails: true,
                marks: false
            })
        );
        assert!(s.done(), "the reader has the end: its FIN");
        let (mut s, _) = state(ProtocolVersion::V2);
        s.fin_published();
        s.fin_received();
        assert_eq!(
            s.peer_left(false),
            Some(PeerLeft {
                fails: false,
                marks: false
            })
        );
    }

    #[test]
    fn only_lost_data_fin_or_reset_counts_as_ours_lost() {
        let local = "amqp-stream.local";
        assert!(returned_costs_data(None, "peer", local));
        assert!(returned_costs_data(Some(frame::RESET), "peer", local));
        assert!(!returned_costs_data(Some(frame::KEEPALIVE), "peer", local));
        assert!(!returned_costs_data(Some(frame::WINDOW), "peer", local));
        assert!(!returned_costs_data(None, local, local), "our own marker");
    }

    #[test]
    fn resets_go_in_version_2_and_later_unless_nobody_can_hear() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert_eq!(s.reset_step(false), ResetStep::Send);
        assert_eq!(s.reset_step(true), ResetStep::Skip, "broker lost");
        s.peer_reset();
        assert_eq!(s.reset_step(false), ResetStep::Skip, "peer gone");
        let (s, _) = state(ProtocolVersion::V3);
        assert_eq!(s.reset_step(false), ResetStep::Send);
        let (s, _) = state(ProtocolVersion::V1);
        assert_eq!(s.reset_step(false), ResetStep::Abort, "no reset in v1");
        assert_eq!(s.reset_step(true), ResetStep::Skip);
    }

    #[test]
    fn window_reports_stop_once_the_peer_is_gone_or_the_stream_failed() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert!(s.window_goes(false));
        assert!(!s.window_goes(true));
        s.peer_reset();
        assert!(!s.window_goes(false));
    }

    #[test]
    fn acks_are_cumulative() {
        let (mut s, _) = state(ProtocolVersion::V2);
        assert!(s.ack(3));
        assert!(!s.ack(2), "covered by 3");
        assert!(!s.ack(3));
        assert!(s.ack(4));
    }

    #[test]
    fn late_data_resets_only_after_the_last_handle_went_in_version_2_and_later() {
        let (mut s, now) = state(ProtocolVersion::V2);
        assert!(!s.late_data_resets(false), "a handle is left");
        s.last_handle_gone(None, now);
        assert!(s.late_data_resets(false));
        assert!(!s.late_data_resets(true), "failed");
        s.peer_reset();
        assert!(!s.late_data_resets(false), "peer gone");

        let (mut s, now) = state(ProtocolVersion::V1);
        s.last_handle_gone(None, now);
        assert!(!s.late_data_resets(false), "version 1");
        let (mut s, now) = state(ProtocolVersion::V3);
        s.last_handle_gone(None, now);
        assert!(s.late_data_resets(false));
    }

    #[test]
    fn a_linger_or_keepalive_of_duration_max_is_no_limit() {
        let now = Instant::now();
        let mut s = StreamState::new(ProtocolVersion::V3, Duration::MAX, Duration::MAX, now);
        assert!(!s.keepalive_due(now + Duration::from_secs(3600)));
        s.last_handle_gone(None, now);
        s.start_finishing(now);
        assert!(!s.out_of_time(now + Duration::from_secs(3600)));
        s.last_handle_gone(Some(Duration::MAX), now);
        assert!(!s.out_of_time(now + Duration::from_secs(3600)));
    }
}
