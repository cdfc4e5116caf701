//! The worker thread of one stream: it owns the stream's AMQP channel,
//! runs the handshake, publishes what the user writes, acknowledges what
//! the user reads, watches for returned messages and checks that the peer
//! is still there.
//!
//! The user's `read` takes deliveries straight from amiquip's consumer
//! receiver (no extra thread hop on the receive path); everything else
//! that touches the channel happens here.

use crate::connection::BrokerConnection;
use crate::error::Error;
use crate::options::StreamOptions;
use crate::protocol;
use amiquip::{
    Channel, Confirm, ConfirmSmoother, ConsumerMessage, ConsumerOptions, Delivery, Publish, Return,
};
use crossbeam_channel::{Receiver, Sender, after, bounded, never, select, tick, unbounded};
use log::{debug, warn};
use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the user's side sends the worker, in stream order.
pub(crate) enum Outbound {
    /// Bytes to publish.
    Data(Vec<u8>),
    /// Publish the FIN; answer once it is published.
    Fin(Sender<io::Result<()>>),
    /// Answer once everything before this is confirmed by the broker.
    Flush(Sender<io::Result<()>>),
    /// The last handle is gone: finish and clean up.
    Close,
}

/// What the reading side tells the worker, out of stream order.
pub(crate) enum Control {
    /// Acknowledge this delivery and every one before it.
    Ack(Box<Delivery>),
    /// The reader has taken the peer's FIN.
    FinReceived,
    /// The reader has taken the peer-gone marker.
    PeerGoneSeen,
}

/// Why a stream can no longer carry data.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The peer's queue is gone (the peer closed or died).
    PeerGone(String),
    /// The broker connection or our channel failed.
    BrokerLost(String),
}

impl Failure {
    /// The error a `read` reports.
    pub(crate) fn read_error(&self) -> io::Error {
        match self {
            Failure::PeerGone(why) => io::Error::new(io::ErrorKind::ConnectionReset, why.clone()),
            Failure::BrokerLost(why) => {
                io::Error::new(io::ErrorKind::ConnectionAborted, why.clone())
            }
        }
    }

    /// The error a `write` reports.
    pub(crate) fn write_error(&self) -> io::Error {
        match self {
            Failure::PeerGone(why) => io::Error::new(io::ErrorKind::BrokenPipe, why.clone()),
            Failure::BrokerLost(why) => {
                io::Error::new(io::ErrorKind::ConnectionAborted, why.clone())
            }
        }
    }
}

/// State the worker and the user's handles both see.
#[derive(Default)]
pub(crate) struct Shared {
    failure: Mutex<Option<Failure>>,
}

impl Shared {
    /// The failure, if the stream has one.
    pub(crate) fn failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the first failure; later ones are ignored.
    fn fail(&self, failure: Failure) {
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            debug!("stream failed: {failure:?}");
            *slot = Some(failure);
        }
    }
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
    },
}

/// A stream whose handshake succeeded: the ends the user's handles hold.
pub(crate) struct Established {
    pub(crate) local_queue: String,
    pub(crate) peer_queue: String,
    pub(crate) deliveries: Receiver<ConsumerMessage>,
    pub(crate) outbound: Sender<Outbound>,
    pub(crate) control: Sender<Control>,
    /// Disconnects when the worker thread ends.
    pub(crate) alive: Receiver<()>,
    pub(crate) shared: Arc<Shared>,
}

/// Starts a stream's worker thread and waits for its handshake.
pub(crate) fn start(
    connection: Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
) -> Result<Established, Error> {
    let (setup_tx, setup_rx) = bounded(1);
    let (outbound_tx, outbound_rx) = bounded(options.get_write_queue());
    let (control_tx, control_rx) = unbounded();
    let (alive_tx, alive_rx) = bounded::<()>(0);
    let shared = Arc::new(Shared::default());
    let ends = WorkerEnds {
        outbound: outbound_rx,
        control: control_rx,
        shared: Arc::clone(&shared),
        _alive: alive_tx,
    };
    std::thread::Builder::new()
        .name("amqp-stream".to_string())
        .spawn(move || run(connection, role, options, setup_tx, ends))
        .map_err(|e| Error::InvalidArgument(format!("cannot start a stream thread: {e}")))?;
    let handshake = setup_rx.recv().unwrap_or_else(|_| {
        Err(Error::broker(
            "setting up a stream",
            amiquip::Error::EventLoopDropped,
        ))
    })?;
    Ok(Established {
        local_queue: handshake.local_queue,
        peer_queue: handshake.peer_queue,
        deliveries: handshake.deliveries,
        outbound: outbound_tx,
        control: control_tx,
        alive: alive_rx,
        shared,
    })
}

