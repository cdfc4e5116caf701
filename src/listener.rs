//! `Listener`: accepts streams on a named control queue, used like a
//! `TcpListener`.

use crate::addr::Addr;
use crate::connection::BrokerConnection;
use crate::connector::Connector;
use crate::error::Error;
use crate::options::StreamOptions;
use crate::protocol;
use crate::stream::Stream;
use crate::worker::{self, Role};
use amiquip::{Channel, ConsumerMessage, ConsumerOptions, Delivery};
use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};
use log::{debug, warn};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// How many connection requests the broker may hand a listener before it
/// accepts them (the AMQP prefetch of the control queue).
const BACKLOG: u16 = 128;

/// How long dropping a listener waits for its thread to refuse the
/// requests it held and delete the queue.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Listens for streams on a named queue (the "port"), the way a
/// [`std::net::TcpListener`] listens on a port.
///
/// Binding declares the queue (exclusive to this connection, deleted
/// with it); a second listener on the same name fails with `AddrInUse`.
/// [`accept`](Listener::accept) and [`incoming`](Listener::incoming) hand
/// out connected [`Stream`]s. Malformed requests on the queue are logged
/// at `warn`, rejected and skipped; they never end the listener.
///
/// Dropping the listener deletes its queue; clients whose requests it
/// held but had not accepted are told the connection is refused.
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
    connection: Arc<BrokerConnection>,
    local: Addr,
    options: StreamOptions,
    requests: Receiver<ConsumerMessage>,
    commands: Sender<Command>,
    alive: Receiver<()>,
}

/// What `accept` asks of the listener's thread.
enum Command {
    /// The request was handled (accepted or refused): acknowledge it.
    Ack(Delivery),
    /// The request is malformed: reject it, without requeue.
    Reject(Delivery),
    /// The listener is dropped.
    Close,
}

impl Listener {
    /// Listens on `queue` over a new broker connection that this listener
    /// and the streams it accepts share.
    ///
    /// Fails with `AddrInUse` when another listener holds `queue`,
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
    /// let listener = Listener::bind_with("amqp://127.0.0.1", "echo", &options)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind_with(url: &str, queue: &str, options: &StreamOptions) -> io::Result<Listener> {
        Connector::open_with(url, options.clone())?.bind(queue)
    }

    pub(crate) fn start(
        connection: Arc<BrokerConnection>,
        queue: &str,
        options: StreamOptions,
    ) -> io::Result<Listener> {
        if queue.is_empty() || queue.len() > 255 {
            return Err(Error::InvalidArgument(format!(
                "a listener's queue name must be 1 to 255 bytes, not {}",
                queue.len()
            ))
            .into());
        }
        let (setup_tx, setup_rx) = bounded(1);
        let (commands_tx, commands_rx) = unbounded();
        let (alive_tx, alive_rx) = bounded::<()>(0);
        let thread_connection = Arc::clone(&connection);
        let thread_queue = queue.to_string();
        std::thread::Builder::new()
            .name("amqp-stream-listener".to_string())
            .spawn(move || {
                let _alive = alive_tx;
                run(thread_connection, thread_queue, setup_tx, commands_rx)
            })?;
        let requests = setup_rx.recv().unwrap_or_else(|_| {
            Err(Error::broker(
                format!("listening on {queue:?}"),
                amiquip::Error::EventLoopDropped,
            ))
        })?;
        Ok(Listener {
            local: Addr::new(connection.url().clone(), queue),
            connection,
            options,
            requests,
            commands: commands_tx,
            alive: alive_rx,
        })
    }

    /// Waits for the next connection request and completes its handshake;
    /// returns the stream and the address of the client's end.
    ///
    /// Malformed requests and clients that vanished before the answer are
    /// logged at `warn` and skipped. Fails with `ConnectionAborted` when
    /// the broker connection is lost.
    ///
    /// ```no_run
    /// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
    /// let (stream, peer) = listener.accept()?;
    /// println!("accepted {peer}");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn accept(&self) -> io::Result<(Stream, Addr)> {
        loop {
            let message = select! {
                recv(self.requests) -> message => message.ok(),
                recv(self.alive) -> _ => self.requests.try_recv().ok(),
            };
            let mut request = match message {
                Some(ConsumerMessage::Delivery(delivery)) => delivery,
                Some(ConsumerMessage::ServerClosedChannel(err))
                | Some(ConsumerMessage::ServerClosedConnection(err)) => {
                    return Err(Error::broker(
                        format!("listening on {:?}", self.local.queue()),
                        err,
                    )
                    .into());
                }
                Some(_) | None => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the listener on {:?} stopped", self.local.queue()),
                    ));
                }
            };
            let client_queue = match protocol::parse_request(&request.body, &request.properties) {
                Ok(client_queue) => client_queue.to_string(),
                Err(reason) => {
                    warn!(
                        "listener {:?}: rejected a malformed connection request: {reason}",
                        self.local.queue()
                    );
                    request.body = Vec::new();
                    let _ = self.commands.send(Command::Reject(request));
                    continue;
                }
            };
            let role = Role::Server {
                client_queue: client_queue.clone(),
            };
            let started = worker::start(Arc::clone(&self.connection), role, self.options.clone());
            let _ = self.commands.send(Command::Ack(request));
            match started {
                Ok(established) => {
                    let peer = Addr::new(self.connection.url().clone(), client_queue);
                    debug!("listener {:?}: accepted {peer}", self.local.queue());
                    let stream = Stream::from_established(
                        Arc::clone(&self.connection),
                        established,
                        self.options.clone(),
                    );
                    return Ok((stream, peer));
                }
                Err(Error::Broker { context, source }) => {
                    return Err(Error::Broker { context, source }.into());
                }
                Err(err) => warn!(
                    "listener {:?}: could not answer the request from {client_queue:?}: {err}",
                    self.local.queue()
                ),
            }
        }
    }

    /// An endless iterator over accepted streams, like
    /// [`TcpListener::incoming`](std::net::TcpListener::incoming).
    ///
    /// ```no_run
    /// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
    /// for stream in listener.incoming() {
    ///     let stream = stream?;
    ///     println!("accepted {}", stream.peer_addr()?);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address this listener listens on: the broker and the queue.
    ///
    /// ```no_run
    /// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
    /// assert_eq!(listener.local_addr()?.queue(), "echo");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<Addr> {
        Ok(self.local.clone())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.commands.send(Command::Close).is_ok() {
            let _ = self.alive.recv_timeout(CLOSE_WAIT);
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish()
    }
}

