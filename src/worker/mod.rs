//! The worker thread of one stream: it owns the stream's AMQP channel,
//! runs the handshake, publishes what the user writes, acknowledges what
//! the user reads, watches for returned messages and checks that the peer
//! is still there.
//!
//! The user's `read` takes deliveries straight from amiquip's consumer
//! receiver (no extra thread hop on the receive path); everything else
//! that touches the channel happens here.
//!
//! This module sets a worker up (a thread of its own, or a prepared one
//! from a [`SparePool`]); the rooms:
//!
//! * [`handshake`] runs the SYN and SYN-ACK;
//! * [`connected`] is the worker once the stream is up: its I/O, and the
//!   one driver ([`poll`](connected::Worker::poll) and
//!   [`tick`](connected::Worker::tick)) that a stream's own thread
//!   (versions 1 and 2) or its connection's [`engine`] (version 3) runs;
//! * [`state`] is the stream's state machine: every decision, no I/O;
//! * [`publisher`] publishes and counts confirms;
//! * [`v1`] is what only version 1 does (checking the peer's queue, the
//!   FIN held back until every confirm, no reset);
//! * [`v3`] sets up a version-3 stream on its connection's shared
//!   transport.

mod connected;
pub(crate) mod engine;
mod handshake;
mod publisher;
mod shared_transport;
mod state;
mod v1;
mod v3;

use crate::connection::BrokerConnection;
use crate::credit::{SendWindow, message_limit};
use crate::error::Error;
use crate::inbox::Inbox;
use crate::options::StreamOptions;
use crate::protocol::frame;
use crate::protocol::handshake::Offer;
use crate::protocol::{new_queue_name, queue_declare_options};
use crate::shared::Shared;
use crate::spare::{SpareLife, SparePool, SpareSlot};
use crate::version::ProtocolVersion;
use amiquip::{Channel, Confirm, ConsumerMessage, ConsumerOptions, Delivery, Return};
use connected::Worker;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, after, bounded, select, unbounded};
use handshake::{Inbound, await_handshake, send_handshake};
use log::debug;
use publisher::{OwnChannel, Publisher, Transport};
use state::StreamState;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use v1::Probe;

/// What the user's side sends the worker, in stream order.
pub(crate) enum Outbound {
    /// Publish the FIN; answer once it is published.
    Fin(Sender<io::Result<()>>),
    /// Answer once everything before this is confirmed by the broker.
    Flush(Sender<io::Result<()>>),
    /// Publish what small writes are waiting (after `set_nodelay(true)`).
    Push,
    /// The last handle is gone: finish and clean up.
    Close,
    /// The last handle is gone with data unread: reset the stream (version
    /// 2; version 1 closes) and clean up.
    Reset(String),
}

/// What the receiving side tells the worker, out of stream order.
pub(crate) enum Control {
    /// Acknowledge this delivery and every one before it.
    Ack(Box<Delivery>),
    /// The reader has taken the peer's FIN.
    FinReceived,
    /// The reader has taken the peer-gone marker.
    PeerGoneSeen,
    /// Report to the peer that our reader has consumed this many bytes.
    Window(u64),
    /// The peer reset the stream.
    PeerReset,
    /// The peer broke the protocol: reset the stream, saying why.
    Abort(String),
}

/// Which end of the handshake the worker plays.
pub(crate) enum Role {
    /// Connect to a listener's control queue.
    Client {
        /// The listener's queue.
        listener_queue: String,
        /// When to give up waiting for the answer.
        deadline: Option<Instant>,
        /// The timeout, for the error message.
        timeout: Option<Duration>,
        /// Send a version-3 SYN (the listener is known to take one).
        v3: bool,
        /// The connection queue the listener last answered a version-3
        /// SYN from: while it is there, an answer that names no stream is
        /// not believed (see `handshake::await_handshake`).
        listener_connection: Option<String>,
    },
    /// Answer a connection request.
    Server {
        /// The client's queue, from the request's `reply_to`.
        client_queue: String,
        /// The version the listener chose for it.
        version: ProtocolVersion,
        /// The client's version-2 offer, if it made one.
        offer: Option<Offer>,
        /// The client's stream id (version 3).
        client_stream: Option<String>,
        /// The per-message cost the client counts (version 3).
        client_message_cost: Option<u64>,
    },
}

