//! `Listener`: accepts streams on a named control queue, used like a
//! `TcpListener`.

use crate::addr::Addr;
use crate::connector::Connector;
use crate::error::Error;
use crate::options::StreamOptions;
use crate::protocol::{self, handshake};
use crate::session::shared::Ending;
use crate::stream::Stream;
use crate::transport::connection::BrokerConnection;
use crate::transport::worker::spare::SparePool;
use crate::transport::worker::{self, Established, Outbound, Pending, Role, SetupOutcome};
use amiquip::{Channel, ConsumerMessage, ConsumerOptions, Delivery, QueueDeleteOptions};
use crossbeam_channel::{Receiver, Select, Sender, after, bounded, select, unbounded};
use log::{debug, warn};
use std::cell::Cell;
use std::fmt;
use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many connection requests the broker may hand a listener before it
/// accepts them (the AMQP prefetch of the control queue).
const BACKLOG: u16 = 128;

/// The prefetch of a shared listener's control queue: it holds one
/// request at a time, so the others go to listeners ready for them.
const SHARED_PREFETCH: u16 = 1;

/// How long dropping a listener waits for its thread to refuse the
/// requests it held and delete the queue.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Listens for streams on a named queue (the "port"), the way a
/// [`std::net::TcpListener`] listens on a port.
///
/// Binding declares the queue (exclusive to this connection, deleted
/// with it); a second listener on the same name fails with `AddrInUse`,
/// unless both are bound with [`StreamOptions::shared`], which spreads
/// clients over several listeners, in one process or many.
/// [`accept`](Listener::accept) and [`incoming`](Listener::incoming) hand
/// out connected [`Stream`]s. Handshakes run side by side, on streams
/// prepared ahead ([`StreamOptions::prepared_streams`]) when there are
/// some, so a burst of clients does not wait in line behind one slow
/// handshake. Malformed requests on the queue are logged
/// at `warn`, rejected and skipped; they never end the listener.
///
/// Dropping (or [closing](Listener::close)) the listener deletes its
/// queue; clients whose requests it held or that waited in the queue are
/// told the connection is refused, and streams connected but not yet
/// accepted are reset, as a closed `TcpListener`'s backlog is: their
/// clients read `ConnectionReset`, never a clean end of stream.
///
/// ```no_run
/// use amqp_stream::Listener;
/// use std::net::Shutdown;
///
/// let listener = Listener::bind("amqp://guest:guest@127.0.0.1:5672/%2f", "echo")?;
/// for stream in listener.incoming() {
///     let stream = stream?;
///     std::thread::spawn(move || -> std::io::Result<()> {
///         let mut reader = stream.try_clone()?;
///         let mut writer = stream;
///         std::io::copy(&mut reader, &mut writer)?;
///         writer.shutdown(Shutdown::Write)
///     });
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Listener {
    /// The broker (of a cluster: the node, which changes when the listener
    /// reconnects elsewhere) and the queue.
    local: Arc<Mutex<Addr>>,
    options: StreamOptions,
    accepted: Receiver<io::Result<Connected>>,
    /// Set once `close` was called (or the listener is being dropped).
    closed: AtomicBool,
    /// A shared listener's `accept` says here that it waits for a stream.
    wanted: Option<Sender<()>>,
    /// `accept` says here that it took a stream from a full backlog.
    room: Sender<()>,
    stop: Sender<()>,
    alive: Receiver<()>,
}