/// The iterator [`Listener::incoming`] returns; it never ends.
///
/// ```no_run
/// # let listener = amqp_stream::Listener::bind("amqp://127.0.0.1", "echo")?;
/// let first: amqp_stream::Stream = listener.incoming().next().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a Listener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<Stream>;

    fn next(&mut self) -> Option<io::Result<Stream>> {
        Some(self.listener.accept().map(|(stream, _)| stream))
    }
}

/// The listener's thread: owns the control queue's channel and consumer.
fn run(
    connection: Arc<BrokerConnection>,
    queue: String,
    setup: Sender<Result<Receiver<ConsumerMessage>, Error>>,
    commands: Receiver<Command>,
) {
    let channel = match connection.open_channel(&format!("listening on {queue:?}")) {
        Ok(channel) => channel,
        Err(err) => {
            let _ = setup.send(Err(err));
            return;
        }
    };
    let consumer = match declare_and_consume(&channel, &queue) {
        Ok(consumer) => consumer,
        Err(err) => {
            let _ = setup.send(Err(err));
            return;
        }
    };
    if setup.send(Ok(consumer.receiver().clone())).is_err() {
        worker::cancel_consumer(&consumer);
        return;
    }
    debug!("listening on {queue:?}");
    for command in commands.iter() {
        let result = match command {
            Command::Ack(request) => consumer.ack(request),
            Command::Reject(request) => consumer.reject(request, false),
            Command::Close => break,
        };
        if let Err(err) = result {
            debug!("listener {queue:?}: {err}");
        }
    }
    // Stop deliveries (the queue is deleted with its last consumer), then
    // tell the clients whose requests we hold that nobody will answer.
    let held = worker::cancel_consumer(&consumer);
    let refusal = format!("connection refused: the listener on {queue:?} closed");
    for request in held {
        if let Ok(client_queue) = protocol::parse_request(&request.body, &request.properties) {
            let publish = amiquip::Publish::new(refusal.as_bytes(), client_queue);
            let _ = channel.basic_publish("", publish);
        }
    }
    drop(consumer);
    let _ = channel.close();
    debug!("stopped listening on {queue:?}");
}

fn declare_and_consume<'a>(
    channel: &'a Channel,
    queue: &str,
) -> Result<amiquip::Consumer<'a>, Error> {
    channel
        .queue_declare(queue, protocol::queue_declare_options())
        .map_err(|err| match err {
            amiquip::Error::ServerClosedChannel { code: 405, .. } => Error::AddrInUse {
                queue: queue.to_string(),
            },
            other => Error::broker(format!("declaring queue {queue:?}"), other),
        })?;
    channel
        .qos(0, BACKLOG, false)
        .map_err(|err| Error::broker(format!("setting the backlog of {queue:?}"), err))?;
    channel
        .basic_consume(
            queue,
            ConsumerOptions {
                no_ack: false,
                exclusive: true,
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
