//! Publishing a stream's frames, with the count of publisher confirms
//! that `flush`, the gathering of small writes and closing rely on.
//!
//! Versions 1 and 2 publish on the stream's own channel; version 3 on its
//! connection's shared one ([`Mux`]), whose confirms come back numbered as
//! if the stream had a channel of its own.

use crate::mux::Mux;
use amiquip::{AmqpProperties, Channel, Confirm, ConfirmSmoother, Publish};
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

/// Where a stream's frames are published.
pub(super) enum Transport<'a> {
    /// The stream's own channel (versions 1 and 2).
    Channel(&'a Channel),
    /// The connection's shared channel (version 3).
    Mux {
        mux: Arc<Mux>,
        /// Our stream id.
        own: Arc<str>,
        /// The peer's stream id, once the handshake has told it.
        peer: Option<String>,
    },
}

/// A stream's publishing and its confirms.
pub(super) struct Publisher<'a> {
    pub(super) transport: Transport<'a>,
    pub(super) confirms: Receiver<Confirm>,
    smoother: ConfirmSmoother,
    /// Messages published.
    pub(super) published: u64,
    /// Messages the broker has confirmed (acked or nacked), in order.
    pub(super) confirmed: u64,
    /// The broker refused one of our messages.
    pub(super) nacked: bool,
    /// Flushes waiting for everything up to their message to be confirmed.
    pub(super) flushes: VecDeque<(u64, Sender<io::Result<()>>)>,
}

impl<'a> Publisher<'a> {
    pub(super) fn new(transport: Transport<'a>, confirms: Receiver<Confirm>) -> Publisher<'a> {
        Publisher {
            transport,
            confirms,
            smoother: ConfirmSmoother::new(),
            published: 0,
            confirmed: 0,
            nacked: false,
            flushes: VecDeque::new(),
        }
    }

    /// The stream's own channel (versions 1 and 2), to acknowledge on.
    pub(super) fn channel(&self) -> Option<&Channel> {
        match self.transport {
            Transport::Channel(channel) => Some(channel),
            Transport::Mux { .. } => None,
        }
    }

    /// Publishes a frame to the peer, on `queue`, mandatory.
    pub(super) fn publish(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        let to = match &self.transport {
            Transport::Mux { peer, own, .. } => peer.clone().unwrap_or_else(|| own.to_string()),
            Transport::Channel(_) => String::new(),
        };
        self.publish_to(queue, &to, body, properties)
    }

    /// Publishes a frame to stream `to` on `queue` (version 3; the stream
    /// id is ignored on a stream's own channel).
    pub(super) fn publish_to(
        &mut self,
        queue: &str,
        to: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        match &self.transport {
            Transport::Channel(channel) => channel.basic_publish(
                "",
                Publish {
                    body,
                    routing_key: queue.to_string(),
                    mandatory: true,
                    immediate: false,
                    properties,
                },
            )?,
            Transport::Mux { mux, own, .. } => {
                mux.publish(own, self.published + 1, queue, to, body, properties)?
            }
        }
        self.published += 1;
        Ok(())
    }

    /// Our stream id (version 3).
    pub(super) fn own_id(&self) -> Option<&str> {
        match &self.transport {
            Transport::Mux { own, .. } => Some(own),
            Transport::Channel(_) => None,
        }
    }

    /// Learns the peer's stream id (version 3).
    pub(super) fn set_peer(&mut self, id: String) {
        if let Transport::Mux { peer, .. } = &mut self.transport {
            *peer = Some(id);
        }
    }

    /// Takes in a confirm from the broker.
    pub(super) fn absorb(&mut self, confirm: Confirm) {
        for confirm in self.smoother.process(confirm) {
            match confirm {
                Confirm::Ack(payload) => self.confirmed = self.confirmed.max(payload.delivery_tag),
                Confirm::Nack(payload) => {
                    self.confirmed = self.confirmed.max(payload.delivery_tag);
                    self.nacked = true;
                }
            }
        }
    }

    /// Whether everything published is confirmed.
    pub(super) fn all_confirmed(&self) -> bool {
        self.confirmed >= self.published
    }
}