impl Listener {
    /// Listens on `queue` over a new broker connection that this listener
    /// and the streams it accepts share.
    ///
    /// Fails with `AddrInUse` when another listener holds `queue`,
    /// `HostUnreachable` when the broker cannot be reached,
    /// `PermissionDenied` for bad credentials and `InvalidInput` for a
    /// malformed URL.
    ///
    /// ```no_run
    /// let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(url: &str, queue: &str) -> io::Result<Listener> {
        Connector::open(url)?.bind(queue)
    }

    /// Like [`bind`](Listener::bind); accepted streams use `options`.
    ///
    /// ```no_run
    /// use amqp_stream::{Listener, StreamOptions};
    /// let options = StreamOptions::new().max_message_size(256 * 1024);
    /// let listener = Listener::bind_with("amqp://127.0.0.1", "echo", options)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind_with(url: &str, queue: &str, options: StreamOptions) -> io::Result<Listener> {
        Connector::open_with(url, options)?.bind(queue)
    }

    pub(crate) fn start(
        connection: Arc<BrokerConnection>,
        queue: &str,
        options: StreamOptions,
    ) -> io::Result<Listener> {
        protocol::check_queue_name(queue, "a listener's")?;
        if options.get_replicated() && !options.get_shared() {
            return Err(Error::InvalidArgument(format!(
                "listening on {queue:?}: a replicated listener queue is shared by every \
                 listener on it: set StreamOptions::shared(true) as well as replicated(true)"
            ))
            .into());
        }
        let (setup_tx, setup_rx) = bounded(1);
        let (accepted_tx, accepted_rx) = bounded(usize::from(BACKLOG));
        let (stop_tx, stop_rx) = bounded(1);
        let (alive_tx, alive_rx) = bounded::<()>(0);
        let (wanted_tx, wanted_rx) = unbounded();
        let wanted_tx = options.get_shared().then_some(wanted_tx);
        let (room_tx, room_rx) = bounded(1);
        let local = Arc::new(Mutex::new(Addr::new(connection.url().clone(), queue)));
        let backlog = Backlog {
            local: Arc::clone(&local),
            spares: SparePool::new(Arc::clone(&connection), options.clone()),
            connection,
            options: options.clone(),
            queue: queue.to_string(),
            accepted: accepted_tx,
            wanted: wanted_rx,
            room: room_rx,
            demand: Cell::new(0),
            stop: stop_rx,
        };
        std::thread::Builder::new()
            .name("amqp-stream-listener".to_string())
            .spawn(move || {
                let _alive = alive_tx;
                run(backlog, setup_tx)
            })?;
        setup_rx.recv().unwrap_or_else(|_| {
            Err(Error::broker(
                format!("listening on {queue:?}"),
                amiquip::Error::EventLoopDropped,
            ))
        })?;
        Ok(Listener {
            local,
            options,
            accepted: accepted_rx,
            closed: AtomicBool::new(false),
            wanted: wanted_tx,
            room: room_tx,
            stop: stop_tx,
            alive: alive_rx,
        })
    }

    /// Returns the next connected stream and the address of the client's
    /// end, waiting for one if none is ready.
    ///
    /// As with TCP, where the kernel completes handshakes before the
    /// server calls `accept`, the listener's thread answers connection
    /// requests by itself, up to a backlog of 128 streams waiting to be
    /// accepted; so `Stream::connect` does not wait for `accept`. A
    /// [shared](StreamOptions::shared) listener answers a request only
    /// while `accept` waits, and acknowledges it once the stream is
    /// handed out.
    /// Malformed requests and clients that vanished before the answer are
    /// logged at `warn` and skipped. Fails with `ConnectionAborted` when
    /// the broker connection is lost (saying why, once; see
    /// [`StreamOptions::reconnect`]) and after [`close`](Listener::close),
    /// on every call from then on, at once, as `TcpListener::accept` keeps
    /// failing on a closed socket.
    ///
    /// ```no_run
    /// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
    /// let (stream, peer) = listener.accept()?;
    /// println!("accepted {peer}");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn accept(&self) -> io::Result<(Stream, Addr)> {
        self.next_accepted().unwrap_or_else(|| Err(self.stopped()))
    }

    /// The next stream, the error the listener's thread ended with, or
    /// `None` once it has ended (and said why, if it failed).
    fn next_accepted(&self) -> Option<io::Result<(Stream, Addr)>> {
        if let Some(wanted) = &self.wanted {
            // Fails only once the listener's thread has ended, and then
            // `accepted` says why.
            let _ = wanted.send(());
        }
        // The sender lives in the listener's thread: it disconnects, after
        // everything queued has been taken, when that thread ends.
        let accepted = self.accepted.recv().ok()?;
        // The listener's thread stops taking requests while the backlog
        // is full: wake it now that there is room. Full: a wake-up is
        // already on its way.
        let _ = self.room.try_send(());
        Some(accepted.map(|connected| connected.into_stream(&self.options)))
    }

    /// The error of an `accept` on a listener whose thread has ended.
    fn stopped(&self) -> io::Error {
        let why = if self.closed.load(Ordering::Acquire) {
            "was closed"
        } else {
            "stopped"
        };
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the listener on {:?} {why}", self.local().queue()),
        )
    }

    /// Stops listening now, from any thread, as dropping the listener
    /// would: the queue is released (for a [shared](StreamOptions::shared)
    /// listener, the request it holds goes back to the others), clients
    /// whose requests it holds are refused (`ConnectionRefused`), and
    /// streams still in their handshake are reset (their client reads
    /// `ConnectionReset`), like the connections in a closed
    /// `TcpListener`'s queue. `accept` calls, blocked in other threads or
    /// later, return the streams already connected, then fail with
    /// `ConnectionAborted`; [`incoming`](Listener::incoming) ends. The way
    /// to end a thread that loops over `incoming` (what a server does on
    /// SIGTERM). Closing twice does nothing more.
    ///
    /// ```no_run
    /// use amqp_stream::Listener;
    /// use std::sync::Arc;
    ///
    /// let listener = Arc::new(Listener::bind("amqp://127.0.0.1", "echo")?);
    /// let accepting = Arc::clone(&listener);
    /// let server = std::thread::spawn(move || {
    ///     for stream in accepting.incoming() {
    ///         let Ok(_stream) = stream else { continue };
    ///     }
    /// });
    /// listener.close();
    /// server.join().unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Full: a close is already on its way; disconnected: the thread
        // has ended.
        let _ = self.stop.try_send(());
    }

    /// An iterator over accepted streams, like
    /// [`TcpListener::incoming`](std::net::TcpListener::incoming), that
    /// ends once the listener is closed for good: after
    /// [`close`](Listener::close) (once the streams connected before it
    /// are handed out), or when the broker connection is lost and the
    /// listener does not [reconnect](StreamOptions::reconnect) (after
    /// yielding that error once). A loop that logs errors and goes on
    /// therefore never spins.
    ///
    /// ```no_run
    /// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
    /// for stream in listener.incoming() {
    ///     match stream {
    ///         Ok(stream) => println!("accepted {}", stream.peer_addr()?),
    ///         Err(err) => eprintln!("accept failed: {err}"),
    ///     }
    /// }
    /// // The listener was closed, or lost its broker connection.
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            listener: self,
            ended: false,
        }
    }

    /// The address this listener listens on: the broker and the queue.
    /// Of a cluster, the broker is the node the listener is connected to,
    /// which changes when it [reconnects](StreamOptions::reconnect) to
    /// another.
    ///
    /// ```no_run
    /// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
    /// assert_eq!(listener.local_addr()?.queue(), "echo");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<Addr> {
        Ok(self.local())
    }

    fn local(&self) -> Addr {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        // Full: a stop is on its way; disconnected: the thread is ending,
        // but may still hold the connection (its prepared streams close
        // after it lets go of `stop`): wait for it either way.
        let _ = self.stop.try_send(());
        let _ = self.alive.recv_timeout(CLOSE_WAIT);
        // Streams connected but never accepted are reset as they drop.
        while let Ok(connected) = self.accepted.try_recv() {
            drop(connected);
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local())
            .finish()
    }
}

