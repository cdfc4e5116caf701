//! What only version 1 does, for peers that speak the original (Go)
//! protocol: no keepalive frames, so the worker checks now and then that
//! the peer's queue still exists (a passive declare, on a channel of its
//! own); no sequence numbers, so the FIN is held back until the broker
//! has confirmed everything before it (the rule is the state machine's,
//! [`StreamState::fin_after_data`](crate::session::state::StreamState::fin_after_data));
//! no reset frame, so an abort sends nothing.

use super::connected::Worker;
use super::peer_probe::Probed;
use super::publisher::Transport;
use log::debug;
use std::ops::ControlFlow;

impl<T: Transport> Worker<T> {
    /// The keepalive round of version 1: checks that the peer's queue
    /// still exists, until the peer is known gone or its FIN came.
    pub(super) fn probe_peer(&mut self) -> ControlFlow<()> {
        if !self.state.probe_wanted() {
            return ControlFlow::Continue(());
        }
        match self.probe.check(&self.connection, &self.peer_queue) {
            Ok(Probed::There) => {}
            Ok(Probed::Gone) => {
                let why = format!("the peer's queue {:?} is gone", self.peer_queue);
                self.peer_left(&why, false);
            }
            Err(why) => return self.broker_lost(&why),
        }
        ControlFlow::Continue(())
    }

    /// Sends a held-back FIN once everything before it is confirmed; a
    /// failed stream never sends it.
    pub(super) fn settle_waiting_fin(&mut self) {
        if self
            .state
            .settle_fin(self.publisher.all_confirmed(), self.failed())
        {
            let _ = self.send_fin();
        }
    }

    /// The linger ran out with data unconfirmed: a held-back FIN goes
    /// now, behind the data, as it would have without holding it back.
    pub(super) fn send_held_fin_anyway(&mut self) {
        if self.state.fin_on_timeout(self.failed()) {
            let _ = self.send_fin();
        }
    }

    /// Aborts the stream: version 1 has no reset, and never a FIN in its
    /// place (that would be a clean end after whatever was dropped). The
    /// peer finds our queue gone (deleted with our consumer) and fails.
    pub(super) fn abort_without_reset(&self, why: &str) {
        debug!("stream {}: aborting: {why}", self.local_queue);
    }
}