/// The worker's ends of the channels to the user's side.
struct WorkerEnds {
    outbound: Receiver<Outbound>,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    /// Dropped when the thread ends, which wakes a blocked reader.
    _alive: Sender<()>,
}

/// What the handshake hands back to the thread that asked for the stream.
struct Handshake {
    local_queue: String,
    peer_queue: String,
    deliveries: Receiver<ConsumerMessage>,
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

fn run(
    connection: Arc<BrokerConnection>,
    role: Role,
    options: StreamOptions,
    setup: Sender<Result<Handshake, Error>>,
    ends: WorkerEnds,
) {
    let local_queue = protocol::new_queue_name();
    let owned = match connection
        .open_channel("a stream")
        .and_then(|channel| prepare(channel, &local_queue, &options))
    {
        Ok(owned) => owned,
        Err(err) => {
            let _ = setup.send(Err(err));
            return;
        }
    };
    let channel = &owned.channel;
    let returns = owned.returns.clone();
    let consumer = match channel.basic_consume(
        local_queue.clone(),
        ConsumerOptions {
            no_ack: false,
            exclusive: true,
            ..ConsumerOptions::default()
        },
    ) {
        Ok(consumer) => consumer,
        Err(err) => {
            let _ = setup.send(Err(Error::broker(
                format!("consuming queue {local_queue:?}"),
                err,
            )));
            return;
        }
    };
    let mut publisher = Publisher::new(channel, owned.confirms.clone());
    let peer_queue = match handshake(&role, &local_queue, &consumer, &mut publisher, &returns) {
        Ok(peer_queue) => peer_queue,
        Err(err) => {
            cancel_consumer(&consumer);
            let _ = setup.send(Err(err));
            return;
        }
    };
    debug!("stream {local_queue} connected to {peer_queue}");
    let handed_over = setup.send(Ok(Handshake {
        local_queue: local_queue.clone(),
        peer_queue: peer_queue.clone(),
        deliveries: consumer.receiver().clone(),
    }));
    if handed_over.is_err() {
        cancel_consumer(&consumer);
        return;
    }
    let mut worker = Worker {
        connection,
        options,
        publisher,
        returns,
        ends,
        peer_queue,
        local_queue: local_queue.clone(),
        probe_channel: None,
        fin_sent: false,
        fin_received: false,
        peer_gone: false,
        reader_done: false,
        pending: None,
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

/// Sets up the channel: prefetch, returns, confirms, our queue.
fn prepare(
    channel: Channel,
    local_queue: &str,
    options: &StreamOptions,
) -> Result<StreamChannel, Error> {
    let what = |action: &str| format!("{action} for stream queue {local_queue:?}");
    channel
        .qos(0, options.get_prefetch(), false)
        .map_err(|e| Error::broker(what("setting the prefetch"), e))?;
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
        .queue_declare_nowait(local_queue, protocol::queue_declare_options())
        .map_err(|e| Error::broker(what("declaring the queue"), e))?;
    Ok(owned)
}

/// Runs our side of the handshake; on success, the peer's queue.
fn handshake(
    role: &Role,
    local_queue: &str,
    consumer: &amiquip::Consumer<'_>,
    publisher: &mut Publisher<'_>,
    returns: &Receiver<Return>,
) -> Result<String, Error> {
    match role {
        Role::Client {
            listener_queue,
            deadline,
            timeout,
        } => {
            publisher
                .publish(
                    listener_queue,
                    &[],
                    protocol::handshake_properties(local_queue),
                )
                .map_err(|e| Error::broker(format!("connecting to {listener_queue:?}"), e))?;
            let timer = deadline.map(crossbeam_channel::at).unwrap_or_else(never);
            select! {
                recv(returns) -> _ => Err(Error::ConnectionRefused { queue: listener_queue.clone() }),
                recv(consumer.receiver()) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => {
                        let peer = protocol::parse_accept(&delivery.body, &delivery.properties)
                            .map(str::to_string)
                            .map_err(|reason| refused(listener_queue, &delivery.body, reason));
                        let _ = consumer.ack(delivery);
                        peer
                    }
                    Ok(other) => Err(consumer_ended(listener_queue, other)),
                    Err(_) => Err(Error::broker(
                        format!("connecting to {listener_queue:?}"),
                        amiquip::Error::EventLoopDropped,
                    )),
                },
                recv(timer) -> _ => Err(Error::TimedOut {
                    what: format!("connecting to {listener_queue:?}"),
                    after: timeout.unwrap_or_default(),
                }),
            }
        }
        Role::Server { client_queue } => {
            publisher
                .publish(
                    client_queue,
                    &[],
                    protocol::handshake_properties(local_queue),
                )
                .map_err(|e| Error::broker(format!("answering {client_queue:?}"), e))?;
            let seq = publisher.published;
            loop {
                select! {
                    recv(returns) -> _ => return Err(Error::ConnectionRefused { queue: client_queue.clone() }),
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
                            return Ok(client_queue.clone());
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
    publisher: Publisher<'a>,
    returns: Receiver<Return>,
    ends: WorkerEnds,
    peer_queue: String,
    local_queue: String,
    probe_channel: Option<Channel>,
    fin_sent: bool,
    fin_received: bool,
    peer_gone: bool,
    reader_done: bool,
    /// An outbound item taken while coalescing, handled next.
    pending: Option<Outbound>,
}

impl Worker<'_> {
    fn run_loop(&mut self) {
        let ticker = tick(self.options.get_keepalive_interval());
        loop {
            if let Some(item) = self.pending.take() {
                if self.outbound(item).is_break() {
                    return;
                }
                continue;
            }
            if self.done() {
                return;
            }
            let next = select! {
                recv(self.ends.outbound) -> item => match item {
                    Ok(item) => self.outbound(item),
                    Err(_) => self.outbound(Outbound::Close),
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
                        self.answer_flushes();
                        ControlFlow::Continue(())
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

    fn outbound(&mut self, item: Outbound) -> ControlFlow<()> {
        match item {
            Outbound::Data(data) => {
                let data = self.coalesce(data);
                if self.ends.shared.failure().is_some() {
                    return ControlFlow::Continue(());
                }
                let peer = self.peer_queue.clone();
                match self
                    .publisher
                    .publish(&peer, &data, protocol::data_properties())
                {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(err) => self.broker_lost(&format!("publishing to {peer:?}: {err}")),
                }
            }
            Outbound::Fin(reply) => {
                let result = self.send_fin();
                let _ = reply.send(result);
                ControlFlow::Continue(())
            }
            Outbound::Flush(reply) => {
                let seq = self.publisher.published;
                self.publisher.flushes.push_back((seq, reply));
                self.answer_flushes();
                ControlFlow::Continue(())
            }
            Outbound::Close => {
                if !self.fin_sent && self.ends.shared.failure().is_none() {
                    let _ = self.send_fin();
                }
                ControlFlow::Break(())
            }
        }
    }

    /// Appends queued small writes to `data`, up to the message size.
    fn coalesce(&mut self, mut data: Vec<u8>) -> Vec<u8> {
        let max = self.options.get_max_message_size();
        while data.len() < max {
            match self.ends.outbound.try_recv() {
                Ok(Outbound::Data(more)) if data.len() + more.len() <= max => {
                    data.extend_from_slice(&more)
                }
                Ok(other) => {
                    self.pending = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        data
    }

    fn send_fin(&mut self) -> io::Result<()> {
        if self.fin_sent {
            return Ok(());
        }
        if let Some(failure) = self.ends.shared.failure() {
            return Err(failure.write_error());
        }
        let peer = self.peer_queue.clone();
        match self
            .publisher
            .publish(&peer, &[], protocol::data_properties())
        {
            Ok(()) => {
                self.fin_sent = true;
                Ok(())
            }
            Err(err) => {
                let text = format!("sending FIN to {peer:?}: {err}");
                // The failure is recorded; the loop ends when the channel's
                // receivers disconnect.
                let _ = self.broker_lost(&text);
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, text))
            }
        }
    }

    fn control(&mut self, control: Control) -> ControlFlow<()> {
        match control {
            Control::Ack(delivery) => {
                if let Err(err) = (*delivery).ack_multiple(self.publisher.channel) {
                    return self.broker_lost(&format!("acknowledging data: {err}"));
                }
            }
            Control::FinReceived => {
                self.fin_received = true;
                self.reader_done = true;
            }
            Control::PeerGoneSeen => self.reader_done = true,
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
        if let Err(err) = self
            .publisher
            .publish(&own, &[], protocol::peer_gone_properties())
        {
            let _ = self.broker_lost(&format!("marking the end of {own:?}: {err}"));
        }
    }

    fn broker_lost(&mut self, why: &str) -> ControlFlow<()> {
        warn!("stream {}: lost the broker: {why}", self.local_queue);
        self.ends.shared.fail(Failure::BrokerLost(format!(
            "lost the broker connection: {why}"
        )));
        self.answer_flushes();
        ControlFlow::Break(())
    }

    /// Checks that the peer's queue still exists.
    fn keepalive(&mut self) -> ControlFlow<()> {
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
        let deadline = after(self.options.get_linger());
        while !self.publisher.all_confirmed() && self.ends.shared.failure().is_none() {
            select! {
                recv(self.publisher.confirms) -> confirm => match confirm {
                    Ok(confirm) => self.publisher.absorb(confirm),
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
    }
}
