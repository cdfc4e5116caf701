//! Per-stream settings shared by `Stream`, `Listener` and `Connector`.

use crate::error::Error;
use crate::version::ProtocolVersion;
use std::time::{Duration, Instant};

/// The largest message size [`StreamOptions::max_message_size`] takes.
const MAX_MESSAGE_SIZE: usize = 8 << 20;

/// Settings for the streams a [`Connector`](crate::Connector),
/// [`Listener`](crate::Listener) or [`Stream::connect_with`](crate::Stream::connect_with)
/// makes. Build it with the chained setters; every value has a sensible
/// default.
///
/// The setters hold the plain names (`window(bytes)`) and take and give
/// back the options by value, so they chain; the getters are `get_*`
/// (`get_window()`). That is the shape of `std::process::Command`, a
/// builder that is read back too: the plain name cannot be both.
/// Functions that take options take them by value.
///
/// ```
/// use amqp_stream::StreamOptions;
/// use std::time::Duration;
///
/// let options = StreamOptions::new()
///     .max_message_size(128 * 1024)
///     .keepalive_interval(Duration::from_secs(1))
///     .handshake_timeout(Some(Duration::from_secs(5)));
/// assert_eq!(options.get_max_message_size(), 128 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    max_message_size: usize,
    prefetch: u16,
    write_queue: usize,
    keepalive_interval: Duration,
    handshake_timeout: Option<Duration>,
    linger: Duration,
    nodelay: bool,
    window: usize,
    protocol_version: Option<ProtocolVersion>,
    prepared_streams: usize,
    reconnect: bool,
    shared: bool,
    replicated: bool,
}

/// The default receive window: 1 MiB.
const DEFAULT_WINDOW: usize = 1024 * 1024;

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            max_message_size: 64 * 1024,
            prefetch: 64,
            write_queue: 16,
            keepalive_interval: Duration::from_secs(2),
            handshake_timeout: Some(Duration::from_secs(30)),
            linger: Duration::from_secs(10),
            nodelay: false,
            window: DEFAULT_WINDOW,
            protocol_version: None,
            prepared_streams: 2,
            reconnect: false,
            shared: false,
            replicated: false,
        }
    }
}

impl StreamOptions {
    /// The defaults: 64 KiB messages, 64 messages of read-ahead, 16 messages
    /// of write queue, a peer check every 2 s, a 30 s handshake timeout, a
    /// 10 s linger on drop, small writes coalesced (`nodelay` off), a 1 MiB
    /// receive window, the protocol version negotiated, two streams
    /// prepared ahead, no reconnecting and listeners that hold their queue
    /// alone, on one node.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new(), StreamOptions::default());
    /// ```
    pub fn new() -> StreamOptions {
        StreamOptions::default()
    }

    /// The largest message a write is cut into. Larger messages move more
    /// bytes per broker operation. Values below 1 are raised to 1, above
    /// 8 MiB lowered to 8 MiB: below what brokers accept (RabbitMQ 4
    /// refuses messages over 16 MiB by default), since a message the
    /// broker refuses closes the publishing channel, which version 3
    /// shares among all the streams of a connection.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// let o = StreamOptions::new().max_message_size(1024);
    /// assert_eq!(o.get_max_message_size(), 1024);
    /// let huge = StreamOptions::new().max_message_size(64 << 20);
    /// assert_eq!(huge.get_max_message_size(), 8 << 20);
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> StreamOptions {
        self.max_message_size = bytes.clamp(1, MAX_MESSAGE_SIZE);
        self
    }

    /// How many messages the broker may push to a stream ahead of its
    /// reader (AMQP prefetch). Bounds a stream's receive memory to about
    /// `prefetch × max_message_size`. Values below 1 are raised to 1.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().prefetch(8).get_prefetch(), 8);
    /// ```
    pub fn prefetch(mut self, messages: u16) -> StreamOptions {
        self.prefetch = messages.max(1);
        self
    }

    /// How much written data may wait for the stream's worker before
    /// `write` blocks, in messages: up to `write_queue × max_message_size`
    /// bytes. Values below 1 are raised to 1.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().write_queue(4).get_write_queue(), 4);
    /// ```
    pub fn write_queue(mut self, messages: usize) -> StreamOptions {
        self.write_queue = messages.max(1);
        self
    }

