//! Publisher confirms on a channel that many streams publish on: the
//! broker numbers every message of the channel; each stream counts its
//! own. The book maps one numbering onto the other.

use amiquip::{Confirm, ConfirmPayload};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Which stream published a message, and its number among that stream's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    stream: Arc<str>,
    tag: u64,
    /// The message's body size.
    bytes: u64,
}

/// The channel's messages not yet confirmed, by the channel's delivery tag.
#[derive(Debug, Default)]
pub(crate) struct ConfirmBook {
    /// The channel's tag of the last message published.
    published: u64,
    pending: BTreeMap<u64, Entry>,
    /// The body bytes of the messages not yet confirmed.
    unconfirmed_bytes: u64,
}

impl ConfirmBook {
    /// Records the next message on the channel: the `tag`-th of `stream`,
    /// with a body of `bytes`.
    pub(crate) fn record(&mut self, stream: Arc<str>, tag: u64, bytes: u64) {
        self.published += 1;
        self.unconfirmed_bytes += bytes;
        self.pending
            .insert(self.published, Entry { stream, tag, bytes });
    }

    /// The body bytes published and not yet confirmed (acked or nacked).
    pub(crate) fn unconfirmed_bytes(&self) -> u64 {
        self.unconfirmed_bytes
    }

    /// The stream confirms one channel confirm stands for, each with the
    /// stream's own tag, in the order the stream published them.
    pub(crate) fn confirm(&mut self, confirm: Confirm) -> Vec<(Arc<str>, Confirm)> {
        let (payload, ack) = match confirm {
            Confirm::Ack(payload) => (payload, true),
            Confirm::Nack(payload) => (payload, false),
        };
        let covered: Vec<u64> = if payload.multiple {
            self.pending
                .range(..=payload.delivery_tag)
                .map(|(tag, _)| *tag)
                .collect()
        } else {
            vec![payload.delivery_tag]
        };
        covered
            .into_iter()
            .filter_map(|tag| self.pending.remove(&tag))
            .map(|entry| {
                self.unconfirmed_bytes -= entry.bytes;
                let payload = ConfirmPayload {
                    delivery_tag: entry.tag,
                    multiple: false,
                };
                let confirm = if ack {
                    Confirm::Ack(payload)
                } else {
                    Confirm::Nack(payload)
                };
                (entry.stream, confirm)
            })
            .collect()
    }

    /// Messages published and not yet confirmed.
    #[cfg(test)]
    pub(crate) fn unconfirmed(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(delivery_tag: u64, multiple: bool) -> Confirm {
        Confirm::Ack(ConfirmPayload {
            delivery_tag,
            multiple,
        })
    }

    fn tags(confirms: &[(Arc<str>, Confirm)]) -> Vec<(String, u64, bool)> {
        confirms
            .iter()
            .map(|(stream, confirm)| match confirm {
                Confirm::Ack(p) => (stream.to_string(), p.delivery_tag, true),
                Confirm::Nack(p) => (stream.to_string(), p.delivery_tag, false),
            })
            .collect()
    }

    #[test]
    fn maps_the_channels_tags_to_each_streams_own() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut book = ConfirmBook::default();
        book.record(a.clone(), 1, 10); // channel tag 1
        book.record(b.clone(), 1, 10); // 2
        book.record(a.clone(), 2, 10); // 3
        book.record(b.clone(), 2, 10); // 4
        assert_eq!(tags(&book.confirm(ack(2, false))), [("b".into(), 1, true)]);
        assert_eq!(
            tags(&book.confirm(ack(3, true))),
            [("a".into(), 1, true), ("a".into(), 2, true)]
        );
        assert_eq!(book.unconfirmed(), 1);
        let nack = Confirm::Nack(ConfirmPayload {
            delivery_tag: 4,
            multiple: true,
        });
        assert_eq!(tags(&book.confirm(nack)), [("b".into(), 2, false)]);
        assert_eq!(book.unconfirmed(), 0);
    }

    #[test]
    fn a_confirm_for_nothing_pending_is_nothing() {
        let mut book = ConfirmBook::default();
        assert!(book.confirm(ack(7, true)).is_empty());
        book.record("a".into(), 1, 10);
        assert!(book.confirm(ack(5, false)).is_empty());
        assert_eq!(book.unconfirmed(), 1);
    }

    #[test]
    fn counts_the_bytes_awaiting_a_confirm() {
        let a: Arc<str> = "a".into();
        let mut book = ConfirmBook::default();
        book.record(a.clone(), 1, 100);
        book.record(a.clone(), 2, 20);
        book.record(a.clone(), 3, 3);
        assert_eq!(book.unconfirmed_bytes(), 123);
        book.confirm(ack(1, false));
        assert_eq!(book.unconfirmed_bytes(), 23);
        book.confirm(Confirm::Nack(ConfirmPayload {
            delivery_tag: 3,
            multiple: true,
        }));
        assert_eq!(book.unconfirmed_bytes(), 0);
    }
}
