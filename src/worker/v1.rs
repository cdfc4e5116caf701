//! What only version 1 does, for peers that speak the original (Go)
//! protocol: no keepalive frames, so the worker checks now and then that
//! the peer's queue still exists (a passive declare, on a channel of its
//! own); no sequence numbers, so the FIN is held back until the broker
//! has confirmed everything before it (the rule is the state machine's,
//! [`StreamState::fin_after_data`](super::state::StreamState::fin_after_data));
//! no reset frame, so an abort sends nothing.

use super::connected::Worker;
use super::publisher::Transport;
use crate::connection::BrokerConnection;
use amiquip::Channel;
use log::debug;
use std::ops::ControlFlow;

/// The channel version 1 checks the peer's queue on, kept open between
/// checks (a check that finds the queue exclusive to another connection
/// costs the channel: the next check opens a new one).
#[derive(Default)]
pub(super) struct Probe {
    channel: Option<Channel>,
}

/// What a check of the peer's queue found.
#[derive(Debug, PartialEq, Eq)]
enum Probed {
    /// The queue exists.
    There,
    /// The queue is gone.
    Gone,
}

impl Probe {
    /// Checks that `queue` exists; `Err` says how the broker was lost.
    fn check(&mut self, connection: &BrokerConnection, queue: &str) -> Result<Probed, String> {
        let channel = match self.channel.take() {
            Some(channel) => channel,
            None => connection
                .open_channel("checking the peer")
                .map_err(|err| err.to_string())?,
        };
        match channel.queue_declare_passive(queue.to_string()) {
            Ok(_) => {
                self.channel = Some(channel);
                Ok(Probed::There)
            }
            // Exclusive to the peer's connection: it exists. The broker
            // closed the channel, a new one is opened next time.
            Err(amiquip::Error::ServerClosedChannel { code: 405, .. }) => Ok(Probed::There),
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => Ok(Probed::Gone),
            Err(err) => Err(format!("checking the peer: {err}")),
        }
    }

    /// Closes the channel, once the stream is finished.
    pub(super) fn close(&mut self) {
        if let Some(channel) = self.channel.take() {
            let _ = channel.close();
        }
    }
}

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
