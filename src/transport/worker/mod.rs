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

mod assignment;
pub(crate) mod commands;
mod connected;
pub(crate) mod engine;
mod handshake;
pub(crate) mod inbox;
mod peer_probe;
mod publisher;
mod role;
mod shared_transport;
pub(crate) mod spare;
mod v1;
mod v3;

use crate::error::Error;
use crate::options::StreamOptions;
use crate::protocol::{new_queue_name, queue_declare_options};
use crate::session::shared::Shared;
use crate::transport::connection::BrokerConnection;
use amiquip::{Channel, Confirm, ConsumerMessage, ConsumerOptions, Delivery, Return};
use assignment::WorkerEnds;
pub(crate) use assignment::{Assignment, SetupOutcome};
pub(crate) use commands::{Control, Outbound};
use connected::Connected;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, after, bounded, select, unbounded};
use handshake::{Inbound, await_handshake, send_handshake};
use inbox::Inbox;
use log::debug;
use publisher::{OwnChannel, Publisher};
use role::GiveUp;
pub(crate) use role::Role;
use std::sync::Arc;
use std::time::Duration;

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

/// Where a version-1 or 2 stream's setup goes first: a worker prepared
/// ahead of need (the connection's [`SparePool`](crate::transport::worker::spare::SparePool)).
pub(crate) trait Spares {
    /// Gives `assignment` to a prepared worker, or hands it back when none
    /// is ready.
    fn hand_over(&self, assignment: Box<Assignment>) -> Result<(), Box<Assignment>>;
}

/// What a pool counts a prepared worker by (see [`spawn_spare`]): the
/// worker drops it when it is taken or gives up.
pub(crate) type PoolToken = Box<dyn Send>;

/// Sets up a stream and waits for its handshake: a version-3 one in the
/// caller's thread (it has no thread of its own to start), else on a
/// prepared worker from `spares` when one is ready, else on a new thread.
pub(crate) fn start(
    connection: &Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    spares: Option<&dyn Spares>,
) -> Result<Established, Error> {
    set_up(connection, role, options, spares, Handshaker::Caller)?.wait()
}

/// Starts setting up a stream without waiting for its handshake; the
/// [`Pending`] it returns says when it is done.
pub(crate) fn begin(
    connection: &Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    spares: Option<&dyn Spares>,
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
    spares: Option<&dyn Spares>,
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
    slot: PoolToken,
    life: PoolToken,
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

/// A prepared worker waiting for its stream.
pub(crate) struct Spare {
    /// Takes the stream; disconnected if the worker gave up.
    assign: Sender<Box<Assignment>>,
    _slot: PoolToken,
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
        slot: PoolToken,
    },
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
    life: Option<PoolToken>,
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
    slot: PoolToken,
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