/// The iterator [`Listener::incoming`] returns; it ends once the listener
/// is closed or has lost its broker connection for good.
///
/// ```no_run
/// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
/// let first: amqp_stream::Stream = listener.incoming().next().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a Listener,
    /// The listener's thread has ended and said so.
    ended: bool,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<Stream>;

    fn next(&mut self) -> Option<io::Result<Stream>> {
        if self.ended {
            return None;
        }
        let next = self.listener.next_accepted();
        // An error is the thread's last word: it has ended.
        self.ended = !matches!(next, Some(Ok(_)));
        next.map(|accepted| accepted.map(|(stream, _)| stream))
    }
}

/// A stream whose handshake is done, on its way to `accept`. Dropped
/// without being accepted (the listener closed or dropped), it resets
/// the stream, so the client sees it end abortively and not with a clean
/// EOF it would take for the server's answer.
struct Connected {
    established: Option<Established>,
    peer: Addr,
    connection: Arc<BrokerConnection>,
}

impl Connected {
    fn into_stream(mut self, options: &StreamOptions) -> (Stream, Addr) {
        let established = self.established.take().expect("taken only here");
        let connection = Arc::clone(&self.connection);
        let stream = Stream::from_established(connection, established, options.clone());
        (stream, self.peer.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(established) = self.established.take() {
            debug!(
                "resetting the stream from {}: the listener closed",
                self.peer
            );
            let why = "the listener closed".to_string();
            // Recorded too: should the worker's queue be full, it still
            // finds the reset when the channel disconnects.
            established.shared.set_ending(Ending::Reset(why.clone()));
            let _ = established.outbound.try_send(Outbound::Reset(why));
        }
    }
}

/// What the listener's thread works with.
struct Backlog {
    connection: Arc<BrokerConnection>,
    /// The listener's address, updated when it reconnects.
    local: Arc<Mutex<Addr>>,
    options: StreamOptions,
    queue: String,
    /// Streams connected but not yet accepted (bounded: the backlog).
    accepted: Sender<io::Result<Connected>>,
    /// One message per call of a shared listener's `accept`.
    wanted: Receiver<()>,
    /// A message after `accept` took a stream: the backlog has room.
    room: Receiver<()>,
    /// How many calls of a shared listener's `accept` wait for a stream.
    demand: Cell<usize>,
    stop: Receiver<()>,
    /// Streams prepared for the next requests.
    spares: SparePool,
}

/// A request whose stream is in its handshake.
struct Answering {
    stream: Pending,
    peer: Addr,
    client: Client,
}

/// Where a client receives its answer: its queue and, in version 3, its
/// stream id.
struct Client {
    queue: String,
    stream: Option<String>,
}

/// Why one session of the listener's thread ended.
enum Ended {
    /// The listener was dropped, or its first bind failed (reported).
    Stopped,
    /// The broker connection (or the queue) was lost.
    Lost(Error),
    /// A later session could not bind (the queue still held by the old
    /// connection, say): try again after a growing delay.
    Unbound(Error),
}

/// The listener's thread: listens until the listener is dropped and,
/// with [`StreamOptions::reconnect`], connects again after each loss of
/// the broker connection.
fn run(mut backlog: Backlog, setup: Sender<Result<(), Error>>) {
    let mut setup = Some(setup);
    let (first_delay, _) = RECONNECT_DELAYS;
    let mut delay = first_delay;
    loop {
        let (err, was_listening) = match listen(&backlog, setup.take()) {
            Ended::Stopped => break,
            Ended::Lost(err) => (err, true),
            Ended::Unbound(err) => (err, false),
        };
        if !backlog.options.get_reconnect() {
            let _ = backlog.accepted.try_send(Err(err.into()));
            break;
        }
        warn!("listener {:?}: {err}; connecting again", backlog.queue);
        // Back off from the start only after a session that listened.
        if was_listening {
            delay = first_delay;
        } else if !backlog.pause(&mut delay) {
            break;
        }
        if !backlog.reconnect(&mut delay) {
            break;
        }
    }
}

/// One session of the listener's thread, on one broker connection: owns
/// the control queue's channel and consumer, answers connection requests
/// while there is room in the backlog, and queues each stream for
/// `accept` once its handshake is done. Handshakes run in the streams' own
/// threads, side by side. `setup` hears whether binding worked (the first
/// session only; later ones report failures as a loss, to retry).
fn listen(backlog: &Backlog, setup: Option<Sender<Result<(), Error>>>) -> Ended {
    let queue = backlog.queue.clone();
    let failed = |err: Error| match &setup {
        Some(setup) => {
            let _ = setup.send(Err(err));
            Ended::Stopped
        }
        None => Ended::Unbound(err),
    };
    let channel = match backlog
        .connection
        .open_channel(&format!("listening on {queue:?}"))
    {
        Ok(channel) => channel,
        Err(err) => return failed(err),
    };
    let shared = backlog.options.get_shared();
    let replicated = backlog.options.get_replicated();
    let consumer = match declare_and_consume(&channel, &queue, shared, replicated) {
        Ok(consumer) => consumer,
        Err(err) => return failed(err),
    };
    if let Some(setup) = setup
        && setup.send(Ok(())).is_err()
    {
        worker::cancel_consumer(&consumer);
        return Ended::Stopped;
    }
    debug!("listening on {queue:?}");
    backlog.spares.refill();
    let mut answering: Vec<Answering> = Vec::new();
    let ended = loop {
        let mut waiting = Select::new();
        let stop = waiting.recv(&backlog.stop);
        let wanted = shared.then(|| waiting.recv(&backlog.wanted));
        let has_room = backlog.has_room(answering.len());
        let requests = has_room.then(|| waiting.recv(consumer.receiver()));
        // A full backlog waits for `accept` to make room: it takes no
        // requests, and nothing else would wake it.
        let room = (!has_room).then(|| waiting.recv(&backlog.room));
        let answers: Vec<usize> = answering
            .iter()
            .map(|a| waiting.recv(a.stream.outcome()))
            .collect();
        let ready = waiting.select();
        let flow = match ready.index() {
            i if i == stop => {
                let _ = ready.recv(&backlog.stop);
                ControlFlow::Break(Ended::Stopped)
            }
            i if Some(i) == wanted => {
                if ready.recv(&backlog.wanted).is_ok() {
                    backlog.demand.set(backlog.demand.get() + 1);
                }
                ControlFlow::Continue(())
            }
            i if Some(i) == room => {
                let _ = ready.recv(&backlog.room);
                ControlFlow::Continue(())
            }
            i if Some(i) == requests => {
                let message = ready.recv(consumer.receiver());
                backlog.take(&channel, &consumer, message, &mut answering)
            }
            i => {
                let k = answers
                    .iter()
                    .position(|&arm| arm == i)
                    .expect("every other arm is an answer");
                let outcome = ready.recv(answering[k].stream.outcome());
                let done = answering.swap_remove(k);
                backlog.answered(&channel, done, outcome)
            }
        };
        if let ControlFlow::Break(ended) = flow {
            break ended;
        }
    };
    backlog.stop_listening(&channel, &consumer, answering, &ended);
    drop(consumer);
    let _ = channel.close();
    debug!("stopped listening on {queue:?}");
    ended
}

/// The first delay between attempts to reconnect a listener, and the
/// longest.
const RECONNECT_DELAYS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

impl Backlog {
    /// Opens a new broker connection (and prepares streams on it), trying
    /// again with backoff; `false` when the listener was dropped first.
    /// Of a cluster, any node will do: the one just lost is tried last.
    fn reconnect(&mut self, delay: &mut Duration) -> bool {
        loop {
            match self.connection.reopen() {
                Ok(connection) => {
                    let connection = Arc::new(connection);
                    *self.local.lock().unwrap_or_else(|e| e.into_inner()) =
                        Addr::new(connection.url().clone(), self.queue.as_str());
                    self.spares = SparePool::new(Arc::clone(&connection), self.options.clone());
                    self.connection = connection;
                    return true;
                }
                Err(err) => warn!(
                    "listener {:?}: cannot connect again yet: {err}; next attempt in {delay:?}",
                    self.queue
                ),
            }
            if !self.pause(delay) {
                return false;
            }
        }
    }

