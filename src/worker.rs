//! The worker thread of one stream: it owns the stream's AMQP channel,
//! runs the handshake, publishes what the user writes, acknowledges what
//! the user reads, watches for returned messages and checks that the peer
//! is still there.
//!
//! The user's `read` takes deliveries straight from amiquip's consumer
//! receiver (no extra thread hop on the receive path); everything else
//! that touches the channel happens here.

use crate::connection::BrokerConnection;
use crate::credit::{SendWindow, message_limit};
use crate::error::Error;
use crate::inbox::Inbox;
use crate::options::StreamOptions;
use crate::protocol::frame;
use crate::protocol::handshake::{self, Offer};
use crate::protocol::{new_queue_name, queue_declare_options};
use crate::shared::{Ending, Failure, Shared};
use crate::spare::{SpareLife, SparePool, SpareSlot};
use crate::version::ProtocolVersion;
use amiquip::{
    Channel, Confirm, ConfirmSmoother, ConsumerMessage, ConsumerOptions, Delivery, Publish, Return,
};
use crossbeam_channel::{Receiver, Sender, after, bounded, never, select, tick, unbounded};
use log::{debug, warn};
use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    },
    /// Answer a connection request.
    Server {
        /// The client's queue, from the request's `reply_to`.
        client_queue: String,
        /// The version the listener chose for it.
        version: ProtocolVersion,
        /// The client's version-2 offer, if it made one.
        offer: Option<Offer>,
    },
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
}

/// Sets up a stream and waits for its handshake: on a prepared worker
/// from `spares` when one is ready, else on a new thread.
pub(crate) fn start(
    connection: &Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    spares: Option<&SparePool>,
) -> Result<Established, Error> {
    begin(connection, role, options, spares)?.wait()
}