impl Role {
    /// When a client gives up, as its caller waits for the handshake
    /// (none for a listener's end: its handshake timeout is counted in
    /// [`await_handshake`]).
    fn give_up(&self) -> Option<GiveUp> {
        match self {
            Role::Client {
                listener_queue,
                deadline: Some(at),
                timeout,
                ..
            } => Some(GiveUp {
                at: *at,
                what: format!("connecting to {listener_queue:?}"),
                after: timeout.unwrap_or_default(),
            }),
            _ => None,
        }
    }

    /// Whether the stream speaks version 3 (no queue of its own).
    fn is_v3(&self) -> bool {
        match self {
            Role::Client { v3, .. } => *v3,
            Role::Server { version, .. } => *version >= ProtocolVersion::V3,
        }
    }
}

/// When and how a client waiting for its handshake gives up.
struct GiveUp {
    at: Instant,
    /// What timed out, for the error.
    what: String,
    /// The timeout, for the error.
    after: Duration,
}

impl GiveUp {
    fn error(&self) -> Error {
        Error::TimedOut {
            what: self.what.clone(),
            after: self.after,
        }
    }
}

/// A stream whose handshake succeeded: the ends the user's handles hold.
pub(crate) struct Established {
    pub(crate) local_queue: String,
    pub(crate) peer_queue: String,
    pub(crate) inbox: Arc<Inbox>,
    /// The largest message to send: at most half the peer's window.
    pub(crate) message_limit: usize,
    pub(crate) outbound: Sender<Outbound>,
    pub(crate) control: Sender<Control>,
    /// Disconnects when the worker thread ends.
    pub(crate) alive: Receiver<()>,
    pub(crate) shared: Arc<Shared>,
    /// The listener said it takes version-3 requests.
    pub(crate) upgrade: bool,
    /// The queue of the peer's connection (version 3).
    pub(crate) peer_connection: Option<String>,
}

/// Sets up a stream and waits for its handshake: a version-3 one in the
/// caller's thread (it has no thread of its own to start), else on a
/// prepared worker from `spares` when one is ready, else on a new thread.
pub(crate) fn start(
    connection: &Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    spares: Option<&SparePool>,
) -> Result<Established, Error> {
    set_up(connection, role, options, spares, Handshaker::Caller)?.wait()
}

/// Starts setting up a stream without waiting for its handshake; the
/// [`Pending`] it returns says when it is done.
pub(crate) fn begin(
    connection: &Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    spares: Option<&SparePool>,
) -> Result<Pending, Error> {
    set_up(connection, role, options, spares, Handshaker::Thread)
}

/// Who runs a version-3 stream's handshake.
enum Handshaker {
    /// The caller, who waits for it anyway: no thread to start.
    Caller,
    /// A thread of its own, so the caller can wait for many at once.
    Thread,
}

fn set_up(
    connection: &Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    spares: Option<&SparePool>,
    handshaker: Handshaker,
) -> Result<Pending, Error> {
    let (setup_tx, setup_rx) = bounded(1);
    let (outbound_tx, outbound_rx) = bounded(4);
    let (control_tx, control_rx) = unbounded();
    let (alive_tx, alive_rx) = bounded::<()>(0);
    let write_limit = options.get_write_queue() * options.get_max_message_size();
    let shared = Arc::new(Shared::new(write_limit));
    shared.set_nodelay(options.get_nodelay());
    let give_up = role.give_up();
    let assignment = Box::new(Assignment {
        role,
        options,
        setup: setup_tx,
        ends: WorkerEnds {
            outbound: outbound_rx,
            control: control_rx,
            control_sender: control_tx.clone(),
            shared: Arc::clone(&shared),
            _alive: alive_tx,
        },
    });
    if assignment.role.is_v3() {
        let connection = Arc::clone(connection);
        match handshaker {
            Handshaker::Caller => v3::run(connection, assignment),
            Handshaker::Thread => spawn_worker(move || v3::run(connection, assignment))?,
        }
    } else {
        let assignment = match spares {
            Some(spares) => spares.hand_over(assignment),
            None => Err(assignment),
        };
        if let Err(assignment) = assignment {
            let connection = Arc::clone(connection);
            let options = assignment.options.clone();
            spawn_worker(move || run(None, connection, options, Start::Now(assignment)))?;
        }
    }
    Ok(Pending {
        give_up,
        setup: setup_rx,
        outbound: outbound_tx,
        control: control_tx,
        alive: alive_rx,
        shared,
    })
}

