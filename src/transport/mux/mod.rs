//! Version 3's transport: one queue, one consumer and one publishing
//! channel per AMQP connection, shared by every version-3 stream on it.
//!
//! Every stream end registers a *stream id* here. Frames to it carry that
//! id in `correlation_id`; the [`demux`] thread, the connection's only
//! consumer of its queue, hands each delivery to the stream it names, and
//! the publishing channel's confirms and returns to the stream that
//! published the message (every frame names its sender's stream id in
//! `app_id`). Nothing is acknowledged: the queue is consumed in no-ack
//! mode and each stream's credit window bounds what the broker and this
//! process hold for it.

mod budget;
mod confirms;
mod demux;
mod gone;
mod routes;
mod untied;

use crate::error::Error;
use crate::lock::lock;
use crate::protocol::handshake::Untied;
use crate::protocol::{check_peer_queue, frame, is_stream_queue_name};
use crate::version::ProtocolVersion;
use amiquip::{AmqpProperties, Channel, Confirm, ConsumerMessage, Publish, Return};
use budget::{ANSWERS_PER_SECOND, AnswerBudgets, FORMER_PEER_ANSWERS_PER_SECOND};
use confirms::ConfirmBook;
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use gone::{FormerPeer, GoneStreams};
use log::debug;
use routes::{AnswerWait, Route, Routes};
pub(crate) use routes::{Held, StreamWake};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use untied::{ToEnd, UntiedAnswers};

/// The sender id of what the connection itself publishes (the answer
/// to a stray frame): no stream ever has it (ids are 32 hex digits).
const NOBODY: &str = "-";

/// The prefix of a connection's queue.
const QUEUE_PREFIX: &str = "amqp-stream.conn.";

/// Whether `queue` is named as a connection's queue is:
/// `amqp-stream.conn.` and a UUID.
fn is_connection_queue_name(queue: &str) -> bool {
    queue
        .strip_prefix(QUEUE_PREFIX)
        .is_some_and(|id| uuid::Uuid::try_parse(id).is_ok())
}

/// One AMQP connection's version-3 transport.
pub(crate) struct Mux {
    queue: String,
    publishing: Mutex<Publishing>,
    /// The publishing channel's body bytes not yet confirmed, as the book
    /// counts them; read without its lock.
    unconfirmed: Arc<AtomicU64>,
    routes: Arc<Routes>,
    /// The stream ids this connection held recently.
    gone: Mutex<GoneStreams>,
    /// Older listeners' answers naming no stream, and who vouches for them.
    untied: Mutex<UntiedAnswers>,
    /// Tells the demultiplexer that a stream claimed an answer naming no
    /// stream (its timer for the claim's end is due sooner).
    untied_claimed: Sender<()>,
}

/// The publishing channel and what it published.
struct Publishing {
    channel: Channel,
    book: ConfirmBook,
}

/// The most body bytes a stream that offered `window` may have handed
/// over and not yet taken: the window's data, and room for the control
/// frames that may come with it.
fn hold_limit(window: u64) -> u64 {
    // Twice the window is what a peer that counts the messages' cost may
    // have in flight with it (see `MESSAGE_COST`); the rest is room for
    // control frames, which weigh a message each.
    window.saturating_mul(3).saturating_add(64 * 1024)
}

/// What a registered stream receives.
pub(crate) struct Registration {
    /// The stream's id.
    pub(crate) id: Arc<str>,
    /// Frames for the stream, in the order the broker delivered them.
    pub(crate) deliveries: Receiver<ConsumerMessage>,
    /// Confirms of the stream's own messages, numbered from 1 in the order
    /// it published them.
    pub(crate) confirms: Receiver<Confirm>,
    /// The stream's messages the broker could not route.
    pub(crate) returns: Receiver<Return>,
    /// What `deliveries` holds: whoever takes a delivery says so with
    /// [`Held::taken`].
    pub(crate) held: Arc<Held>,
}

impl demux::Owner for Mux {
    fn confirmed(&self, confirm: Confirm) -> Vec<(Arc<str>, Confirm)> {
        Mux::confirmed(self, confirm)
    }

    fn answer_stray(&self, delivery: &amiquip::Delivery, budgets: &mut AnswerBudgets) {
        Mux::answer_stray(self, delivery, budgets);
    }

    fn untied_answer_came(&self, answer: Untied<'_>) {
        Mux::untied_answer_came(self, answer);
    }

    fn untied_next_due(&self) -> Option<Instant> {
        Mux::untied_next_due(self)
    }

    fn end_due_untied(&self, now: Instant) {
        Mux::end_due_untied(self, now);
    }
}