    /// Waits `delay` and doubles it (up to the longest); `false` when the
    /// listener was dropped meanwhile.
    fn pause(&self, delay: &mut Duration) -> bool {
        let (_, longest) = RECONNECT_DELAYS;
        select! {
            recv(self.stop) -> _ => false,
            recv(after(*delay)) -> _ => {
                *delay = (*delay * 2).min(longest);
                true
            }
        }
    }

    /// Lets go of the control queue: no request the listener took, or
    /// that waits for it, is left without an answer, and none is served
    /// twice.
    ///
    /// Requests whose answer is on its way were acknowledged when it
    /// went (see [`Backlog::answer`]); their streams are reset once their
    /// handshake is over. The requests held but not begun go back to the other
    /// listeners of a shared queue; with none (or for an exclusive queue,
    /// deleted with its consumer, and with it the requests waiting there)
    /// they are refused, as are those still waiting in the queue.
    fn stop_listening(
        &self,
        channel: &Channel,
        consumer: &amiquip::Consumer<'_>,
        answering: Vec<Answering>,
        ended: &Ended,
    ) {
        let queue = &self.queue;
        let streams: Vec<_> = answering.into_iter().map(|a| (a.stream, a.peer)).collect();
        // A shared queue outlives us when other listeners consume it: the
        // requests we hold go back to them.
        let others_listen = self.options.get_shared()
            && matches!(ended, Ended::Stopped)
            && channel
                .queue_declare_passive(queue.as_str())
                .is_ok_and(|q| q.declared_consumer_count().unwrap_or(0) > 1);
        let refusal = format!("connection refused: the listener on {queue:?} closed");
        if !others_listen {
            // Deleted with our consumer, the queue would take the requests
            // waiting in it along: refuse them first. Those the broker
            // hands the consumer meanwhile are among `held` below.
            loop {
                match channel.basic_get(queue.as_str(), true) {
                    Ok(Some(get)) => refuse_request(channel, &get.delivery, &refusal),
                    Ok(None) => break,
                    Err(err) => {
                        debug!("listener {queue:?}: {err}");
                        break;
                    }
                }
            }
        }
        // Stop deliveries (the queue is deleted with its last consumer,
        // unless it is replicated), then answer the requests we hold.
        for request in worker::cancel_consumer(consumer) {
            if others_listen {
                if let Err(err) = request.nack(channel, true) {
                    debug!("listener {queue:?}: {err}");
                }
            } else {
                refuse_request(channel, &request, &refusal);
            }
        }
        // A replicated queue outlives its consumers: the last listener
        // deletes it, so that later connects are refused at once. (Not
        // with `if_unused`, which quorum queues refuse by closing the whole
        // connection; a listener binding in the instant since the count
        // above loses its consumer, and binds again if it reconnects.)
        let last =
            self.options.get_replicated() && matches!(ended, Ended::Stopped) && !others_listen;
        if last
            && let Err(err) = channel.queue_delete(queue.as_str(), QueueDeleteOptions::default())
        {
            debug!("listener {queue:?}: not deleting the queue: {err}");
        }
        // Streams still in their handshake finish it and, dropped
        // unaccepted, reset.
        for (stream, peer) in streams {
            if let Ok(established) = stream.wait() {
                drop(Connected {
                    established: Some(established),
                    peer,
                    connection: Arc::clone(&self.connection),
                });
            }
        }
    }

