//! `Connector`: one broker connection shared by many streams and listeners.

use crate::error::Error;
use crate::listener::Listener;
use crate::options::{StreamOptions, check_timeout, deadline_after};
use crate::protocol;
use crate::stream::Stream;
use crate::transport::connection::BrokerConnection;
use crate::transport::connection::url::BrokerUrl;
use crate::transport::connection::urls::BrokerUrls;
use crate::transport::worker::spare::SparePool;
use crate::transport::worker::{self, Role, Spares};
use crate::version::ProtocolVersion;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One AMQP connection to a broker, shared by every stream and listener
/// made through it.
///
/// Opening a broker connection costs several round trips; a `Connector`
/// pays that once, so each further stream costs only its own handshake.
///
/// What a stream costs the connection depends on its
/// [protocol version](crate::wire): a version-3 stream (a connector's
/// streams to an amqp-stream listener, from the second on) has no AMQP
/// channel, queue or thread of its own; all of them share the
/// connection's one queue and one publishing channel, and setup is one
/// message each way. A version-1 or version-2 stream (the first stream to
/// a listener, a Go peer, or a pinned version) takes an AMQP channel, a
/// queue and a thread of its own; for those, after its first `connect`
/// the connector keeps [`prepared_streams`](StreamOptions::prepared_streams)
/// set up ahead (channel, queue and consumer ready).
///
/// The broker limits the channels of a connection (`channel_max`: 2047
/// by default in RabbitMQ, often set lower). When every channel is in use
/// the connector opens another connection to the same broker with the
/// same login and goes on there, so it carries any number of streams; it
/// logs that at `info`. The connection state it reports
/// ([`is_closed`](Connector::is_closed) and the `wait_closed` methods) is
/// that of its first connection.
///
/// Given the nodes of a RabbitMQ cluster as a comma-separated list of
/// URLs (see [`BrokerUrls`]), it connects to the first that answers, in a
/// random order.
///
/// It is cheap to clone (clones share the connection) and `Send + Sync`.
/// Streams and listeners keep the connection open after every
/// `Connector` handle is dropped; it closes when the last of them goes.
///
/// ```no_run
/// use amqp_stream::Connector;
/// use std::io::Write;
///
/// let connector = Connector::open("amqp://guest:guest@127.0.0.1:5672/%2f")?;
/// let mut a = connector.connect("echo")?;
/// let mut b = connector.connect("echo")?;
/// a.write_all(b"one")?;
/// b.write_all(b"two")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Connector {
    connection: Arc<BrokerConnection>,
    options: StreamOptions,
    /// Streams prepared for `connect`; `None` for a one-stream connector.
    spares: Option<Arc<SparePool>>,
}

