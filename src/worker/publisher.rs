//! Publishing on a stream's channel, with the count of publisher confirms
//! that `flush`, the gathering of small writes and closing rely on.

use amiquip::{Channel, Confirm, ConfirmSmoother, Publish};
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::io;

/// Publishes on the stream's channel and keeps count of confirms.
pub(super) struct Publisher<'a> {
    pub(super) channel: &'a Channel,
    pub(super) confirms: Receiver<Confirm>,
    pub(super) smoother: ConfirmSmoother,
    pub(super) published: u64,
    pub(super) confirmed: u64,
    pub(super) nacked: bool,
    pub(super) flushes: VecDeque<(u64, Sender<io::Result<()>>)>,
}

impl<'a> Publisher<'a> {
    pub(super) fn new(channel: &'a Channel, confirms: Receiver<Confirm>) -> Publisher<'a> {
        Publisher {
            channel,
            confirms,
            smoother: ConfirmSmoother::new(),
            published: 0,
            confirmed: 0,
            nacked: false,
            flushes: VecDeque::new(),
        }
    }

    pub(super) fn publish(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: amiquip::AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        self.channel.basic_publish(
            "",
            Publish {
                body,
                routing_key: queue.to_string(),
                mandatory: true,
                immediate: false,
                properties,
            },
        )?;
        self.published += 1;
        Ok(())
    }

    /// Takes in one confirm (acks may cover several messages).
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

    pub(super) fn all_confirmed(&self) -> bool {
        self.confirmed >= self.published
    }
}