    /// Whether to take another request, with `answering` handshakes
    /// running: an exclusive listener takes one while its stream has a
    /// place in the backlog; a shared one only for an `accept` that waits.
    fn has_room(&self, answering: usize) -> bool {
        if self.options.get_shared() {
            answering < self.demand.get()
        } else {
            self.accepted.len() + answering < usize::from(BACKLOG)
        }
    }

    /// Handles one message from the control queue's consumer.
    fn take(
        &self,
        channel: &Channel,
        consumer: &amiquip::Consumer<'_>,
        message: Result<ConsumerMessage, crossbeam_channel::RecvError>,
        answering: &mut Vec<Answering>,
    ) -> ControlFlow<Ended> {
        match message {
            Ok(ConsumerMessage::Delivery(request)) => {
                if let Some(started) = self.answer(channel, consumer, request) {
                    answering.push(started);
                }
                ControlFlow::Continue(())
            }
            Ok(ConsumerMessage::ServerClosedChannel(err))
            | Ok(ConsumerMessage::ServerClosedConnection(err)) => ControlFlow::Break(Ended::Lost(
                Error::broker(format!("listening on {:?}", self.queue), err),
            )),
            Ok(ConsumerMessage::ServerCancelled) => ControlFlow::Break(Ended::Lost(Error::broker(
                format!("listening on {:?}: the queue was deleted", self.queue),
                amiquip::Error::ClientClosedChannel,
            ))),
            Ok(_) | Err(_) => ControlFlow::Break(Ended::Lost(Error::broker(
                format!("listening on {:?}", self.queue),
                amiquip::Error::EventLoopDropped,
            ))),
        }
    }