/// Starts a thread that prepares a stream ahead of need and offers itself
/// on `ready`; `slot` goes with the offer and is dropped when the thread
/// is taken or gives up; `life` is dropped when it is taken, or when it
/// has closed its channel after giving up.
pub(crate) fn spawn_spare(
    connection: Arc<BrokerConnection>,
    options: StreamOptions,
    ready: Sender<Spare>,
    slot: SpareSlot,
    life: SpareLife,
) -> Result<(), Error> {
    spawn_worker(move || {
        run(
            Some(life),
            connection,
            options,
            Start::Spare { ready, slot },
        )
    })
}

fn spawn_worker(work: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("amqp-stream".to_string())
        .spawn(work)
        .map(drop)
        .map_err(|e| Error::InvalidArgument(format!("cannot start a stream thread: {e}")))
}

/// A stream being set up: the user's ends, and where the worker reports
/// the handshake's outcome.
pub(crate) struct Pending {
    /// A client's deadline: the worker may be stuck in a broker call
    /// (opening its channel, say, on a link that stalled), so
    /// [`wait`](Self::wait) stops waiting for it then.
    give_up: Option<GiveUp>,
    setup: Receiver<SetupOutcome>,
    outbound: Sender<Outbound>,
    control: Sender<Control>,
    alive: Receiver<()>,
    shared: Arc<Shared>,
}

/// What a worker reports when its handshake is over.
pub(crate) type SetupOutcome = Result<Handshake, Error>;

impl Pending {
    /// Receives the handshake's outcome, for a `Select` over many.
    pub(crate) fn outcome(&self) -> &Receiver<SetupOutcome> {
        &self.setup
    }

    /// Waits for the handshake, until a client's deadline. A worker
    /// given up on finds nobody waiting (see
    /// [`Assignment::abandoned`]) and cleans up.
    pub(crate) fn wait(self) -> Result<Established, Error> {
        let outcome = match &self.give_up {
            None => self.setup.recv(),
            Some(give_up) => match self.setup.recv_deadline(give_up.at) {
                Ok(outcome) => Ok(outcome),
                Err(RecvTimeoutError::Disconnected) => Err(crossbeam_channel::RecvError),
                Err(RecvTimeoutError::Timeout) => return Err(give_up.error()),
            },
        };
        self.finish(outcome)
    }

    /// Turns the outcome received from [`outcome`](Self::outcome) into the
    /// stream's ends. A worker that ended without a word is a lost
    /// connection.
    pub(crate) fn finish(
        self,
        outcome: Result<SetupOutcome, crossbeam_channel::RecvError>,
    ) -> Result<Established, Error> {
        let handshake = outcome.unwrap_or_else(|_| Err(worker_gone()))?;
        Ok(Established {
            local_queue: handshake.local_queue,
            peer_queue: handshake.peer_queue,
            inbox: handshake.inbox,
            message_limit: handshake.message_limit,
            upgrade: handshake.upgrade,
            peer_connection: handshake.peer_connection,
            outbound: self.outbound,
            control: self.control,
            alive: self.alive,
            shared: self.shared,
        })
    }
}

fn worker_gone() -> Error {
    Error::broker("setting up a stream", amiquip::Error::EventLoopDropped)
}

/// Everything a worker thread needs to set up one particular stream.
pub(crate) struct Assignment {
    role: Role,
    options: StreamOptions,
    setup: Sender<SetupOutcome>,
    ends: WorkerEnds,
}

