//! The receive side of a stream: the deliveries of its consumer, taken by
//! one thread at a time.
//!
//! Usually the reading thread takes them, straight from amiquip's consumer
//! receiver (no thread hop on the receive path). But version-2 control
//! frames (window updates, keepalives, resets) share the queue with the
//! data and must be handled while nobody reads: a writer waiting for
//! credit, and the worker now and then, take deliveries too. To keep the
//! data in order, a thread must hold the inbox's one *token* to receive;
//! what a non-reader receives for the reader waits in `pending`, which the
//! reader empties before it receives anything new. A reader that wants
//! the token asks for it back.

use super::commands::Control;
use crate::lock::lock;
use crate::protocol::frame::{self, Frame};
use crate::session::shared::{Failure, Shared};
use crate::transport::mux::Held;
use crate::version::ProtocolVersion;
use amiquip::{ConsumerMessage, Delivery};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the reader gets from the inbox, in stream order.
pub(crate) enum Received {
    /// A frame for the reader. `delivery` is for the reader to
    /// acknowledge; `None` when it was acknowledged already.
    Frame {
        frame: Frame,
        body: Vec<u8>,
        delivery: Option<Delivery>,
    },
    /// The consumer ended, with amiquip's account of why.
    Ended(ConsumerMessage),
}

/// The deliveries of one stream's consumer and who may take them.
pub(crate) struct Inbox {
    version: ProtocolVersion,
    deliveries: Receiver<ConsumerMessage>,
    pending: Mutex<VecDeque<Received>>,
    /// Holds the one token while no thread is receiving.
    token: (Sender<()>, Receiver<()>),
    /// A reader waiting for the token asks for it here.
    want: (Sender<()>, Receiver<()>),
    /// A reader is waiting for the token: others give it back and leave
    /// it alone (the reader has priority).
    reader_waiting: AtomicBool,
    shared: Arc<Shared>,
    control: Sender<Control>,
    /// What marks our own "peer gone" marker as ours (see
    /// [`frame::classify`]): known to nobody else.
    marker: String,
    /// Version 2: the receive window we offered the peer.
    window: Option<u64>,
    /// Version 2: the data bytes received, in all.
    received: AtomicU64,
    /// Version 2: the bytes consumed that the reader has reported.
    reported: AtomicU64,
    /// Version 2: the peer's FIN has arrived; nothing numbered may follow.
    fin_seen: AtomicBool,
    /// Version 3: the body bytes handed to `deliveries` and not yet taken,
    /// which taking a delivery lowers (see [`Mux`](crate::transport::mux::Mux)).
    held: Option<Arc<Held>>,
}

impl Inbox {
    /// The inbox of a stream that speaks `version`, which offered the peer
    /// a receive `window` (version 2) and marks its own "peer gone"
    /// marker with `marker`; `held` counts the bytes waiting in
    /// `deliveries` (version 3).
    pub(crate) fn new(
        version: ProtocolVersion,
        deliveries: Receiver<ConsumerMessage>,
        shared: Arc<Shared>,
        control: Sender<Control>,
        marker: String,
        window: u64,
        held: Option<Arc<Held>>,
    ) -> Inbox {
        let token = bounded(1);
        token.0.send(()).expect("the token fits");
        Inbox {
            version,
            deliveries,
            pending: Mutex::new(VecDeque::new()),
            token,
            want: bounded(1),
            reader_waiting: AtomicBool::new(false),
            shared,
            control,
            marker,
            window: (version >= ProtocolVersion::V2).then_some(window),
            received: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            fin_seen: AtomicBool::new(false),
            held,
        }
    }

    /// The reader reported to the peer that it consumed `total` bytes in
    /// all: the peer may now have up to a window more in flight.
    pub(crate) fn reported(&self, total: u64) {
        self.reported.fetch_max(total, Ordering::SeqCst);
    }

    /// Counts `n` data bytes received; `Err` says how the peer overran the
    /// window we offered (a sender may have at most that many bytes not
    /// yet reported consumed).
    fn count_received(&self, n: usize) -> Result<(), String> {
        let Some(window) = self.window else {
            return Ok(());
        };
        let received = self.received.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        let reported = self.reported.load(Ordering::SeqCst);
        if received > reported.saturating_add(window) {
            Err(format!(
                "the peer ignored flow control: it sent {received} bytes with only {reported} \
                 consumed and a window of {window}"
            ))
        } else {
            Ok(())
        }
    }

    /// Whether the peer's FIN has arrived (version 2 and later), taken by
    /// the reader or not: the peer sends nothing more.
    pub(crate) fn fin_seen(&self) -> bool {
        self.fin_seen.load(Ordering::SeqCst)
    }

    /// The protocol version the stream speaks.
    pub(crate) fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The consumer's deliveries; receive only while holding the token.
    pub(crate) fn deliveries(&self) -> &Receiver<ConsumerMessage> {
        &self.deliveries
    }

    /// Ready when the token is free: select on it, then call [`Inbox::taken`].
    pub(crate) fn token(&self) -> &Receiver<()> {
        &self.token.1
    }

    /// Ready when a reader asks the token holder to give it back.
    pub(crate) fn wanted(&self) -> &Receiver<()> {
        &self.want.1
    }