    /// Checks one request and, if it is good, starts its stream's
    /// handshake.
    fn answer(
        &self,
        channel: &Channel,
        consumer: &amiquip::Consumer<'_>,
        request: Delivery,
    ) -> Option<Answering> {
        let queue = &self.queue;
        let parsed = handshake::parse_request(&request.body, &request.properties);
        let (client, offer, client_message_cost) = match parsed {
            Ok(parsed) => (
                Client {
                    queue: parsed.client_queue.to_string(),
                    stream: parsed.stream_id.map(str::to_string),
                },
                parsed.offer,
                parsed.message_cost,
            ),
            Err(reason) => {
                warn!("listener {queue:?}: rejected a malformed connection request: {reason}");
                if let Err(err) = consumer.reject(request, false) {
                    debug!("listener {queue:?}: {err}");
                }
                return None;
            }
        };
        let pin = self.options.get_protocol_version();
        let version = match handshake::server_version(offer, pin, client.stream.is_some()) {
            Ok(version) => version,
            Err(refusal) => {
                warn!("listener {queue:?}: refused {:?}: {refusal}", client.queue);
                refuse(channel, &client, &refusal);
                if let Err(err) = consumer.ack(request) {
                    debug!("listener {queue:?}: {err}");
                }
                return None;
            }
        };
        let role = Role::Server {
            client_queue: client.queue.clone(),
            version,
            offer,
            client_stream: client.stream.clone(),
            client_message_cost,
        };
        let peer_name = match &client.stream {
            Some(id) => format!("{}#{id}", client.queue),
            None => client.queue.clone(),
        };
        let peer = Addr::new(self.connection.url().clone(), peer_name);
        match worker::begin(
            &self.connection,
            role,
            self.options.clone(),
            Some(&self.spares),
        ) {
            Ok(stream) => {
                // Acknowledged as the answer goes out, not once it is
                // confirmed: should this listener die in between, the
                // broker must not give the request to another listener of
                // a shared queue, whose second answer would reach a client
                // already connected here (a version-1 client would read
                // it as a FIN).
                if let Err(err) = consumer.ack(request) {
                    debug!("listener {queue:?}: {err}");
                }
                Some(Answering {
                    stream,
                    peer,
                    client,
                })
            }
            Err(err) => {
                warn!("listener {queue:?}: could not answer {peer}: {err}");
                refuse(channel, &client, &format!("connection refused: {err}"));
                if let Err(err) = consumer.ack(request) {
                    debug!("listener {queue:?}: {err}");
                }
                None
            }
        }
    }