impl Assignment {
    /// Whether the caller gave up waiting for this stream (its
    /// [`Pending`] is gone): nothing more is to be sent for it.
    fn abandoned(&self) -> bool {
        matches!(
            self.ends.outbound.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }
}

/// A prepared worker waiting for its stream.
pub(crate) struct Spare {
    /// Takes the stream; disconnected if the worker gave up.
    assign: Sender<Box<Assignment>>,
    _slot: SpareSlot,
}

impl Spare {
    /// Gives this worker its stream, or hands it back if the worker is
    /// gone.
    pub(crate) fn assign(self, assignment: Box<Assignment>) -> Result<(), Box<Assignment>> {
        self.assign
            .send(assignment)
            .map_err(|crossbeam_channel::SendError(a)| a)
    }
}

/// How a worker thread gets its stream.
enum Start {
    /// Set up this stream right away.
    Now(Box<Assignment>),
    /// Prepare, offer the prepared worker on `ready`, then wait.
    Spare {
        ready: Sender<Spare>,
        slot: SpareSlot,
    },
}

/// The worker's ends of the channels to the user's side.
struct WorkerEnds {
    outbound: Receiver<Outbound>,
    control: Receiver<Control>,
    /// For the inbox, which the worker makes once the version is known.
    control_sender: Sender<Control>,
    shared: Arc<Shared>,
    /// Dropped when the thread ends, which wakes a blocked reader.
    _alive: Sender<()>,
}

/// What the handshake hands back to the thread that asked for the stream.
pub(crate) struct Handshake {
    local_queue: String,
    peer_queue: String,
    inbox: Arc<Inbox>,
    message_limit: usize,
    upgrade: bool,
    peer_connection: Option<String>,
}

/// What the handshake settled.
struct Agreed {
    peer_queue: String,
    version: ProtocolVersion,
    /// The peer's receive window (version 2).
    peer_window: Option<u64>,
    /// The peer's stream id (version 3).
    peer_stream: Option<String>,
    /// The listener said it takes version-3 requests.
    upgrade: bool,
    /// Version 3: the per-message cost the peer counts, if it does (see
    /// [`MESSAGE_COST`](crate::credit::MESSAGE_COST)).
    peer_message_cost: Option<u64>,
}

/// A stream's channel with the receivers amiquip feeds for it.
///
/// amiquip fails the whole connection when it has a confirm or return for
/// a receiver that was dropped while the channel is still open, so the
/// channel must close before they go: fields drop in declaration order.
struct StreamChannel {
    channel: Channel,
    returns: Receiver<Return>,
    confirms: Receiver<Confirm>,
}

/// The worker thread. `life` (a prepared worker's, see [`spawn_spare`])
/// is the first parameter so that it drops last: parameters drop after
/// the body's locals, in reverse order, so after the channel has closed
/// and `connection` has been let go.
fn run(
    life: Option<SpareLife>,
    connection: Arc<BrokerConnection>,
    options: StreamOptions,
    start: Start,
) {
    let local_queue = new_queue_name();
    let owned = match connection
        .open_channel("a stream")
        .and_then(|channel| prepare(channel, &local_queue))
    {
        Ok(owned) => owned,
        Err(err) => {
            start.fail(err);
            return;
        }
    };
    let channel = &owned.channel;
    let returns = owned.returns.clone();
    let mut publisher = Publisher::new(OwnChannel(channel), owned.confirms.clone());
    let (assignment, consumer) = match start {
        Start::Now(assignment) => {
            // The consumer first: its answer confirms that our queue was
            // declared. A handshake published on a channel the broker is
            // closing (a declare refused, say, by a vhost's queue limit)
            // can reach it cut in two, which kills the whole connection
            // (505 UNEXPECTED_FRAME), every stream on it included.
            match consume(channel, &local_queue, &options) {
                Ok(consumer) => (assignment, consumer),
                Err(err) => {
                    let _ = assignment.setup.send(Err(err));
                    return;
                }
            }
        }
        Start::Spare { ready, slot } => {
            let consumer = match consume(channel, &local_queue, &options) {
                Ok(consumer) => consumer,
                Err(err) => {
                    debug!("could not prepare a stream: {err}");
                    return;
                }
            };
            let Some(assignment) = wait_for_assignment(&consumer, ready, slot) else {
                cancel_consumer(&consumer);
                return;
            };
            // A stream now: its pool no longer waits for it.
            drop(life);
            (assignment, consumer)
        }
    };
    if assignment.abandoned() {
        // Too late (a broker call above took longer than the caller
        // waits): no request the listener would answer for nobody.
        debug!("stream {local_queue}: the caller gave up before its request went");
        cancel_consumer(&consumer);
        return;
    }
    let sent = match send_handshake(
        &assignment.role,
        &local_queue,
        &assignment.options,
        &mut publisher,
    ) {
        Ok(sent) => sent,
        Err(err) => {
            cancel_consumer(&consumer);
            let _ = assignment.setup.send(Err(err));
            return;
        }
    };
    let Assignment {
        role,
        options,
        setup,
        ends,
    } = *assignment;
    let agreed = match await_handshake(
        &connection,
        &role,
        sent,
        &options,
        Inbound {
            deliveries: consumer.receiver(),
            consumer: Some(&consumer),
            returns: &returns,
            believed_untied: None,
        },
        &mut publisher,
    ) {
        Ok(agreed) => agreed,
        Err(err) => {
            cancel_consumer(&consumer);
            let _ = setup.send(Err(err));
            return;
        }
    };
    let up = Connected {
        connection,
        options,
        setup,
        ends,
        agreed,
        local_queue: local_queue.clone(),
        local_name: local_queue,
        publisher,
        returns,
        deliveries: consumer.receiver().clone(),
        held: None,
    };
    up.run();
    cancel_consumer(&consumer);
    drop(consumer);
    drop(owned);
}

/// A stream whose handshake succeeded, before its worker's loop.
struct Connected<T> {
    connection: Arc<BrokerConnection>,
    options: StreamOptions,
    setup: Sender<SetupOutcome>,
    ends: WorkerEnds,
    agreed: Agreed,
    /// The queue the stream receives on.
    local_queue: String,
    /// The stream's address for the user (version 3: the queue and the
    /// stream id).
    local_name: String,
    publisher: Publisher<T>,
    returns: Receiver<Return>,
    deliveries: Receiver<ConsumerMessage>,
    /// Version 3: the bytes waiting in `deliveries`.
    held: Option<Arc<crate::mux::Held>>,
}

impl<T: Transport> Connected<T> {
    /// Hands the stream to the user and runs its worker on this thread
    /// until it is over.
    fn run(self) {
        if let Some((mut worker, name)) = self.into_worker() {
            worker.run();
            drop(worker);
            debug!("stream {name} closed");
        }
    }

