//! Where the demultiplexer hands what arrives: each registered stream's
//! feeds, how to wake what runs it, and what its deliveries hold.

use amiquip::{Confirm, ConsumerMessage, Return};
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where the demultiplexer delivers, by stream id.
pub(crate) struct Routes {
    pub(super) streams: Mutex<HashMap<Arc<str>, Route>>,
    /// The connection's consumer has ended: nothing registers any more.
    pub(super) ended: AtomicBool,
}

/// How the demultiplexer wakes whatever runs a stream (version 3's
/// engine): it never runs a stream's work in its own thread.
pub(crate) trait StreamWake: Send {
    /// Something for the stream is waiting: a frame, its end, a failure.
    fn ring(&self);

    /// A broker's confirm (or, if `refused`, its nack) of one of the
    /// stream's messages reached the stream.
    fn confirmed(&self, refused: bool);
}

/// One stream's ends of what the demultiplexer feeds.
pub(super) struct Route {
    pub(super) deliveries: Sender<ConsumerMessage>,
    pub(super) confirms: Sender<Confirm>,
    pub(super) returns: Sender<Return>,
    /// Rung after a confirm or return for the stream.
    pub(super) bell: Box<dyn StreamWake>,
    /// What was handed to `deliveries` and not yet taken by the stream.
    pub(super) held: Arc<Held>,
    /// The most `held` may weigh: beyond it the peer ignores the window.
    pub(super) limit: u64,
    /// Fails the stream for a protocol violation (and resets its peer).
    pub(super) abort: Box<dyn Fn(String) + Send>,
    /// The stream was aborted for holding too much: its frames are dropped.
    pub(super) overran: bool,
    /// Where a client that asks again as version 2 when its version-3 SYN
    /// is refused stands with its answer.
    pub(super) answer: AnswerWait,
}

/// Where a stream stands with the answer to its version-3 SYN, as far as
/// answers naming no stream go (see `demux::hand_untied_answer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AnswerWait {
    /// A client that can fall back, waiting: it is handed an answer that
    /// names no stream.
    Waiting,
    /// It was handed an answer naming no stream, and nothing of its own.
    TookUntied,
    /// Its own frames came after it was handed an answer naming no
    /// stream: whatever it believed, no older listener's answer is due
    /// for its SYN, and it says so when it leaves (`Mux::unregister`).
    OwnCameAfterUntied,
    /// Nothing to do with answers naming no stream: a listener's stream,
    /// a pinned client, or one whose own answer came first.
    Settled,
}

/// What a stream's deliveries hold that it has not taken yet, and what
/// that weighs against its window: the bodies' bytes and, once the stream
/// is set up, each message's cost
/// ([`MESSAGE_COST`](crate::session::credit::MESSAGE_COST)).
#[derive(Debug, Default)]
pub(crate) struct Held {
    bytes: AtomicU64,
    messages: AtomicU64,
    /// The cost of one message: 0 until the stream is set up.
    message_cost: AtomicU64,
}

impl Held {
    /// A delivery of `size` body bytes was handed over; returns what
    /// everything held weighs now.
    pub(super) fn handed(&self, size: u64) -> u64 {
        let bytes = self.bytes.fetch_add(size, Ordering::SeqCst) + size;
        let messages = self.messages.fetch_add(1, Ordering::SeqCst) + 1;
        bytes.saturating_add(messages.saturating_mul(self.message_cost.load(Ordering::SeqCst)))
    }

    /// A delivery of `size` body bytes was taken (or dropped).
    pub(crate) fn taken(&self, size: u64) {
        self.bytes.fetch_sub(size, Ordering::SeqCst);
        self.messages.fetch_sub(1, Ordering::SeqCst);
    }

    /// From now on each message weighs `cost` more.
    pub(crate) fn count_messages_at(&self, cost: u64) {
        self.message_cost.store(cost, Ordering::SeqCst);
    }
}