impl Connector {
    /// Connects and logs in to the broker at `url` with default stream
    /// options.
    ///
    /// Fails with `HostUnreachable` when the broker cannot be reached (not
    /// running, or not at that address), `PermissionDenied` for bad
    /// credentials or virtual host and `InvalidInput` for a malformed URL.
    ///
    /// ```no_run
    /// let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open(url: &str) -> io::Result<Connector> {
        Connector::open_with(url, StreamOptions::default())
    }

    /// Connects to the broker at `url`; streams and listeners made through
    /// this connector use `options`.
    ///
    /// ```no_run
    /// use amqp_stream::{Connector, StreamOptions};
    /// let options = StreamOptions::new().prefetch(16);
    /// let connector = Connector::open_with("amqp://127.0.0.1", options)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn open_with(url: &str, options: StreamOptions) -> io::Result<Connector> {
        let mut connector = Connector::open_for_one(url, options, None)?;
        let spares = SparePool::new(Arc::clone(&connector.connection), connector.options.clone());
        connector.spares = Some(Arc::new(spares));
        Ok(connector)
    }

    /// A connector for one stream, which prepares none ahead.
    pub(crate) fn open_for_one(
        url: &str,
        options: StreamOptions,
        timeout: Option<Duration>,
    ) -> io::Result<Connector> {
        let brokers: BrokerUrls = url.parse()?;
        Ok(Connector {
            connection: Arc::new(BrokerConnection::open(&brokers, timeout)?),
            options,
            spares: None,
        })
    }

    /// Connects a stream to the listener on `queue`, over this connection.
    /// Fails with `InvalidInput`, sending nothing, for a queue name that is
    /// empty or longer than 255 bytes.
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// let stream = connector.connect("echo")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect(&self, queue: &str) -> io::Result<Stream> {
        let timeout = self.options.get_handshake_timeout();
        self.connect_until(queue, timeout.and_then(deadline_after), timeout)
    }

    /// Like [`connect`](Connector::connect), failing with `TimedOut` when
    /// the listener has not answered within `timeout` (`Duration::MAX`:
    /// no limit), whatever held it up: a listener slow to answer, or a
    /// broker that does not answer the stream's setup (a link that
    /// stalled).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// let stream = connector.connect_timeout("echo", Duration::from_secs(1))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect_timeout(&self, queue: &str, timeout: Duration) -> io::Result<Stream> {
        check_timeout(Some(timeout))?;
        self.connect_until(queue, deadline_after(timeout), Some(timeout))
    }

    /// Connects the one stream of a connector made for it
    /// ([`open_for_one`](Self::open_for_one)), within `deadline`; the
    /// stream owns the connection (dropping it closes it). A
    /// connect that timed out may leave broker calls waiting on the
    /// connection (on a link that stalled): the connection is closed in
    /// the background, the broker given a short while to answer, so that
    /// nothing waits on it for ever.
    pub(crate) fn connect_own(
        self,
        queue: &str,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> io::Result<Stream> {
        let connected = self.connect_until(queue, deadline, timeout);
        if let Err(err) = &connected
            && err.kind() == io::ErrorKind::TimedOut
        {
            Arc::clone(&self.connection).close_in_background();
        }
        connected.map(Stream::owning_its_connection)
    }

    pub(crate) fn connect_until(
        &self,
        queue: &str,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> io::Result<Stream> {
        protocol::check_queue_name(queue, "the listener's")?;
        let pinned = self.options.get_protocol_version();
        let remembered = pinned.is_none() && self.connection.knows_v3(queue);
        let v3 = pinned == Some(ProtocolVersion::V3) || remembered;
        let start = |v3: bool| {
            let role = Role::Client {
                listener_queue: queue.to_string(),
                deadline,
                timeout,
                v3,
                listener_connection: v3
                    .then(|| self.connection.v3_listener_connection(queue))
                    .flatten(),
            };
            worker::start(
                &self.connection,
                role,
                self.options.clone(),
                self.spares.as_deref().map(|spares| spares as &dyn Spares),
            )
        };
        let established = match start(v3) {
            Err(Error::ConnectionRefused { .. } | Error::Protocol { .. }) if remembered => {
                // The listener no longer takes version 3 (restarted as an
                // older or pinned one, say): once more as a version-2 SYN,
                // which any listener answers.
                self.connection.learned_v3(queue, false);
                return Ok(Stream::from_established(
                    Arc::clone(&self.connection),
                    start(false)?,
                    self.options.clone(),
                ));
            }
            Err(err) => {
                if remembered {
                    // Perhaps an older listener that cannot answer it:
                    // the next stream asks as version 2.
                    self.connection.learned_v3(queue, false);
                }
                return Err(err.into());
            }
            Ok(established) => established,
        };
        if !v3 {
            // The next stream to this listener skips its queue if it can.
            self.connection.learned_v3(queue, established.upgrade);
        } else if let Some(from) = established
            .peer_connection
            .as_deref()
            .filter(|_| remembered)
        {
            // Its connection queue, while there, vouches for the listener.
            self.connection.answered_v3(queue, from);
        }
        Ok(Stream::from_established(
            Arc::clone(&self.connection),
            established,
            self.options.clone(),
        ))
    }

    /// Listens on `queue` over this connection.
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// let listener = connector.bind("echo")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(&self, queue: &str) -> io::Result<Listener> {
        Listener::start(Arc::clone(&self.connection), queue, self.options.clone())
    }

    /// Listens on `queue` over this connection with `options` instead of
    /// the connector's own: a [shared](StreamOptions::shared) listener,
    /// say, on a connector that also connects streams.
    ///
    /// ```no_run
    /// use amqp_stream::{Connector, StreamOptions};
    /// let connector = Connector::open("amqp://127.0.0.1")?;
    /// let listener = connector.bind_with("api", StreamOptions::new().shared(true))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind_with(&self, queue: &str, options: StreamOptions) -> io::Result<Listener> {
        Listener::start(Arc::clone(&self.connection), queue, options)
    }

    /// The broker this connector is connected to: of a cluster's nodes
    /// given as a [list](crate::BrokerUrls), the one it reached.
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// assert_eq!(connector.broker().port(), 5672);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn broker(&self) -> &BrokerUrl {
        self.connection.url()
    }

    /// Our end of the TCP connection to the broker, as the broker sees it
    /// (its `peer_host`/`peer_port` in `rabbitmqctl list_connections`).
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// println!("connected from {}", connector.local_socket_addr());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_socket_addr(&self) -> SocketAddr {
        self.connection.local_addr()
    }

    /// Whether the broker connection has ended: lost (network, missed
    /// heartbeats) or closed by the broker. Streams and listeners on an
    /// ended connection fail; open a new `Connector` to go on.
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// if connector.is_closed() {
    ///     eprintln!("lost the broker");
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.connection.wait_closed(Some(Instant::now()))
    }

    /// Blocks until the broker connection ends (see
    /// [`is_closed`](Connector::is_closed)); for a supervisor thread that
    /// reconnects. While it waits it logs, at `warn`, when the broker
    /// blocks publishing on this connection (a resource alarm) and, at
    /// `info`, when it lifts the block.
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// let watched = connector.clone();
    /// std::thread::spawn(move || {
    ///     watched.wait_closed();
    ///     eprintln!("lost the broker; reconnecting");
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_closed(&self) {
        self.connection.wait_closed(None);
    }

    /// Like [`wait_closed`](Connector::wait_closed), giving up after
    /// `timeout` (`Duration::MAX`: never); answers whether the connection
    /// has ended.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// assert!(!connector.wait_closed_timeout(Duration::from_millis(10)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_closed_timeout(&self, timeout: Duration) -> bool {
        self.connection.wait_closed(deadline_after(timeout))
    }

    /// Closes the broker connection now, properly (AMQP
    /// `connection.close`, which the broker logs as a normal close and
    /// answers by deleting the queues of this connection at once), and
    /// returns once the broker has confirmed it.
    ///
    /// Unlike dropping the last handle, this does not wait for the
    /// streams and listeners still on the connection, in other threads
    /// too: from then on they fail as on a lost connection (a listener
    /// that [reconnects](StreamOptions::reconnect) connects again, so drop
    /// or close listeners first). Every clone of this connector is closed
    /// with it. A program that exits (its other threads end with it) calls
    /// this last, so that the broker never sees its connection cut.
    ///
    /// It waits for the broker's answer as long as opening the connection
    /// may take (the URL's `connection_timeout`, else 10 s); a broker that
    /// has not answered by then (a link that stalled) has the socket shut
    /// under it, and `close` fails with `TimedOut`. Fails when the
    /// connection had already ended otherwise: lost, or closed by the
    /// broker. Closing twice does nothing more.
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// let listener = connector.bind("echo")?;
    /// drop(listener);
    /// connector.close()?;
    /// assert!(connector.is_closed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close(&self) -> io::Result<()> {
        Ok(self.connection.close()?)
    }

    /// The options streams made through this connector use.
    ///
    /// ```no_run
    /// # let connector = amqp_stream::Connector::open("amqp://127.0.0.1")?;
    /// assert_eq!(connector.options(), &amqp_stream::StreamOptions::default());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn options(&self) -> &StreamOptions {
        &self.options
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("broker", self.connection.url())
            .field("local_socket_addr", &self.connection.local_addr())
            .finish()
    }
}