    /// Hands the stream to the user; the worker to run it, and the
    /// stream's name for the log (`None` if the user no longer waits).
    fn into_worker(self) -> Option<(Worker<T>, String)> {
        let Connected {
            connection,
            options,
            setup,
            ends,
            agreed,
            local_queue,
            local_name,
            mut publisher,
            returns,
            deliveries,
            held,
        } = self;
        let Agreed {
            peer_queue,
            version,
            peer_window,
            peer_stream,
            upgrade,
            peer_message_cost,
        } = agreed;
        let peer_name = match &peer_stream {
            Some(id) => format!("{peer_queue}#{id}"),
            None => peer_queue.clone(),
        };
        let peer_connection = peer_stream.is_some().then(|| peer_queue.clone());
        if let Some(id) = peer_stream {
            publisher.set_peer(id);
        }
        debug!("stream {local_name} connected to {peer_name}, protocol version {version}");
        if let Some(window) = peer_window {
            *ends.shared.send_window() =
                SendWindow::limited(window).with_message_cost(peer_message_cost.unwrap_or(0));
        }
        // Whatever held for a version-3 stream is weighed with each
        // message's cost, whether or not the peer said it counts it: one
        // that leaves the header out must not make the stream hold
        // hundreds of times its window in tiny messages.
        if let Some(held) = &held {
            held.count_messages_at(crate::credit::MESSAGE_COST);
        }
        let message_limit = message_limit(options.get_max_message_size(), peer_window);
        let marker = frame::new_marker();
        let inbox = Arc::new(Inbox::new(
            version,
            deliveries,
            Arc::clone(&ends.shared),
            ends.control_sender.clone(),
            marker.clone(),
            options.get_window() as u64,
            held,
        ));
        let handed_over = setup.send(Ok(Handshake {
            local_queue: local_name.clone(),
            peer_queue: peer_name,
            inbox: Arc::clone(&inbox),
            message_limit,
            upgrade,
            peer_connection,
        }));
        if handed_over.is_err() {
            return None;
        }
        let state = StreamState::new(
            version,
            options.get_keepalive_interval(),
            options.get_linger(),
            Instant::now(),
        );
        let worker = Worker {
            connection,
            marker,
            publisher,
            returns,
            ends,
            peer_queue,
            local_queue,
            inbox,
            message_limit,
            unsent: Vec::new(),
            state,
            probe: Probe::default(),
        };
        Some((worker, local_name))
    }
}

/// Cancels a consumer and returns the deliveries it still held.
///
/// amiquip answers the cancel before it sends `ClientCancelled` to the
/// consumer's receiver, and fails the whole connection if that receiver
/// is gone by then: so wait for that message before the consumer drops.
pub(crate) fn cancel_consumer(consumer: &amiquip::Consumer<'_>) -> Vec<Delivery> {
    let mut held = Vec::new();
    if consumer.cancel().is_err() {
        return held;
    }
    let deadline = after(Duration::from_secs(2));
    loop {
        select! {
            recv(consumer.receiver()) -> message => match message {
                Ok(ConsumerMessage::Delivery(delivery)) => held.push(delivery),
                Ok(_) | Err(_) => return held,
            },
            recv(deadline) -> _ => return held,
        }
    }
}

impl Start {
    /// Reports that the channel could not be set up.
    fn fail(self, err: Error) {
        match self {
            Start::Now(assignment) => {
                let _ = assignment.setup.send(Err(err));
            }
            Start::Spare { .. } => debug!("could not prepare a stream: {err}"),
        }
    }
}

/// Starts consuming our queue, with the stream's read-ahead.
fn consume<'a>(
    channel: &'a Channel,
    local_queue: &str,
    options: &StreamOptions,
) -> Result<amiquip::Consumer<'a>, Error> {
    channel
        .qos(0, options.get_prefetch(), false)
        .and_then(|()| {
            channel.basic_consume(
                local_queue,
                ConsumerOptions {
                    no_ack: false,
                    exclusive: true,
                    ..ConsumerOptions::default()
                },
            )
        })
        .map_err(|err| Error::broker(format!("consuming queue {local_queue:?}"), err))
}