/// Starts setting up a stream without waiting for its handshake; the
/// [`Pending`] it returns says when it is done.
pub(crate) fn begin(
    connection: &Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    spares: Option<&SparePool>,
) -> Result<Pending, Error> {
    let (setup_tx, setup_rx) = bounded(1);
    let (outbound_tx, outbound_rx) = bounded(4);
    let (control_tx, control_rx) = unbounded();
    let (alive_tx, alive_rx) = bounded::<()>(0);
    let write_limit = options.get_write_queue() * options.get_max_message_size();
    let shared = Arc::new(Shared::new(write_limit));
    shared.set_nodelay(options.get_nodelay());
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
    let assignment = match spares {
        Some(spares) => spares.hand_over(assignment),
        None => Err(assignment),
    };
    if let Err(assignment) = assignment {
        let connection = Arc::clone(connection);
        let options = assignment.options.clone();
        spawn_worker(move || run(None, connection, options, Start::Now(assignment)))?;
    }
    Ok(Pending {
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

    /// Waits for the handshake.
    pub(crate) fn wait(self) -> Result<Established, Error> {
        let outcome = self.setup.recv();
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
}

/// What the handshake settled.
struct Agreed {
    peer_queue: String,
    version: ProtocolVersion,
    /// The peer's receive window (version 2).
    peer_window: Option<u64>,
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
    let mut publisher = Publisher::new(channel, owned.confirms.clone());
    let (assignment, sent, consumer) = match start {
        Start::Now(assignment) => {
            // The handshake message goes before the consumer starts: our
            // queue is declared already (the broker keeps the answer in
            // it), and the consume round trip overlaps with the peer's work.
            let sent = send_handshake(
                &assignment.role,
                &local_queue,
                &assignment.options,
                &mut publisher,
            )
            .and_then(|sent| Ok((sent, consume(channel, &local_queue, &options)?)));
            match sent {
                Ok((sent, consumer)) => (assignment, sent, consumer),
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
            match send_handshake(
                &assignment.role,
                &local_queue,
                &assignment.options,
                &mut publisher,
            ) {
                Ok(sent) => (assignment, sent, consumer),
                Err(err) => {
                    cancel_consumer(&consumer);
                    let _ = assignment.setup.send(Err(err));
                    return;
                }
            }
        }
    };
    let Assignment {
        role,
        options,
        setup,
        ends,
    } = *assignment;
    let agreed = match await_handshake(&role, sent, &options, &consumer, &mut publisher, &returns) {
        Ok(agreed) => agreed,
        Err(err) => {
            cancel_consumer(&consumer);
            let _ = setup.send(Err(err));
            return;
        }
    };
    let Agreed {
        peer_queue,
        version,
        peer_window,
    } = agreed;
    debug!("stream {local_queue} connected to {peer_queue}, protocol version {version}");
    if let Some(window) = peer_window {
        *ends.shared.send_window() = SendWindow::limited(window);
    }
    let message_limit = message_limit(options.get_max_message_size(), peer_window);
    let marker = frame::new_marker();
    let inbox = Arc::new(Inbox::new(
        version,
        consumer.receiver().clone(),
        Arc::clone(&ends.shared),
        ends.control_sender.clone(),
        marker.clone(),
        options.get_window() as u64,
    ));
    let handed_over = setup.send(Ok(Handshake {
        local_queue: local_queue.clone(),
        peer_queue: peer_queue.clone(),
        inbox: Arc::clone(&inbox),
        message_limit,
    }));
    if handed_over.is_err() {
        cancel_consumer(&consumer);
        return;
    }
    let mut worker = Worker {
        connection,
        linger: options.get_linger(),
        options,
        marker,
        publisher,
        returns,
        ends,
        peer_queue,
        local_queue: local_queue.clone(),
        version,
        inbox,
        message_limit,
        sequence: 0,
        acked: 0,
        last_sent: Instant::now(),
        probe_channel: None,
        fin_sent: false,
        fin_received: false,
        peer_gone: false,
        reader_done: false,
        unsent: Vec::new(),
    };
    worker.run_loop();
    worker.finish();
    drop(worker);
    cancel_consumer(&consumer);
    drop(consumer);
    drop(owned);
    debug!("stream {local_queue} closed");
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

/// Publishes our handshake message: the SYN to the listener or the
/// SYN-ACK to the client. Returns the version-2 offer it carried.
fn send_handshake(
    role: &Role,
    local_queue: &str,
    options: &StreamOptions,
    publisher: &mut Publisher<'_>,
) -> Result<Option<Offer>, Error> {
    let window = options.get_window();
    let (to, offer, doing) = match role {
        Role::Client { listener_queue, .. } => (
            listener_queue,
            handshake::client_offer(options.get_protocol_version(), window),
            "connecting to",
        ),
        Role::Server {
            client_queue,
            version,
            ..
        } => (
            client_queue,
            handshake::server_offer(*version, window),
            "answering",
        ),
    };
    publisher
        .publish(to, &[], handshake::handshake_properties(local_queue, offer))
        .map_err(|e| Error::broker(format!("{doing} {to:?}"), e))?;
    Ok(offer)
}

/// Waits for the handshake to complete: the client for the SYN-ACK, the
/// listener for the broker's confirm of its SYN-ACK; either gives up after
/// the handshake timeout.
fn await_handshake(
    role: &Role,
    sent: Option<Offer>,
    options: &StreamOptions,
    consumer: &amiquip::Consumer<'_>,
    publisher: &mut Publisher<'_>,
    returns: &Receiver<Return>,
) -> Result<Agreed, Error> {
    match role {
        Role::Client {
            listener_queue,
            deadline,
            timeout,
        } => {
            let timer = deadline.map(crossbeam_channel::at).unwrap_or_else(never);
            let answer = select! {
                recv(returns) -> _ => return Err(Error::ConnectionRefused { queue: listener_queue.clone() }),
                recv(consumer.receiver()) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => delivery,
                    Ok(other) => return Err(consumer_ended(listener_queue, other)),
                    Err(_) => return Err(Error::broker(
                        format!("connecting to {listener_queue:?}"),
                        amiquip::Error::EventLoopDropped,
                    )),
                },
                recv(timer) -> _ => return Err(Error::TimedOut {
                    what: format!("connecting to {listener_queue:?}"),
                    after: timeout.unwrap_or_default(),
                }),
            };
            let agreed = handshake::parse_accept(&answer.body, &answer.properties)
                .map_err(|reason| refused(listener_queue, &answer.body, reason))
                .and_then(|accept| {
                    let version = handshake::client_version(
                        sent,
                        accept.offer,
                        options.get_protocol_version(),
                    )
                    .map_err(|reason| Error::Protocol {
                        queue: listener_queue.clone(),
                        reason,
                    })?;
                    Ok(Agreed {
                        peer_queue: accept.server_queue.to_string(),
                        version,
                        peer_window: accept.offer.map(|offer| offer.window),
                    })
                });
            let _ = consumer.ack(answer);
            agreed
        }
        Role::Server {
            client_queue,
            version,
            offer,
        } => {
            let seq = publisher.published;
            // The broker may hold the answer back (a resource alarm blocks
            // publishing): give up after the handshake timeout.
            let timeout = options.get_handshake_timeout();
            let timer = timeout.map(after).unwrap_or_else(never);
            loop {
                select! {
                    recv(returns) -> _ => return Err(Error::ConnectionRefused { queue: client_queue.clone() }),
                    recv(timer) -> _ => return Err(Error::TimedOut {
                        what: format!("answering {client_queue:?}"),
                        after: timeout.unwrap_or_default(),
                    }),
                    recv(publisher.confirms) -> confirm => {
                        let confirm = confirm.map_err(|_| Error::broker(
                            format!("answering {client_queue:?}"),
                            amiquip::Error::EventLoopDropped,
                        ))?;
                        publisher.absorb(confirm);
                        if publisher.nacked {
                            return Err(Error::Protocol {
                                queue: client_queue.clone(),
                                reason: "the broker refused the handshake answer".to_string(),
                            });
                        }
                        // A returned message is returned before it is confirmed.
                        if publisher.confirmed >= seq && returns.is_empty() {
                            return Ok(Agreed {
                                peer_queue: client_queue.clone(),
                                version: *version,
                                peer_window: sent.and(offer.map(|offer| offer.window)),
                            });
                        }
                    },
                }
            }
        }
    }
}

/// The error for a listener's answer that is not a valid SYN-ACK: a
/// listener refuses by answering with a body that says why.
fn refused(queue: &str, body: &[u8], reason: String) -> Error {
    if body.is_empty() {
        Error::Protocol {
            queue: queue.to_string(),
            reason,
        }
    } else {
        let said = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        debug!("listener {queue:?} refused the connection: {said}");
        Error::ConnectionRefused {
            queue: queue.to_string(),
        }
    }
}

/// The error for a consumer that ended during the handshake.
fn consumer_ended(queue: &str, message: ConsumerMessage) -> Error {
    let context = format!("connecting to {queue:?}");
    match message {
        ConsumerMessage::ServerClosedChannel(err)
        | ConsumerMessage::ServerClosedConnection(err) => Error::broker(context, err),
        _ => Error::broker(context, amiquip::Error::ClientClosedChannel),
    }
}

/// Publishes on the stream's channel and keeps count of confirms.
struct Publisher<'a> {
    channel: &'a Channel,
    confirms: Receiver<Confirm>,
    smoother: ConfirmSmoother,
    published: u64,
    confirmed: u64,
    nacked: bool,
    flushes: VecDeque<(u64, Sender<io::Result<()>>)>,
}

impl<'a> Publisher<'a> {
    fn new(channel: &'a Channel, confirms: Receiver<Confirm>) -> Publisher<'a> {
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

    fn publish(
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
    fn absorb(&mut self, confirm: Confirm) {
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

    fn all_confirmed(&self) -> bool {
        self.confirmed >= self.published
    }
}

/// The worker's state after the handshake.
struct Worker<'a> {
    connection: Arc<BrokerConnection>,
    options: StreamOptions,
    /// How long closing waits for confirms: the options' linger, or the
    /// stream's own (`Stream::set_linger`) once its last handle is gone.
    linger: Duration,
    /// The secret of our "peer gone" marker.
    marker: String,
    publisher: Publisher<'a>,
    returns: Receiver<Return>,
    ends: WorkerEnds,
    peer_queue: String,
    local_queue: String,
    version: ProtocolVersion,
    inbox: Arc<Inbox>,
    /// The largest message to publish.
    message_limit: usize,
    /// The sequence number of the last data or FIN frame sent.
    sequence: u64,
    /// The delivery tag acknowledged last (acks cover all before it).
    acked: u64,
    /// When something was last published to the peer.
    last_sent: Instant,
    probe_channel: Option<Channel>,
    fin_sent: bool,
    fin_received: bool,
    peer_gone: bool,
    reader_done: bool,
    /// Written bytes not yet published: a partial message waits here while
    /// earlier data awaits its confirm, gathering the writes behind it
    /// (Nagle's algorithm, with the broker's confirm as the ACK).
    unsent: Vec<u8>,
}

impl Worker<'_> {
    fn run_loop(&mut self) {
        let ticker = tick(self.options.get_keepalive_interval());
        loop {
            if self.done() {
                return;
            }
            let next = select! {
                recv(self.ends.shared.written.filled()) -> _ => {
                    self.take_written();
                    self.publish_unsent(false)
                }
                recv(self.ends.outbound) -> item => match item {
                    Ok(item) => self.outbound(item),
                    // The last handle is gone; it said how to end.
                    Err(_) => self.outbound(match self.ends.shared.ending() {
                        Some(Ending::Reset(why)) => Outbound::Reset(why),
                        _ => Outbound::Close,
                    }),
                },
                recv(self.ends.control) -> control => match control {
                    Ok(control) => self.control(control),
                    Err(_) => ControlFlow::Break(()),
                },
                recv(self.returns) -> returned => match returned {
                    Ok(returned) => {
                        self.returned(returned);
                        ControlFlow::Continue(())
                    }
                    Err(_) => self.broker_lost("the channel closed"),
                },
                recv(self.publisher.confirms) -> confirm => match confirm {
                    Ok(confirm) => {
                        self.publisher.absorb(confirm);
                        if self.publisher.nacked {
                            self.refused_by_broker()
                        } else {
                            self.answer_flushes();
                            self.publish_unsent(false)
                        }
                    }
                    Err(_) => self.broker_lost("the channel closed"),
                },
                recv(ticker) -> _ => self.keepalive(),
            };
            if next.is_break() {
                return;
            }
        }
    }

    /// The stream is over in both directions, or the peer is gone and
    /// the reader knows.
    fn done(&self) -> bool {
        (self.fin_sent && self.fin_received) || (self.peer_gone && self.reader_done)
    }

    /// Moves what was written into `unsent`, behind what waits there.
    fn take_written(&mut self) {
        let written = self.ends.shared.written.take();
        if self.unsent.is_empty() {
            self.unsent = written;
        } else {
            self.unsent.extend_from_slice(&written);
        }
    }

    fn outbound(&mut self, item: Outbound) -> ControlFlow<()> {
        // Everything written before this item goes first.
        self.take_written();
        match item {
            Outbound::Push => self.publish_unsent(false),
            Outbound::Fin(reply) => {
                let result = match self.publish_unsent(true) {
                    ControlFlow::Continue(()) => self.send_fin(),
                    ControlFlow::Break(()) => Err(self.ends.shared.write_error()),
                };
                let _ = reply.send(result);
                ControlFlow::Continue(())
            }
            Outbound::Flush(reply) => {
                let _ = self.publish_unsent(true);
                let seq = self.publisher.published;
                self.publisher.flushes.push_back((seq, reply));
                self.answer_flushes();
                ControlFlow::Continue(())
            }
            Outbound::Close => {
                if let Some(Ending::Close { linger }) = self.ends.shared.ending() {
                    self.linger = linger;
                }
                if let Some(Failure::Protocol(why)) = self.ends.shared.failure() {
                    // The reader found a violation; its abort may still
                    // be queued behind this close.
                    self.send_reset(&why);
                } else if !self.fin_sent && self.publish_unsent(true).is_continue() {
                    let _ = self.send_fin();
                }
                ControlFlow::Break(())
            }
            Outbound::Reset(why) => {
                self.unsent.clear();
                self.send_reset(&why);
                ControlFlow::Break(())
            }
        }
    }

    /// Publishes one frame to the peer.
    fn publish_to_peer(
        &mut self,
        body: &[u8],
        properties: amiquip::AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        let peer = self.peer_queue.clone();
        self.publisher.publish(&peer, body, properties)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Publishes the unsent bytes: full messages always; the partial rest
    /// only when `all` is set, `nodelay` is on, or nothing published is
    /// still waiting for its confirm (whose arrival calls this again).
    fn publish_unsent(&mut self, all: bool) -> ControlFlow<()> {
        if self.ends.shared.failure().is_some() {
            self.unsent.clear();
            return ControlFlow::Continue(());
        }
        let max = self.message_limit;
        while !self.unsent.is_empty() {
            let full = self.unsent.len() >= max;
            if !(full || all || self.ends.shared.nodelay() || self.publisher.all_confirmed()) {
                break;
            }
            let n = self.unsent.len().min(max);
            let unsent = std::mem::take(&mut self.unsent);
            let properties = frame::data_properties(self.version, self.sequence + 1);
            let published = self.publish_to_peer(&unsent[..n], properties);
            self.unsent = unsent;
            if let Err(err) = published {
                self.unsent.clear();
                let peer = self.peer_queue.clone();
                return self.broker_lost(&format!("publishing to {peer:?}: {err}"));
            }
            self.sequence += 1;
            if n == self.unsent.len() {
                self.unsent.clear();
            } else {
                self.unsent.drain(..n);
            }
        }
        ControlFlow::Continue(())
    }

    fn send_fin(&mut self) -> io::Result<()> {
        if self.fin_sent {
            return Ok(());
        }
        if let Some(failure) = self.ends.shared.failure() {
            return Err(failure.write_error());
        }
        let properties = frame::fin_properties(self.version, self.sequence + 1);
        match self.publish_to_peer(&[], properties) {
            Ok(()) => {
                self.sequence += 1;
                self.fin_sent = true;
                Ok(())
            }
            Err(err) => {
                let text = format!("sending FIN to {:?}: {err}", self.peer_queue);
                // The failure is recorded; the loop ends when the channel's
                // receivers disconnect.
                let _ = self.broker_lost(&text);
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, text))
            }
        }
    }

    /// Tells a version-2 peer that the stream is aborted (version 1 has no
    /// reset: the peer sees the FIN of a close instead).
    fn send_reset(&mut self, why: &str) {
        if self.peer_gone
            || self
                .ends
                .shared
                .failure()
                .is_some_and(|f| matches!(f, Failure::BrokerLost(_)))
        {
            return;
        }
        if self.version == ProtocolVersion::V1 {
            // No reset in version 1, and never a FIN in its place: that
            // would be a clean end after whatever was dropped. The peer
            // finds our queue gone (deleted with our consumer) and fails.
            debug!("stream {}: aborting: {why}", self.local_queue);
            return;
        }
        debug!("stream {}: resetting: {why}", self.local_queue);
        if let Err(err) = self.publish_to_peer(why.as_bytes(), frame::reset_properties()) {
            let _ = self.broker_lost(&format!("sending a reset: {err}"));
        }
    }

    fn control(&mut self, control: Control) -> ControlFlow<()> {
        match control {
            Control::Ack(delivery) => {
                // Acks are cumulative: one for a later delivery covered it.
                if delivery.delivery_tag() > self.acked {
                    self.acked = delivery.delivery_tag();
                    if let Err(err) = (*delivery).ack_multiple(self.publisher.channel) {
                        return self.broker_lost(&format!("acknowledging data: {err}"));
                    }
                }
            }
            Control::FinReceived => {
                self.fin_received = true;
                self.reader_done = true;
            }
            Control::PeerGoneSeen => self.reader_done = true,
            Control::Window(consumed) => {
                if self.peer_gone || self.ends.shared.failure().is_some() {
                    return ControlFlow::Continue(());
                }
                let (properties, body) = frame::window_frame(consumed);
                if let Err(err) = self.publish_to_peer(&body, properties) {
                    return self.broker_lost(&format!("reporting the window: {err}"));
                }
            }
            Control::PeerReset => {
                // Everything before the reset has left the consumer, so the
                // reader keeps it; nothing after it counts.
                self.peer_gone = true;
                self.answer_flushes();
                return ControlFlow::Break(());
            }
            Control::Abort(why) => {
                warn!("stream {}: {why}", self.local_queue);
                self.unsent.clear();
                self.send_reset(&why);
                self.answer_flushes();
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn returned(&mut self, returned: Return) {
        debug!(
            "message to {:?} returned: {} {}",
            returned.routing_key, returned.reply_code, returned.reply_text
        );
        self.peer_left(&format!(
            "the peer's queue {:?} is gone ({})",
            returned.routing_key, returned.reply_text
        ));
    }

    /// Marks the peer as gone. Data it sent before going stays readable:
    /// a marker on our own queue, behind that data, tells the reader where
    /// the stream ends.
    fn peer_left(&mut self, why: &str) {
        if self.peer_gone {
            return;
        }
        self.peer_gone = true;
        self.ends.shared.fail(Failure::PeerGone(why.to_string()));
        self.answer_flushes();
        if self.fin_received {
            self.reader_done = true;
            return;
        }
        let own = self.local_queue.clone();
        if let Err(err) =
            self.publisher
                .publish(&own, &[], frame::peer_gone_properties(&self.marker))
        {
            let _ = self.broker_lost(&format!("marking the end of {own:?}: {err}"));
        }
    }

    /// The broker nacked a message: bytes a `write` accepted will not all
    /// arrive, so the stream fails here and the peer is reset (or, if the
    /// reset is refused too, finds our queue gone once we close).
    fn refused_by_broker(&mut self) -> ControlFlow<()> {
        let why = format!(
            "the broker refused a message to {:?} (nack): the stream is aborted",
            self.peer_queue
        );
        warn!("stream {}: {why}", self.local_queue);
        self.ends.shared.fail(Failure::Refused(why.clone()));
        self.unsent.clear();
        self.answer_flushes();
        self.send_reset(&why);
        ControlFlow::Break(())
    }

    fn broker_lost(&mut self, why: &str) -> ControlFlow<()> {
        warn!("stream {}: lost the broker: {why}", self.local_queue);
        self.ends.shared.fail(Failure::BrokerLost(format!(
            "lost the broker connection: {why}"
        )));
        self.answer_flushes();
        ControlFlow::Break(())
    }

    /// Runs every keepalive interval: checks that the peer is still there
    /// and, in version 2, handles control frames nobody is reading.
    fn keepalive(&mut self) -> ControlFlow<()> {
        match self.version {
            ProtocolVersion::V1 => self.probe_peer(),
            _ => {
                if let Some(pump) = self.inbox.try_take() {
                    pump.drain();
                }
                self.send_keepalive();
                ControlFlow::Continue(())
            }
        }
    }

    /// Version 2: a keepalive frame when nothing else went to the peer for
    /// an interval. The broker returns it if the peer's queue is gone.
    fn send_keepalive(&mut self) {
        if self.peer_gone || self.fin_received || self.ends.shared.failure().is_some() {
            return;
        }
        // The ticker fires every interval: allow for its jitter.
        if self.last_sent.elapsed() < self.options.get_keepalive_interval() / 2 {
            return;
        }
        if let Err(err) = self.publish_to_peer(&[], frame::keepalive_properties()) {
            let _ = self.broker_lost(&format!("sending a keepalive: {err}"));
        }
    }

    /// Version 1: checks that the peer's queue still exists.
    fn probe_peer(&mut self) -> ControlFlow<()> {
        if self.peer_gone || self.fin_received {
            return ControlFlow::Continue(());
        }
        let channel = match self.probe_channel.take() {
            Some(channel) => channel,
            None => match self.connection.open_channel("checking the peer") {
                Ok(channel) => channel,
                Err(err) => return self.broker_lost(&err.to_string()),
            },
        };
        match channel.queue_declare_passive(self.peer_queue.clone()) {
            Ok(_) => self.probe_channel = Some(channel),
            // Exclusive to the peer's connection: it exists. The broker
            // closed the channel, a new one is opened next time.
            Err(amiquip::Error::ServerClosedChannel { code: 405, .. }) => {}
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {
                let why = format!("the peer's queue {:?} is gone", self.peer_queue);
                self.peer_left(&why);
            }
            Err(err) => return self.broker_lost(&format!("checking the peer: {err}")),
        }
        ControlFlow::Continue(())
    }

    fn answer_flushes(&mut self) {
        if let Some(failure) = self.ends.shared.failure() {
            for (_, reply) in self.publisher.flushes.drain(..) {
                let _ = reply.send(Err(failure.write_error()));
            }
            return;
        }
        while let Some((seq, _)) = self.publisher.flushes.front() {
            if *seq > self.publisher.confirmed {
                break;
            }
            let (_, reply) = self.publisher.flushes.pop_front().expect("front exists");
            let result = if self.publisher.nacked {
                Err(io::Error::other("the broker refused a message (nack)"))
            } else {
                Ok(())
            };
            let _ = reply.send(result);
        }
    }

    /// Before the channel closes: wait (up to the linger time) until the
    /// broker has confirmed everything published.
    fn finish(&mut self) {
        let deadline = after(self.linger);
        while !self.publisher.all_confirmed() && self.ends.shared.failure().is_none() {
            select! {
                recv(self.publisher.confirms) -> confirm => match confirm {
                    Ok(confirm) => {
                        self.publisher.absorb(confirm);
                        if self.publisher.nacked {
                            let _ = self.refused_by_broker();
                        }
                    }
                    Err(_) => break,
                },
                recv(self.returns) -> returned => match returned {
                    Ok(returned) => self.returned(returned),
                    Err(_) => break,
                },
                recv(deadline) -> _ => {
                    warn!("stream {}: closing with unconfirmed data", self.local_queue);
                    break;
                }
            }
        }
        self.answer_flushes();
        // Whatever is still waiting was not confirmed in time.
        for (_, reply) in self.publisher.flushes.drain(..) {
            let _ = reply.send(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the stream closed before the broker confirmed the data",
            )));
        }
        if let Some(channel) = self.probe_channel.take() {
            let _ = channel.close();
        }
        if self.publisher.all_confirmed() && self.ends.shared.failure().is_none() {
            self.ends.shared.set_closed_cleanly();
        }
    }
}