    /// The reader says it waits for the token (`true`) or has it or gave
    /// up (`false`); waiting, it asks the holder to give the token back.
    pub(crate) fn set_reader_waiting(&self, waiting: bool) {
        self.reader_waiting.store(waiting, Ordering::SeqCst);
        if waiting {
            let _ = self.want.0.try_send(());
        }
    }

    /// Whether a reader waits for the token.
    pub(crate) fn reader_waiting(&self) -> bool {
        self.reader_waiting.load(Ordering::SeqCst)
    }

    /// The token, if it is free now.
    pub(crate) fn try_take(&self) -> Option<Pump<'_>> {
        self.token.1.try_recv().ok().map(|()| Pump { inbox: self })
    }

    /// The token, just received from [`Inbox::token`].
    pub(crate) fn taken(&self) -> Pump<'_> {
        Pump { inbox: self }
    }

    /// Handles a control frame at once and passes on what is for the
    /// reader. With `ack_now`, the reader's frames are acknowledged here
    /// (a thread other than the reader stashes them); otherwise the reader
    /// acknowledges them as it goes.
    pub(crate) fn sort(&self, message: ConsumerMessage, ack_now: bool) -> Option<Received> {
        let mut delivery = match message {
            ConsumerMessage::Delivery(delivery) => delivery,
            other => return Some(Received::Ended(other)),
        };
        if let Some(held) = &self.held {
            held.taken(delivery.body.len() as u64);
        }
        let mut frame = frame::classify(
            self.version,
            &delivery.body,
            &delivery.properties,
            &self.marker,
        );
        if self.window.is_some() && matches!(frame, Frame::Data(_) | Frame::Fin(_)) {
            if self.fin_seen.load(Ordering::SeqCst) {
                // The reader stops at the FIN: without this, whatever
                // follows it would be dropped without a word.
                delivery.body = Vec::new();
                frame = Frame::Invalid("the peer sent a frame after its FIN".to_string());
            } else if let Frame::Fin(_) = frame {
                self.fin_seen.store(true, Ordering::SeqCst);
            } else if let Err(why) = self.count_received(delivery.body.len()) {
                // Its bytes are not kept: memory stays bounded by the window.
                delivery.body = Vec::new();
                frame = Frame::Invalid(why);
            }
        }
        match &frame {
            Frame::Window(consumed) => {
                if let Err(why) = self.shared.grant(*consumed) {
                    self.abort(why);
                }
            }
            Frame::Reset(why) => {
                let why = if why.is_empty() {
                    "the peer reset the stream".to_string()
                } else {
                    format!("the peer reset the stream: {why}")
                };
                self.shared.fail(Failure::PeerReset(why));
                let _ = self.control.send(Control::PeerReset);
                self.shared.ring();
            }
            Frame::Invalid(why) => self.abort(why.clone()),
            _ => {}
        }
        if !frame.is_for_reader() {
            self.ack(delivery);
            return None;
        }
        let body = std::mem::take(&mut delivery.body);
        let delivery = if ack_now {
            self.ack(delivery);
            None
        } else {
            Some(delivery)
        };
        Some(Received::Frame {
            frame,
            body,
            delivery,
        })
    }

    /// Fails the stream for a protocol violation and has the worker reset it.
    pub(crate) fn abort(&self, why: String) {
        self.shared.fail(Failure::Protocol(why.clone()));
        let _ = self.control.send(Control::Abort(why));
        self.shared.ring();
    }

    fn ack(&self, delivery: Delivery) {
        // Version 3 consumes without acknowledgements.
        if self.version >= ProtocolVersion::V3 {
            return;
        }
        let _ = self.control.send(Control::Ack(Box::new(delivery)));
    }
}

/// The right to receive from an inbox; given back when dropped, which
/// also wakes a writer waiting for credit to take it in turn.
pub(crate) struct Pump<'a> {
    inbox: &'a Inbox,
}

impl Pump<'_> {
    /// The oldest message a non-reader received for the reader.
    pub(crate) fn pop(&self) -> Option<Received> {
        lock(&self.inbox.pending).pop_front()
    }

    /// Keeps a message for the reader, behind the others.
    pub(crate) fn stash(&self, received: Received) {
        lock(&self.inbox.pending).push_back(received);
    }

    /// Takes in everything that has arrived, without waiting: control
    /// frames are handled, the rest is acknowledged and kept for the
    /// reader. Returns whether the stream ended meanwhile.
    pub(crate) fn drain(&self) -> bool {
        while let Ok(message) = self.inbox.deliveries.try_recv() {
            if let Some(received) = self.inbox.sort(message, true) {
                let ended = matches!(received, Received::Ended(_));
                self.stash(received);
                if ended {
                    return true;
                }
            }
        }
        false
    }

    /// Whether data the reader has not taken is waiting here.
    pub(crate) fn holds_data(&self) -> bool {
        lock(&self.inbox.pending).iter().any(|received| {
            matches!(
                received,
                Received::Frame {
                    frame: Frame::Data(_),
                    ..
                }
            )
        })
    }
}

impl Drop for Pump<'_> {
    fn drop(&mut self) {
        let _ = self.inbox.token.0.try_send(());
        // A writer waiting for credit may take its turn now.
        self.inbox.shared.wake_writer();
    }
}