/// Offers a prepared worker on `ready` and waits until it is given a
/// stream. `None` when nobody will: the pool is gone, or the consumer
/// ended (a lost connection) or got something nobody should have sent.
fn wait_for_assignment(
    consumer: &amiquip::Consumer<'_>,
    ready: Sender<Spare>,
    slot: SpareSlot,
) -> Option<Box<Assignment>> {
    let (assign, assigned) = bounded(1);
    ready
        .send(Spare {
            assign,
            _slot: slot,
        })
        .ok()?;
    drop(ready);
    select! {
        recv(assigned) -> assignment => assignment.ok(),
        recv(consumer.receiver()) -> message => {
            debug!("a prepared stream gave up waiting: {}", match message {
                Ok(ConsumerMessage::Delivery(_)) => "a stray message arrived",
                _ => "its consumer ended",
            });
            None
        }
    }
}

/// Sets up the channel without waiting for the broker: returns,
/// confirms, our queue.
fn prepare(channel: Channel, local_queue: &str) -> Result<StreamChannel, Error> {
    let what = |action: &str| format!("{action} for stream queue {local_queue:?}");
    let returns = channel
        .listen_for_returns()
        .map_err(|e| Error::broker(what("listening for returns"), e))?;
    let confirms = channel
        .listen_for_publisher_confirms()
        .map_err(|e| Error::broker(what("listening for confirms"), e))?;
    let owned = StreamChannel {
        channel,
        returns,
        confirms,
    };
    owned
        .channel
        .enable_publisher_confirms_nowait()
        .map_err(|e| Error::broker(what("enabling confirms"), e))?;
    owned
        .channel
        .queue_declare_nowait(local_queue, queue_declare_options())
        .map_err(|e| Error::broker(what("declaring the queue"), e))?;
    Ok(owned)
}
