//! The connection to the broker that streams and listeners share: one
//! AMQP connection, and more when its channels run out.
//!
//! The broker limits the channels of one AMQP connection (`channel_max`,
//! 2047 by default in RabbitMQ, often set lower); each version-1 or
//! version-2 stream takes one (version-3 streams share one).
//! When the connections in use have none left, another is opened to the
//! same broker with the same login, so a `Connector` carries any number
//! of streams without its user noticing.
//!
//! With the addresses of a cluster's nodes ([`BrokerUrls`]), the first
//! connection goes to the first address that answers, in a random order
//! (a reconnection tries the node it lost last), and the extra ones to
//! the same node.
//!
//! Sockets are opened here (not by amiquip) so that `TCP_NODELAY` is set:
//! without it, every small message waits for Nagle's algorithm and the
//! peer's delayed ACK, about 40 ms on Linux.

pub(crate) mod password_swap;
pub(crate) mod queue_check;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod tls_settings;
pub(crate) mod url;
pub(crate) mod urls;

use crate::error::Error;
use crate::lock::lock;
use crate::transport::bounded_wait::{self, Watchdog};
use amiquip::{
    Auth, Channel, Connection, ConnectionBlockedNotification, ConnectionOptions, ConnectionTuning,
};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, info, warn};
use password_swap::{PasswordSwap, mask};
use queue_check::QueueChecks;
use socket::BrokerSocket;
use std::any::Any;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::BrokerUrl;
use urls::{BrokerUrls, attempt_time};

/// How long opening a connection may take when the URL does not say.
pub(crate) const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The least time closing waits for the broker's answer when a caller is
/// out of time already (a stream dropped after its linger ran out): a
/// broker that answers at all answers within milliseconds.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A live connection to the broker: the first AMQP connection and any
/// extra ones opened when channels ran out. Channels are opened under its
/// lock and then moved to the thread that uses them.
pub(crate) struct BrokerConnection {
    /// The addresses it was opened with (one broker, or a cluster's nodes).
    brokers: BrokerUrls,
    /// The one of them it is connected to.
    url: BrokerUrl,
    local_addr: SocketAddr,
    /// The first connection, then the extra ones, in the order opened;
    /// empty once closed.
    connections: Mutex<Vec<Connection>>,
    /// A handle on the socket of each of `connections`, in the same order
    /// (both change only under `connections`' lock), to shut them when
    /// the broker does not answer in time: every amiquip call still
    /// waiting on them fails then. Never locked across a broker call.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    /// How long closing waits for the broker: as long as opening may.
    close_timeout: Duration,
    /// amiquip's connection-blocked notifications of the first connection;
    /// its sender lives in amiquip's I/O thread, so it disconnects when
    /// that connection ends.
    events: Receiver<ConnectionBlockedNotification>,
    /// What the layer above keeps on this connection while it lives
    /// (version 3's shared transport, set up when the first version-3
    /// stream needs it); this layer does not know its type.
    kept: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
    /// Listener queues that said they take version-3 requests, each with
    /// the connection queue its last version-3 answer came from (once one
    /// came).
    v3_listeners: Mutex<HashMap<String, Option<String>>>,
    /// The latest checks that other connections' queues exist.
    queue_checks: QueueChecks,
}

/// How many listeners' versions a connection remembers.
const REMEMBERED_LISTENERS: usize = 4096;

impl BrokerConnection {
    /// Connects to one of `brokers` and logs in, within `timeout` if
    /// given (else the URLs' `connection_timeout`, else 10 s).
    pub(crate) fn open(
        brokers: &BrokerUrls,
        timeout: Option<Duration>,
    ) -> Result<BrokerConnection, Error> {
        BrokerConnection::open_trying_last(brokers, None, timeout)
    }

    /// A new connection to the same brokers, trying the node this one is
    /// on last: what reconnects after this one was lost.
    pub(crate) fn reopen(&self) -> Result<BrokerConnection, Error> {
        BrokerConnection::open_trying_last(&self.brokers, Some(&self.url), None)
    }

    fn open_trying_last(
        brokers: &BrokerUrls,
        last: Option<&BrokerUrl>,
        timeout: Option<Duration>,
    ) -> Result<BrokerConnection, Error> {
        let (logged_in, url) = log_in_any(brokers, last, timeout)?;
        let LoggedIn {
            mut connection,
            local_addr,
            socket,
        } = logged_in;
        let events = connection
            .listen_for_connection_blocked()
            .map_err(|err| Error::broker(format!("logging in to {url}"), err))?;
        let close_timeout = timeout
            .or(url.connection_timeout())
            .unwrap_or(DEFAULT_CONNECTION_TIMEOUT);
        Ok(BrokerConnection {
            brokers: brokers.clone(),
            url,
            local_addr,
            connections: Mutex::new(vec![connection]),
            sockets: Arc::new(Mutex::new(vec![socket])),
            close_timeout,
            events,
            kept: Mutex::new(None),
            v3_listeners: Mutex::new(HashMap::new()),
            queue_checks: QueueChecks::default(),
        })
    }