impl Mux {
    /// Sets up the transport on two new channels from `open_channel`: the
    /// connection's queue, consumed by a new demultiplexer thread, and the
    /// publishing channel with confirms.
    pub(crate) fn start(
        mut open_channel: impl FnMut() -> Result<Channel, Error>,
    ) -> Result<Arc<Mux>, Error> {
        let queue = format!("{QUEUE_PREFIX}{}", uuid::Uuid::new_v4());
        let named = queue.clone();
        let what = |action: &str| format!("{action} for the connection's stream queue {named:?}");
        let consuming = open_channel()?;
        let channel = open_channel()?;
        let returns = channel
            .listen_for_returns()
            .map_err(|e| Error::broker(what("listening for returns"), e))?;
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| Error::broker(what("listening for confirms"), e))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| Error::broker(what("enabling confirms"), e))?;
        let routes = Arc::new(Routes {
            streams: Mutex::new(HashMap::new()),
            ended: AtomicBool::new(false),
        });
        let (ready_tx, ready) = bounded(1);
        let (untied_claimed, claims) = bounded(1);
        let feeds = demux::Feeds {
            queue: queue.clone(),
            routes: Arc::clone(&routes),
            confirms,
            returns,
            untied_claims: claims,
        };
        let mux = Arc::new(Mux {
            queue,
            unconfirmed: Arc::default(),
            publishing: Mutex::new(Publishing {
                channel,
                book: ConfirmBook::default(),
            }),
            routes,
            gone: Mutex::default(),
            untied: Mutex::default(),
            untied_claimed,
        });
        let book_owner = Arc::downgrade(&mux);
        std::thread::Builder::new()
            .name("amqp-stream-demux".to_string())
            .spawn(move || demux::run(consuming, feeds, book_owner, ready_tx))
            .map_err(|e| Error::InvalidArgument(format!("cannot start a thread: {e}")))?;
        ready.recv().unwrap_or_else(|_| {
            Err(Error::broker(
                what("consuming"),
                amiquip::Error::EventLoopDropped,
            ))
        })?;
        Ok(mux)
    }

    /// A new stream id: 32 hex digits, never the connection's own
    /// sender id.
    pub(crate) fn new_stream_id() -> Arc<str> {
        uuid::Uuid::new_v4().simple().to_string().into()
    }

    /// The publishing channel's body bytes not yet confirmed, as its
    /// confirms' book counts them.
    pub(crate) fn unconfirmed(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.unconfirmed)
    }

    /// The connection's queue, which every stream on it receives on.
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether the connection's consumer still runs.
    pub(crate) fn is_alive(&self) -> bool {
        !self.routes.ended.load(Ordering::SeqCst)
    }

    /// Registers a new stream end under `id` (from
    /// [`new_stream_id`](Self::new_stream_id)), woken by `bell`, which
    /// offers its peer a receive `window`: a peer that sends far beyond it has its frames
    /// dropped and the stream aborted by `abort`, so that it cannot grow
    /// this process's memory while nobody takes the stream's deliveries.
    ///
    /// `awaits_answer`: the stream is a client that will send a version-3
    /// SYN and can fall back to version 2; an older listener's SYN-ACK
    /// that names no stream is handed to it until its own answer comes.
    pub(crate) fn register(
        &self,
        id: Arc<str>,
        bell: Box<dyn StreamWake>,
        window: u64,
        abort: Box<dyn Fn(String) + Send>,
        awaits_answer: bool,
    ) -> Result<Registration, Error> {
        let (deliveries_tx, deliveries) = unbounded();
        let (confirms_tx, confirms) = unbounded();
        let (returns_tx, returns) = unbounded();
        let held = Arc::new(Held::default());
        let mut streams = lock(&self.routes.streams);
        // Checked under the lock the demultiplexer empties the map under.
        if self.routes.ended.load(Ordering::SeqCst) {
            return Err(Error::broker(
                format!("registering a stream on {:?}", self.queue),
                amiquip::Error::EventLoopDropped,
            ));
        }
        streams.insert(
            Arc::clone(&id),
            Route {
                deliveries: deliveries_tx,
                confirms: confirms_tx,
                returns: returns_tx,
                bell,
                held: Arc::clone(&held),
                limit: hold_limit(window),
                abort,
                overran: false,
                answer: if awaits_answer {
                    AnswerWait::Waiting
                } else {
                    AnswerWait::Settled
                },
            },
        );
        Ok(Registration {
            id,
            deliveries,
            confirms,
            returns,
            held,
        })
    }

    /// Forgets a stream end: frames still arriving for it are answered as
    /// a stream's that left recently (see `gone`).
    pub(crate) fn unregister(&self, id: &str) {
        let removed = lock(&self.routes.streams).remove_entry(id);
        if let Some((id, route)) = removed {
            if route.answer == AnswerWait::OwnCameAfterUntied {
                // It fell back on an older listener's answer while its own
                // was on the way: nothing is due for its SYN.
                lock(&self.untied).own_answer_came(&id, Instant::now());
            }
            lock(&self.gone).left(id, Instant::now());
        }
    }

    /// Publishes a frame from stream `from` (its `tag`-th message) to the
    /// stream `to` receiving on `queue`, mandatory: a frame nobody can
    /// receive comes back to `from` as a return, then its confirm. The
    /// frame names `to` in `correlation_id`, `from` in `app_id` and this
    /// connection's queue in `reply_to` (where a reset for a stream that
    /// is gone goes).
    pub(crate) fn publish(
        &self,
        from: &Arc<str>,
        tag: u64,
        queue: &str,
        to: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        // `reply_to` on every frame: a connection that gets a frame for a
        // stream it does not hold (any more) answers it with a reset there.
        let properties = properties
            .with_correlation_id(to.to_string())
            .with_app_id(from.to_string())
            .with_reply_to(self.queue.clone());
        let mut publishing = lock(&self.publishing);
        publishing.channel.basic_publish(
            "",
            Publish {
                body,
                routing_key: queue.to_string(),
                mandatory: true,
                immediate: false,
                properties,
            },
        )?;
        publishing
            .book
            .record(Arc::clone(from), tag, body.len() as u64);
        let unconfirmed = publishing.book.unconfirmed_bytes();
        self.unconfirmed.store(unconfirmed, Ordering::SeqCst);
        Ok(())
    }

    /// Answers a frame for a stream id this connection does not hold with
    /// a reset to the stream that sent it: its peer is gone (closed, or
    /// never there: a client that gave up before the SYN-ACK came), and
    /// with the connection's queue still there nothing else would tell it.
    /// Only frames whose loss costs the sender bytes or liveness are
    /// answered: handshakes, data, FINs and keepalives, never a reset
    /// (no answer to an answer) or a window report (nothing of the
    /// stream's bytes is lost with it).
    ///
    /// Whoever can publish to this connection's queue can send such a
    /// frame and pick its `reply_to`, so only a `reply_to` named like a
    /// version-3 connection's queue (the only sender of frames that name
    /// a stream) is answered, and only within `budgets`: past it the frame
    /// is dropped. A frame for a stream this connection held recently
    /// (see `gone`) is its peer's, and is answered from a budget of its
    /// own, which no flood of frames for made-up ids spends, and at most
    /// once every `gone::ANSWER_GAP` for each such stream, so that no
    /// flood for one of them spends the others' answers.
    fn answer_stray(&self, delivery: &amiquip::Delivery, budgets: &mut AnswerBudgets) {
        let properties = &delivery.properties;
        let Some(stream) = properties.correlation_id() else {
            return;
        };
        // Whatever came for a stream that fell back to version 2 was its
        // own listener's: no older listener's answer is due for it.
        lock(&self.untied).own_answer_came(stream, Instant::now());
        let answered = match properties.type_().as_deref() {
            None => true,
            Some(kind) => matches!(kind, frame::DATA | frame::FIN | frame::KEEPALIVE),
        };
        let (Some(queue), Some(to)) = (properties.reply_to(), properties.app_id()) else {
            return;
        };
        // Our own "peer gone" marker is never answered (its type is not
        // one of those), so frames between two streams of this very
        // connection are answered like any others.
        if !answered || to.len() > 128 {
            return;
        }
        if !is_connection_queue_name(queue) || check_peer_queue(queue).is_err() {
            debug!(
                "{:?}: a stray frame's reply_to {queue:?} is no connection's queue: not answered",
                self.queue
            );
            return;
        }
        let now = Instant::now();
        let (budget, per_second) = match lock(&self.gone).answer(stream, now) {
            FormerPeer::Unknown => (&mut budgets.strangers, ANSWERS_PER_SECOND),
            FormerPeer::Answer => (&mut budgets.former_peers, FORMER_PEER_ANSWERS_PER_SECOND),
            FormerPeer::AnsweredJustNow => {
                debug!(
                    "{:?}: a frame for stream {stream:?}, gone and answered just now: \
                     not answered again",
                    self.queue
                );
                return;
            }
        };
        if !budget.take(now) {
            debug!(
                "{:?}: more than {per_second} a second: a stray frame from {queue:?} \
                 not answered",
                self.queue
            );
            return;
        }
        let from: Arc<str> = Arc::from(NOBODY);
        if let Err(err) = self.publish(
            &from,
            0,
            queue,
            to,
            b"no such stream",
            frame::reset_properties(),
        ) {
            debug!("{:?}: could not answer a stray frame: {err}", self.queue);
        }
    }

    /// An answer naming no stream came (see `untied`): it is claimed by a
    /// stream of this connection that expects it, if one does, and its
    /// stream ended once the claim is due ([`end_due_untied`](Self::end_due_untied));
    /// otherwise only if a stream vouches for it later
    /// ([`untied_answer_believed`](Self::untied_answer_believed)).
    fn untied_answer_came(&self, answer: Untied<'_>) {
        let to_end = ToEnd {
            queue: answer.server_queue.to_string(),
            version: answer.version,
        };
        if !lock(&self.untied).arrived(to_end.clone(), Instant::now()) {
            debug!(
                "{:?}: a version-{} answer naming {:?} that no stream of this connection \
                 vouches for (yet): its stream not ended",
                self.queue, to_end.version, to_end.queue
            );
        }
    }

    /// The version-3 client `stream` took an answer naming no stream, which
    /// named `queue`, as the refusal of its SYN and asks again as version
    /// 2: the answer it took, or the next one for its own SYN, is ended
    /// unless the stream's own version-3 answer comes within
    /// `untied::GRACE`.
    pub(crate) fn untied_answer_believed(&self, stream: &Arc<str>, queue: &str) {
        if lock(&self.untied).believed(stream, queue, Instant::now()) {
            debug!(
                "{:?}: stream {stream} took the answer naming {queue:?} (or one after it) \
                 as its refusal: claimed",
                self.queue
            );
            // The demultiplexer's timer for it.
            let _ = self.untied_claimed.try_send(());
        } else {
            debug!(
                "{:?}: stream {stream} took the answer naming {queue:?}, claimed by \
                 another: it expects one more",
                self.queue
            );
        }
    }

    /// When the next claimed answer naming no stream is due.
    fn untied_next_due(&self) -> Option<Instant> {
        lock(&self.untied).next_due()
    }

    /// Ends the streams of the claimed answers naming no stream that are
    /// due at `now`.
    fn end_due_untied(&self, now: Instant) {
        let due = lock(&self.untied).due(now);
        for to_end in &due {
            debug!(
                "{:?}: ending the older listener's stream on {:?}",
                self.queue, to_end.queue
            );
            self.end_untied_stream(to_end);
        }
    }

    /// Ends the stream a listener that knows nothing of version 3 set up
    /// for one of our version-3 SYNs (its SYN-ACK named the queue and no
    /// stream): no stream of ours can take it (its frames would name none
    /// either), so it ends at once rather than wait for ever. A version-1
    /// stream gets a FIN (an empty body), as from a client that connected
    /// and closed without writing; a version-2 one a reset, so that what
    /// its end writes fails rather than vanish (its frames would name no
    /// stream here).
    ///
    /// Anyone who can publish to this connection's queue can send such an
    /// answer and pick the queue it names, and an empty body is also a
    /// version-1 SYN: sent to a listener's queue it would open a stream
    /// there in this connection's name. So only a queue named like a
    /// version-1 or version-2 stream's is ended
    /// (`protocol::is_stream_queue_name`: never a listener's or a
    /// connection's queue), and only one a stream of ours vouched for (see
    /// `untied`). A listener whose answer comes after its client gave up
    /// keeps its stream as it would for a version-1 client that went away.
    fn end_untied_stream(&self, to_end: &ToEnd) {
        let ToEnd { queue, version } = to_end;
        if !is_stream_queue_name(queue) {
            debug!(
                "{:?}: a version-{version} answer naming {queue:?}, which is no \
                 version-1 or version-2 stream's queue: not ended",
                self.queue
            );
            return;
        }
        let (body, properties): (&[u8], _) = match version {
            ProtocolVersion::V1 => (b"", AmqpProperties::default()),
            _ => (
                b"the client went on without this stream",
                frame::reset_properties(),
            ),
        };
        let from: Arc<str> = Arc::from(NOBODY);
        if let Err(err) = self.publish(&from, 0, queue, "", body, properties) {
            debug!(
                "{:?}: could not end a version-{version} listener's stream on {queue:?}: {err}",
                self.queue
            );
        }
    }

    /// The stream confirms a confirm of the publishing channel stands for.
    fn confirmed(&self, confirm: Confirm) -> Vec<(Arc<str>, Confirm)> {
        let mut publishing = lock(&self.publishing);
        let confirmed = publishing.book.confirm(confirm);
        let unconfirmed = publishing.book.unconfirmed_bytes();
        self.unconfirmed.store(unconfirmed, Ordering::SeqCst);
        confirmed
    }
}