    /// Finishes a request whose handshake is over: queues its stream for
    /// `accept`. A stream that failed costs that one request only: its
    /// client is refused when our answer cannot have reached it, and the
    /// listener goes on unless the broker connection itself is gone.
    fn answered(
        &self,
        channel: &Channel,
        done: Answering,
        outcome: Result<SetupOutcome, crossbeam_channel::RecvError>,
    ) -> ControlFlow<Ended> {
        let queue = &self.queue;
        let (peer, client) = (done.peer, done.client);
        match done.stream.finish(outcome) {
            Ok(established) => {
                debug!("listener {queue:?}: connected {peer}");
                let connected = Connected {
                    established: Some(established),
                    peer,
                    connection: Arc::clone(&self.connection),
                };
                // There is room: requests are taken only while there is.
                match self.accepted.try_send(Ok(connected)) {
                    Ok(()) => {
                        self.demand.set(self.demand.get().saturating_sub(1));
                        ControlFlow::Continue(())
                    }
                    Err(_) => ControlFlow::Break(Ended::Stopped),
                }
            }
            Err(err @ Error::Broker { .. }) if self.connection_lost() => {
                ControlFlow::Break(Ended::Lost(err))
            }
            Err(err) => {
                warn!("listener {queue:?}: could not answer the request from {peer}: {err}");
                // The broker refused to set up the stream's queue (a limit
                // of the virtual host, say): it discarded our answer with
                // the rest of that channel's work.
                if err.is_channel_refusal() {
                    let why = format!(
                        "connection refused: the listener could not set up the stream: {err}"
                    );
                    refuse(channel, &client, &why);
                }
                ControlFlow::Continue(())
            }
        }
    }