    /// The checks of other connections' queues, shared by this
    /// connection's streams.
    pub(crate) fn queue_checks(&self) -> &QueueChecks {
        &self.queue_checks
    }

    /// Waits until the connection has ended (lost, or closed by the
    /// broker), or until `deadline`; answers whether it has ended. Logs
    /// the broker's flow-control notifications it sees on the way.
    pub(crate) fn wait_closed(&self, deadline: Option<Instant>) -> bool {
        loop {
            let event = match deadline {
                Some(deadline) => self.events.recv_deadline(deadline),
                None => self
                    .events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Ok(ConnectionBlockedNotification::Blocked(reason)) => warn!(
                    "the broker at {} stopped accepting messages from {}: {reason}",
                    self.url, self.local_addr
                ),
                Ok(ConnectionBlockedNotification::Unblocked) => info!(
                    "the broker at {} accepts messages from {} again",
                    self.url, self.local_addr
                ),
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// The broker this connection goes to (of a cluster: the node).
    pub(crate) fn url(&self) -> &BrokerUrl {
        &self.url
    }

    /// Our end of the TCP connection to the broker.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Opens a channel; `purpose` says what for, in errors. Takes the
    /// first connection with a channel free, opening another when none
    /// has. Fails when the first connection is gone: the connection as a
    /// whole counts as lost then (see [`wait_closed`](Self::wait_closed)).
    pub(crate) fn open_channel(&self, purpose: &str) -> Result<Channel, Error> {
        let failed = |err| Error::broker(format!("opening a channel for {purpose}"), err);
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if connections.is_empty() {
            return Err(failed(amiquip::Error::ClientClosedConnection));
        }
        let mut index = 0;
        while index < connections.len() {
            match connections[index].open_channel(None) {
                Ok(channel) => return Ok(channel),
                Err(amiquip::Error::ExhaustedChannelIds) => index += 1,
                Err(err) if index == 0 => return Err(failed(err)),
                Err(err) => {
                    // An extra connection that died: its streams have
                    // failed with it; it takes no new ones.
                    debug!("extra connection to {} ended: {err}", self.url);
                    drop(connections.remove(index));
                    drop(lock(&self.sockets).remove(index));
                }
            }
        }
        let LoggedIn {
            connection: mut extra,
            local_addr,
            socket,
        } = log_in(&self.url, None)?;
        let channel = extra.open_channel(None).map_err(failed)?;
        info!(
            "all {} connection(s) to {} have every channel in use: opened another from {local_addr}",
            connections.len(),
            self.url
        );
        connections.push(extra);
        lock(&self.sockets).push(socket);
        Ok(channel)
    }

    /// Whether the listener on `queue` said it takes version-3 requests.
    pub(crate) fn knows_v3(&self, queue: &str) -> bool {
        self.v3_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(queue)
    }

    /// The connection queue that the listener on `queue` last answered a
    /// version-3 request from, if it did.
    pub(crate) fn v3_listener_connection(&self, queue: &str) -> Option<String> {
        self.v3_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .cloned()
            .flatten()
    }

    /// Remembers whether the listener on `queue` takes version-3 requests.
    pub(crate) fn learned_v3(&self, queue: &str, takes_v3: bool) {
        let mut known = self.v3_listeners.lock().unwrap_or_else(|e| e.into_inner());
        if !takes_v3 {
            known.remove(queue);
            return;
        }
        if !known.contains_key(queue) && known.len() >= REMEMBERED_LISTENERS {
            known.clear();
        }
        known.entry(queue.to_string()).or_insert(None);
    }

    /// Remembers that the listener on `queue` answered a version-3 request
    /// from the connection queue `from`.
    pub(crate) fn answered_v3(&self, queue: &str, from: &str) {
        let mut known = self.v3_listeners.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains_key(queue) && known.len() >= REMEMBERED_LISTENERS {
            known.clear();
        }
        known.insert(queue.to_string(), Some(from.to_string()));
    }

    /// What the layer above keeps on this connection, if it is a `T`
    /// that is still `alive`. Never waits: `None` too while another
    /// caller is setting it up in [`keep`](Self::keep) (broker round
    /// trips, which a stalled link can make last), so that a caller with
    /// a deadline waits for that within its deadline only.
    pub(crate) fn kept<T: Any + Send + Sync>(&self, alive: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        let kept = match self.kept.try_lock() {
            Ok(kept) => Arc::clone(kept.as_ref()?),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                Arc::clone(poisoned.into_inner().as_ref()?)
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        kept.downcast::<T>().ok().filter(|kept| alive(kept))
    }

    /// [`kept`](Self::kept), or else what `start` sets up on this
    /// connection, kept from then on. Callers for the same `T` take turns
    /// (one `start` at a time).
    pub(crate) fn keep<T: Any + Send + Sync>(
        &self,
        alive: impl Fn(&T) -> bool,
        start: impl FnOnce(&Self) -> Result<Arc<T>, Error>,
    ) -> Result<Arc<T>, Error> {
        let mut kept = lock(&self.kept);
        if let Some(alive) = kept
            .as_ref()
            .and_then(|kept| Arc::clone(kept).downcast::<T>().ok())
            .filter(|kept| alive(kept))
        {
            return Ok(alive);
        }
        let started = start(self)?;
        *kept = Some(Arc::clone(&started) as Arc<dyn Any + Send + Sync>);
        Ok(started)
    }

    /// Closes every connection now (AMQP `connection.close`, answered by
    /// the broker), whoever still holds this one: their channels fail
    /// from then on, and so does [`open_channel`](Self::open_channel).
    /// Waits for the broker as long as opening the connection may take;
    /// see [`close_within`](Self::close_within).
    pub(crate) fn close(&self) -> Result<(), Error> {
        self.close_within(self.close_timeout)
    }

    /// [`close`](Self::close), waiting for the broker's answer `timeout`
    /// at most: then the sockets are shut (the broker sees the connection
    /// cut) and it fails with `TimedOut`. Fails when the first connection
    /// had already ended otherwise (lost, or closed by the broker);
    /// closing twice does nothing more.
    pub(crate) fn close_within(&self, timeout: Duration) -> Result<(), Error> {
        if self.connections.try_lock().is_ok_and(|c| c.is_empty()) {
            return Ok(()); // closed already: no watchdog to start
        }
        let watchdog = crate::options::deadline_after(timeout).map(|deadline| {
            let what = format!("closing the connection to {}", self.url);
            Watchdog::arm(Arc::clone(&self.sockets), deadline, what)
        });
        // A channel being opened holds the lock until the broker answers:
        // the watchdog ends that wait too.
        let mut connections = lock(&self.connections);
        let closed = close_all(&self.url, std::mem::take(&mut *connections));
        lock(&self.sockets).clear();
        drop(connections);
        let forced = watchdog.is_some_and(Watchdog::disarm);
        match closed {
            Err(_) if forced => Err(Error::TimedOut {
                what: format!("closing the connection to {}", self.url),
                after: timeout,
            }),
            closed => closed,
        }
    }

    /// Closes the connection on a thread of its own, waiting for the
    /// broker [`CLOSE_GRACE`] at most: for a connection the caller owns
    /// and gives up on, whose link may have stalled, while threads it
    /// started may still be waiting on it.
    pub(crate) fn close_in_background(self: Arc<Self>) {
        drop(bounded_wait::spawn("amqp-stream-close", move || {
            let _ = self.close_within(CLOSE_GRACE);
        }));
    }
}

impl Drop for BrokerConnection {
    fn drop(&mut self) {
        let _ = self.close_within(self.close_timeout);
    }
}

/// Closes `connections` in turn (the first is the one whose fate counts);
/// the first one's failure is the result.
fn close_all(url: &BrokerUrl, connections: Vec<Connection>) -> Result<(), Error> {
    let mut result = Ok(());
    for (index, connection) in connections.into_iter().enumerate() {
        match connection.close() {
            Ok(()) => debug!("closed a connection to {url}"),
            // amiquip hands each channel of the connection its end after
            // the broker's close-ok; a channel whose handle another thread
            // was dropping just then makes it report this, although the
            // broker has closed the connection properly.
            Err(amiquip::Error::EventLoopClientDropped) => {
                debug!("closed a connection to {url} (a channel was going at the same time)")
            }
            Err(err) => {
                debug!("a connection to {url} ended: {err}");
                if index == 0 {
                    result = Err(Error::broker(
                        format!("closing the connection to {url}"),
                        err,
                    ));
                }
            }
        }
    }
    result
}

/// Opens one AMQP connection to the first of `brokers` that answers, in a
/// random order with `last` at the end, within `timeout` as a whole (else
/// the longest `connection_timeout` of the URLs, else 10 s), each address
/// getting its share of what is left ([`attempt_time`]); answers which
/// one it reached. A single address is tried as [`log_in`] tries it and
/// fails with its own error; a list fails with every address's.
fn log_in_any(
    brokers: &BrokerUrls,
    last: Option<&BrokerUrl>,
    timeout: Option<Duration>,
) -> Result<(LoggedIn, BrokerUrl), Error> {
    let order = brokers.connect_order(last);
    if let [url] = order.as_slice() {
        return Ok((log_in(url, timeout)?, (*url).clone()));
    }
    let budget = timeout
        .or(brokers.connection_timeout())
        .unwrap_or(DEFAULT_CONNECTION_TIMEOUT);
    let deadline = crate::options::deadline_after(budget);
    let mut failures = Vec::with_capacity(order.len());
    for (tried, url) in order.iter().enumerate() {
        let remaining = deadline.map_or(budget, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        if remaining.is_zero() {
            failures.push(Error::TimedOut {
                what: format!("connecting to {url} (the list's connect timeout was used up)"),
                after: budget,
            });
            continue;
        }
        let mut attempt = attempt_time(remaining, order.len() - tried);
        if let Some(own) = url.connection_timeout() {
            attempt = attempt.min(own);
        }
        match log_in(url, Some(attempt)) {
            Ok(logged_in) => return Ok((logged_in, (*url).clone())),
            Err(err) => {
                info!("could not connect to {url}: {err}");
                failures.push(err);
            }
        }
    }
    Err(Error::AllBrokersFailed { failures })
}

/// An AMQP connection, logged in.
struct LoggedIn {
    connection: Connection,
    /// Our end of its TCP connection.
    local_addr: SocketAddr,
    /// A handle on its socket, to shut it.
    socket: TcpStream,
}

/// Opens one AMQP connection and logs in, within `timeout` if given
/// (else the URL's `connection_timeout`, else 10 s).
fn log_in(url: &BrokerUrl, timeout: Option<Duration>) -> Result<LoggedIn, Error> {
    if url.is_tls() {
        tls::ensure_supported(url)?;
    }
    let timeout = timeout
        .or(url.connection_timeout())
        .unwrap_or(DEFAULT_CONNECTION_TIMEOUT);
    let deadline = crate::options::deadline_after(timeout);
    let socket = connect_socket(url, timeout)?;
    let local_addr = socket
        .local_addr()
        .map_err(|source| unreachable(url, source))?;
    let handle = socket
        .try_clone()
        .map_err(|source| unreachable(url, source))?;
    // amiquip logs the login at `debug`: it gets a mask of the password,
    // which the socket swaps for the password on the way out.
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: url.username().to_string(),
            password: mask(url.password()),
        })
        .virtual_host(url.vhost())
        .heartbeat(url.heartbeat())
        .channel_max(url.channel_max().unwrap_or(0))
        .information(Some(format!("amqp-stream {}", env!("CARGO_PKG_VERSION"))));
    let socket = if url.is_tls() {
        tls::handshake(url, socket, deadline)?
    } else {
        BrokerSocket::plain(socket, PasswordSwap::new(url.username(), url.password()))
            .map_err(|source| unreachable(url, source))?
    };
    let remaining = deadline.map_or(timeout, |deadline| {
        deadline.saturating_duration_since(Instant::now())
    });
    let options = options.connection_timeout(Some(remaining.max(Duration::from_millis(1))));
    // `insecure` only in that amiquip adds no TLS: the socket has its own.
    let opened = Connection::insecure_open_stream(socket, options, ConnectionTuning::default())
        .map_err(|err| login_error(url, err, timeout));
    let connection = opened?;
    info!("connected to {url} from {local_addr}");
    Ok(LoggedIn {
        connection,
        local_addr,
        socket: handle,
    })
}

/// Tries each address the host resolves to, with no-delay set.
fn connect_socket(url: &BrokerUrl, timeout: Duration) -> Result<TcpStream, Error> {
    let addrs = (url.host(), url.port())
        .to_socket_addrs()
        .map_err(|source| unreachable(url, source))?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(socket) => {
                socket
                    .set_nodelay(true)
                    .map_err(|source| unreachable(url, source))?;
                return Ok(socket);
            }
            Err(err) => last_error = Some(err),
        }
    }
    Err(unreachable(
        url,
        last_error.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the host name resolved to no address",
            )
        }),
    ))
}

fn unreachable(url: &BrokerUrl, source: std::io::Error) -> Error {
    Error::Unreachable {
        broker: url.to_string(),
        source,
    }
}

/// Turns a failed AMQP login into the error a user can act on.
fn login_error(url: &BrokerUrl, err: amiquip::Error, timeout: Duration) -> Error {
    match err {
        amiquip::Error::InvalidCredentials => Error::AccessRefused {
            broker: url.to_string(),
            reason: format!(
                "user {:?} was not accepted (wrong user name or password)",
                url.username()
            ),
        },
        amiquip::Error::ServerClosedConnection { code, message } if code == 403 || code == 530 => {
            Error::AccessRefused {
                broker: url.to_string(),
                reason: message,
            }
        }
        amiquip::Error::ConnectionTimeout => Error::TimedOut {
            what: format!("logging in to {url}"),
            after: timeout,
        },
        other => Error::broker(format!("logging in to {url}"), other),
    }
}
