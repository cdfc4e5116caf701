//! Publishing a stream's frames, with the count of publisher confirms
//! that `flush`, the gathering of small writes and closing rely on.
//!
//! Versions 1 and 2 publish on the stream's own channel; version 3 on its
//! connection's shared one ([`Mux`]), whose confirms come back numbered as
//! if the stream had a channel of its own.

use crate::transport::mux::Mux;
use amiquip::{AmqpProperties, Channel, Confirm, ConfirmSmoother, Publish};
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

/// Where a stream's frames are published.
pub(super) trait Transport {
    /// Publishes a frame, the stream's `tag`-th message, to stream `to`
    /// (version 3; ignored otherwise) on `queue`, mandatory.
    fn publish(
        &self,
        tag: u64,
        queue: &str,
        to: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), amiquip::Error>;

    /// The stream's own channel (versions 1 and 2), to acknowledge on.
    fn channel(&self) -> Option<&Channel> {
        None
    }

    /// Our stream id (version 3).
    fn own_id(&self) -> Option<&str> {
        None
    }

    /// The stream frames go to by default: the peer's, once known, else
    /// our own (version 3).
    fn default_to(&self) -> &str {
        ""
    }

    /// Learns the peer's stream id (version 3).
    fn set_peer(&mut self, _id: String) {}
}

/// The stream's own channel (versions 1 and 2).
pub(super) struct OwnChannel<'a>(pub(super) &'a Channel);

impl Transport for OwnChannel<'_> {
    fn publish(
        &self,
        _tag: u64,
        queue: &str,
        _to: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        self.0.basic_publish(
            "",
            Publish {
                body,
                routing_key: queue.to_string(),
                mandatory: true,
                immediate: false,
                properties,
            },
        )
    }

    fn channel(&self) -> Option<&Channel> {
        Some(self.0)
    }
}

/// The connection's shared channel (version 3).
pub(super) struct SharedChannel {
    pub(super) mux: Arc<Mux>,
    /// Our stream id.
    pub(super) own: Arc<str>,
    /// The peer's stream id, once the handshake has told it.
    pub(super) peer: Option<String>,
}

impl Transport for SharedChannel {
    fn publish(
        &self,
        tag: u64,
        queue: &str,
        to: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        self.mux
            .publish(&self.own, tag, queue, to, body, properties)
    }

    fn own_id(&self) -> Option<&str> {
        Some(&self.own)
    }

    fn default_to(&self) -> &str {
        self.peer.as_deref().unwrap_or(&self.own)
    }

    fn set_peer(&mut self, id: String) {
        self.peer = Some(id);
    }
}

/// A stream's publishing and its confirms.
pub(super) struct Publisher<T> {
    pub(super) transport: T,
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

impl<T: Transport> Publisher<T> {
    pub(super) fn new(transport: T, confirms: Receiver<Confirm>) -> Publisher<T> {
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
        self.transport.channel()
    }

    /// Publishes a frame to the peer, on `queue`, mandatory.
    pub(super) fn publish(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        let to = self.transport.default_to().to_string();
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
        self.transport
            .publish(self.published + 1, queue, to, body, properties)?;
        self.published += 1;
        Ok(())
    }

    /// Our stream id (version 3).
    pub(super) fn own_id(&self) -> Option<&str> {
        self.transport.own_id()
    }

    /// Learns the peer's stream id (version 3).
    pub(super) fn set_peer(&mut self, id: String) {
        self.transport.set_peer(id);
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