    /// Whether the broker connection the listener runs on has ended.
    fn connection_lost(&self) -> bool {
        self.connection.wait_closed(Some(Instant::now()))
    }
}

/// Refuses a request from the control queue, if it is a connection
/// request (malformed ones have nobody to tell).
fn refuse_request(channel: &Channel, request: &Delivery, why: &str) {
    if let Ok(request) = handshake::parse_request(&request.body, &request.properties) {
        let client = Client {
            queue: request.client_queue.to_string(),
            stream: request.stream_id.map(str::to_string),
        };
        refuse(channel, &client, why);
    }
}

/// Refuses a connection request: a handshake answer with a body (which
/// says why) is a refusal in every protocol version.
///
/// A version-3 client receives on its connection's queue: the refusal
/// names its stream in `correlation_id`, as every frame to it does.
fn refuse(channel: &Channel, client: &Client, why: &str) {
    let mut properties = amiquip::AmqpProperties::default();
    if let Some(id) = &client.stream {
        properties = properties.with_correlation_id(id.clone());
    }
    let _ = channel.basic_publish(
        "",
        amiquip::Publish::with_properties(why.as_bytes(), client.queue.clone(), properties),
    );
}

/// Declares the control queue and consumes it: alone, or shared with
/// other listeners (`replicated` over a cluster's nodes).
fn declare_and_consume<'a>(
    channel: &'a Channel,
    queue: &str,
    shared: bool,
    replicated: bool,
) -> Result<amiquip::Consumer<'a>, Error> {
    channel
        .queue_declare(
            queue,
            protocol::listener_queue_declare_options(shared, replicated),
        )
        .map_err(|err| match err {
            // Held exclusively by another connection; or declared by a
            // listener of the other kind (replicated or not).
            amiquip::Error::ServerClosedChannel { code: 405, .. } => Error::AddrInUse {
                queue: queue.to_string(),
            },
            amiquip::Error::ServerClosedChannel {
                code: 406,
                ref message,
                ..
            } if message.contains("inequivalent arg") => Error::AddrInUse {
                queue: queue.to_string(),
            },
            other => Error::broker(format!("declaring queue {queue:?}"), other),
        })?;
    channel
        .qos(0, if shared { SHARED_PREFETCH } else { BACKLOG }, false)
        .map_err(|err| Error::broker(format!("setting the backlog of {queue:?}"), err))?;
    channel
        .basic_consume(
            queue,
            ConsumerOptions {
                no_ack: false,
                exclusive: !shared,
                ..ConsumerOptions::default()
            },
        )
        .map_err(|err| match err {
            amiquip::Error::ServerClosedChannel { code: 403, .. }
            | amiquip::Error::ServerClosedChannel { code: 405, .. } => Error::AddrInUse {
                queue: queue.to_string(),
            },
            other => Error::broker(format!("consuming queue {queue:?}"), other),
        })
}
