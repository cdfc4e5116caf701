//! Version 1's check that the peer's queue still exists: a passive
//! declare on a channel of its own (see [`v1`](super::v1)).

use crate::transport::connection::BrokerConnection;
use amiquip::Channel;

/// The channel version 1 checks the peer's queue on, kept open between
/// checks (a check that finds the queue exclusive to another connection
/// costs the channel: the next check opens a new one).
#[derive(Default)]
pub(super) struct Probe {
    channel: Option<Channel>,
}

/// What a check of the peer's queue found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Probed {
    /// The queue exists.
    There,
    /// The queue is gone.
    Gone,
}

impl Probe {
    /// Checks that `queue` exists; `Err` says how the broker was lost.
    pub(super) fn check(
        &mut self,
        connection: &BrokerConnection,
        queue: &str,
    ) -> Result<Probed, String> {
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