    /// How often an idle stream checks that its peer is still there: with
    /// protocol version 2 it sends a keepalive frame (which the broker
    /// returns if the peer's queue is gone), with version 1 it asks the
    /// broker whether the peer's queue exists. A peer that died is noticed
    /// within about this interval, even by a stream that only reads, or
    /// one waiting to write after the peer shut down its own writing (a
    /// write blocked for credit then fails with `BrokenPipe` or
    /// `ConnectionReset`).
    ///
    /// RabbitMQ answers a question about a queue exclusive to another
    /// connection with a channel error, which it logs at `error` level:
    /// an idle version-1 stream (one with a Go peer) adds one such line to
    /// the broker's log per interval. Raise the interval for long-lived
    /// version-1 streams where that matters. A client waiting for a
    /// listener's answer asks about the listener's queue too, after one
    /// interval and then less and less often, once per connection for
    /// all the streams that wait on it.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// # use std::time::Duration;
    /// let o = StreamOptions::new().keepalive_interval(Duration::from_millis(500));
    /// assert_eq!(o.get_keepalive_interval(), Duration::from_millis(500));
    /// ```
    pub fn keepalive_interval(mut self, interval: Duration) -> StreamOptions {
        self.keepalive_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long `connect` waits for the listener's answer; `None` (or a
    /// duration too long to reach, such as `Duration::MAX`) waits forever.
    /// [`Stream::connect_timeout`](crate::Stream::connect_timeout)
    /// overrides it per call.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().handshake_timeout(None).get_handshake_timeout(), None);
    /// ```
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> StreamOptions {
        self.handshake_timeout = timeout;
        self
    }

    /// How long dropping the last handle of a stream waits for written data
    /// and the FIN to be handed to the broker.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// # use std::time::Duration;
    /// let o = StreamOptions::new().linger(Duration::from_secs(1));
    /// assert_eq!(o.get_linger(), Duration::from_secs(1));
    /// ```
    pub fn linger(mut self, linger: Duration) -> StreamOptions {
        self.linger = linger;
        self
    }

    /// Whether streams start with [`Stream::set_nodelay`](crate::Stream::set_nodelay)
    /// on: every write is published at once instead of small writes being
    /// gathered while earlier data awaits the broker's confirm.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert!(StreamOptions::new().nodelay(true).get_nodelay());
    /// ```
    pub fn nodelay(mut self, nodelay: bool) -> StreamOptions {
        self.nodelay = nodelay;
        self
    }

    /// The receive window of protocol version 2: how many bytes the peer
    /// may send ahead of this stream's reader. A writer whose peer does not
    /// read blocks once a window is in flight, so the broker never holds
    /// more than a window per direction of a stream, and receive memory
    /// stays within it. Larger windows keep fast links busier. The peer
    /// cuts its messages to at most half this window. Values below 2 are
    /// raised to 2, values above 64 MiB lowered to 64 MiB (the most a
    /// stream takes from a peer's offer, too). (Version 1 has no window; the broker queue grows while
    /// the reader is slow.)
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// let o = StreamOptions::new().window(4 * 1024 * 1024);
    /// assert_eq!(o.get_window(), 4 * 1024 * 1024);
    /// ```
    pub fn window(mut self, bytes: usize) -> StreamOptions {
        self.window = bytes.clamp(2, crate::session::credit::MAX_WINDOW as usize);
        self
    }

    /// See [`window`](Self::window).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().get_window(), 1024 * 1024);
    /// ```
    pub fn get_window(&self) -> usize {
        self.window
    }

    /// Pins the protocol version instead of negotiating it. `None` (the
    /// default) speaks the highest version both ends know and falls back
    /// to version 1 for peers that know only that. `Some(V1)` never offers
    /// version 2. `Some(V2)` refuses peers that cannot speak it: a client
    /// fails to connect with `InvalidData`, a listener refuses the request
    /// (the client gets `ConnectionRefused`).
    ///
    /// ```
    /// # use amqp_stream::{ProtocolVersion, StreamOptions};
    /// let o = StreamOptions::new().protocol_version(Some(ProtocolVersion::V1));
    /// assert_eq!(o.get_protocol_version(), Some(ProtocolVersion::V1));
    /// ```
    pub fn protocol_version(mut self, pin: Option<ProtocolVersion>) -> StreamOptions {
        self.protocol_version = pin;
        self
    }

    /// See [`protocol_version`](Self::protocol_version).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().get_protocol_version(), None);
    /// ```
    pub fn get_protocol_version(&self) -> Option<ProtocolVersion> {
        self.protocol_version
    }

    /// How many streams a [`Connector`](crate::Connector) or
    /// [`Listener`](crate::Listener) keeps set up ahead of need: each is a
    /// thread with its AMQP channel, its exclusive queue and its consumer
    /// ready, so a new stream skips those broker round trips and its
    /// handshake is one message each way. A connector starts preparing
    /// after its first `connect`; a listener as soon as it is bound. Each
    /// costs one channel, one queue and one idle thread while it waits.
    /// 0 turns preparing off; streams pinned to protocol version 3, which
    /// have no queue or channel to prepare, never prepare any. The default, 2, keeps up with one thread
    /// connecting back to back (preparing takes longer than a handshake);
    /// a burst of connections larger than this is set up on demand, as
    /// without it.
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// let o = StreamOptions::new().prepared_streams(4);
    /// assert_eq!(o.get_prepared_streams(), 4);
    /// ```
    pub fn prepared_streams(mut self, streams: usize) -> StreamOptions {
        self.prepared_streams = streams;
        self
    }

    /// Whether a [`Listener`](crate::Listener) bound with these options
    /// survives the loss of its broker connection (a broker restart, a
    /// network cut): it connects again on its own, retrying with backoff
    /// (0.1 s doubling up to 5 s) until it succeeds or is dropped, declares
    /// its queue again and goes on accepting, so `accept` simply waits
    /// meanwhile. Each loss and each failed attempt is logged at `warn`.
    /// Streams accepted before the loss still end with it
    /// (`ConnectionAborted`), as TCP connections end when a server's host
    /// reboots. Off by default: `accept` then fails with
    /// `ConnectionAborted` once the connection is lost. Streams and
    /// connectors do not reconnect.
    ///
    /// ```no_run
    /// use amqp_stream::{Listener, StreamOptions};
    /// let options = StreamOptions::new().reconnect(true);
    /// let listener = Listener::bind_with("amqp://127.0.0.1", "echo", options)?;
    /// for stream in listener.incoming() {
    ///     // Only a dropped listener ends this loop: after a broker restart,
    ///     // new streams arrive again once the listener is back.
    ///     let _stream = stream?;
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reconnect(mut self, reconnect: bool) -> StreamOptions {
        self.reconnect = reconnect;
        self
    }

    /// Whether a [`Listener`](crate::Listener) bound with these options
    /// shares its queue with the other listeners bound to the same name
    /// with `shared(true)`, in this process or others: the broker hands
    /// each connection request to one of them (round robin among those
    /// ready to accept), spreading clients over several servers.
    ///
    /// The broker hands a shared listener one request at a time; the
    /// listener answers it only while [`accept`](crate::Listener::accept)
    /// waits for a stream, and acknowledges it to the broker as its answer
    /// goes out. So a busy or stopped server holds at most one waiting
    /// client (it waits for `accept` or its handshake timeout), and when a
    /// listener dies (killed, or its connection lost) the request it held
    /// unanswered goes back to the queue for another listener: none is
    /// lost, and none is answered twice. (One that dies in the instant
    /// between acknowledging and answering leaves its client to its
    /// handshake timeout.) Dropping a shared listener gives its held request
    /// back too when others remain; the last one refuses it, and the
    /// queue is deleted with the last listener. The cost: unlike an
    /// exclusive listener's backlog, `Stream::connect` waits until a
    /// server calls `accept` (up to its handshake timeout).
    ///
    /// Shared and exclusive listeners do not mix: binding one kind while
    /// the other holds the name fails with `AddrInUse`. Off by default.
    ///
    /// ```no_run
    /// use amqp_stream::{Listener, StreamOptions};
    /// // Run this in as many processes as you like.
    /// let options = StreamOptions::new().shared(true).reconnect(true);
    /// let listener = Listener::bind_with("amqp://127.0.0.1", "api", options)?;
    /// for stream in listener.incoming() {
    ///     let _stream = stream?;
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shared(mut self, shared: bool) -> StreamOptions {
        self.shared = shared;
        self
    }

    /// See [`shared`](Self::shared).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert!(!StreamOptions::new().get_shared());
    /// assert!(StreamOptions::new().shared(true).get_shared());
    /// ```
    pub fn get_shared(&self) -> bool {
        self.shared
    }

    /// Whether a [shared](Self::shared) listener's control queue is a
    /// quorum queue, replicated over a RabbitMQ cluster's nodes, so that
    /// the listeners keep serving, and the requests waiting in the queue
    /// are kept, when a node goes down (any node, while most of them run).
    ///
    /// A shared listener's queue is otherwise a classic queue on the node
    /// of the listener that declared it first: if that node goes down the
    /// queue goes with it, and so do the requests waiting there (their
    /// clients time out; only a request already handed to a listener on
    /// another node is served); the listeners on other nodes declare it
    /// again (with [`reconnect`](Self::reconnect)), after which new
    /// connects are served. Measured on a 3-node cluster with 8 connects
    /// waiting when the queue's node was killed: replicated, all 8 were
    /// served once, about 5 s after they began; classic, 7 timed out.
    ///
    /// What replication costs: RabbitMQ writes every request to a majority
    /// of the nodes' disks before it confirms it, which adds to each
    /// connect (on one node, a median setup of 1.3–1.6 ms against
    /// 0.8–1.1 ms: `cargo run --release --example bench -- shared-setup`);
    /// and the queue outlives its listeners for a while. When the
    /// last listener closes it deletes the queue (refusing the requests in
    /// it, as without replication), but if every listener dies the queue
    /// stays for a minute after its last consumer went (its `x-expires`):
    /// connects in that time wait for their
    /// [handshake timeout](Self::handshake_timeout) instead of being
    /// refused at once, and are served if a listener comes back in time.
    ///
    /// Needs [`shared`](Self::shared): binding a replicated listener that
    /// is not shared fails with `InvalidInput`. Replicated and classic
    /// listeners do not mix on one name: binding one kind while the other
    /// holds it fails with `AddrInUse`. Needs RabbitMQ 3.10 or later. Off
    /// by default.
    ///
    /// ```no_run
    /// use amqp_stream::{Listener, StreamOptions};
    /// // Run this beside the cluster's nodes, in as many processes as you like.
    /// let urls = "amqp://node-a,amqp://node-b,amqp://node-c";
    /// let options = StreamOptions::new().shared(true).replicated(true).reconnect(true);
    /// let listener = Listener::bind_with(urls, "api", options)?;
    /// for stream in listener.incoming() {
    ///     let _stream = stream?;
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn replicated(mut self, replicated: bool) -> StreamOptions {
        self.replicated = replicated;
        self
    }

    /// See [`replicated`](Self::replicated).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert!(!StreamOptions::new().get_replicated());
    /// assert!(StreamOptions::new().replicated(true).get_replicated());
    /// ```
    pub fn get_replicated(&self) -> bool {
        self.replicated
    }

    /// See [`reconnect`](Self::reconnect).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert!(!StreamOptions::new().get_reconnect());
    /// assert!(StreamOptions::new().reconnect(true).get_reconnect());
    /// ```
    pub fn get_reconnect(&self) -> bool {
        self.reconnect
    }

    /// See [`prepared_streams`](Self::prepared_streams).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().get_prepared_streams(), 2);
    /// ```
    pub fn get_prepared_streams(&self) -> usize {
        self.prepared_streams
    }

    /// See [`nodelay`](Self::nodelay).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert!(!StreamOptions::new().get_nodelay());
    /// ```
    pub fn get_nodelay(&self) -> bool {
        self.nodelay
    }

    /// See [`max_message_size`](Self::max_message_size).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().get_max_message_size(), 64 * 1024);
    /// ```
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// See [`prefetch`](Self::prefetch).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().get_prefetch(), 64);
    /// ```
    pub fn get_prefetch(&self) -> u16 {
        self.prefetch
    }

    /// See [`write_queue`](Self::write_queue).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// assert_eq!(StreamOptions::new().get_write_queue(), 16);
    /// ```
    pub fn get_write_queue(&self) -> usize {
        self.write_queue
    }

    /// See [`keepalive_interval`](Self::keepalive_interval).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// # use std::time::Duration;
    /// assert_eq!(StreamOptions::new().get_keepalive_interval(), Duration::from_secs(2));
    /// ```
    pub fn get_keepalive_interval(&self) -> Duration {
        self.keepalive_interval
    }

    /// See [`handshake_timeout`](Self::handshake_timeout).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// # use std::time::Duration;
    /// assert_eq!(StreamOptions::new().get_handshake_timeout(), Some(Duration::from_secs(30)));
    /// ```
    pub fn get_handshake_timeout(&self) -> Option<Duration> {
        self.handshake_timeout
    }

    /// See [`linger`](Self::linger).
    ///
    /// ```
    /// # use amqp_stream::StreamOptions;
    /// # use std::time::Duration;
    /// assert_eq!(StreamOptions::new().get_linger(), Duration::from_secs(10));
    /// ```
    pub fn get_linger(&self) -> Duration {
        self.linger
    }
}

/// Rejects a zero timeout the way `std::net` does.
pub(crate) fn check_timeout(timeout: Option<Duration>) -> Result<(), Error> {
    match timeout {
        Some(d) if d.is_zero() => Err(Error::InvalidArgument(
            "cannot set a 0 duration timeout".to_string(),
        )),
        _ => Ok(()),
    }
}

/// When a timeout of `timeout` from now runs out; `None` when that lies
/// beyond what `Instant` can hold (`Duration::MAX`, say), which means no
/// limit, as `TcpStream` takes such a timeout.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_too_long_for_an_instant_is_no_deadline() {
        assert_eq!(deadline_after(Duration::MAX), None);
        let soon = deadline_after(Duration::from_secs(1)).unwrap();
        assert!(soon > Instant::now());
    }
}
