//! `Stream`: one end of a connected byte stream, used like a `TcpStream`.

use crate::addr::Addr;
use crate::connector::Connector;
use crate::lock::lock;
use crate::options::{StreamOptions, check_timeout, deadline_after};
use crate::protocol::check_queue_name;
use crate::protocol::frame::{Frame, SequenceCheck};
use crate::session::credit::ReceiveWindow;
use crate::session::shared::{Ending, Shared};
use crate::session::write_buffer::Appended;
use crate::transport::connection::{BrokerConnection, CLOSE_GRACE};
use crate::transport::worker::inbox::{Inbox, Pump, Received};
use crate::transport::worker::{Control, Established, Outbound};
use crate::version::ProtocolVersion;
use amiquip::{ConsumerMessage, Delivery};
use crossbeam_channel::{Receiver, Sender, TryRecvError, at, bounded, never, select};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A reliable, ordered, bidirectional byte stream through an AMQP broker,
/// used the way a [`std::net::TcpStream`] is.
///
/// Get one from [`Stream::connect`] (or [`Connector::connect`]) on the
/// client side and from [`Listener::accept`](crate::Listener::accept) on
/// the server side. Bytes written on one end are read, in order and
/// intact, on the other; [`shutdown(Shutdown::Write)`](Stream::shutdown)
/// ends this side's direction (the peer reads `Ok(0)`) while the other
/// stays open. `Read` and `Write` are implemented for `Stream` and for
/// `&Stream`, and [`try_clone`](Stream::try_clone) gives a second handle,
/// so one thread can read while another writes.
///
/// Dropping the last handle closes the stream: it sends the FIN if
/// `shutdown` did not, waits (up to the [linger](StreamOptions::linger)
/// time) until the broker has confirmed everything written, and deletes
/// the stream's queue. A stream from [`Stream::connect`] then closes the
/// broker connection it owns (so does the last user of a shared one),
/// waiting for the broker's answer until the linger's end, and at least
/// a second: on a link that stalled without closing, a drop returns
/// within about the linger and that second.
///
/// # Differences from `TcpStream`
///
/// The same names mean the same things; these are what differs:
///
/// * **Addresses.** [`connect`](Stream::connect) takes a broker URL and a
///   queue name, and [`peer_addr`](Stream::peer_addr) and
///   [`local_addr`](Stream::local_addr) give an [`Addr`] (broker and
///   queue), not a `SocketAddr`.
/// * **`flush`** returns once the broker has confirmed every byte written
///   before it (a `TcpStream`'s does nothing).
/// * **No non-blocking mode**: there is no `set_nonblocking`, and no file
///   descriptor (`AsRawFd`/`AsFd`) to hand to `poll` or an async runtime.
///   Use the read and write timeouts (a timed-out call fails with
///   `WouldBlock`, as on Unix) or a thread per stream.
/// * **No `take_error`**: a stream has no pending socket error; whatever
///   failed it is returned by the next `read`, `write` or `flush`.
/// * **No `set_ttl`**, nothing of IP.
/// * **[`set_linger`](Stream::set_linger)** is stable here (the standard
///   library's is not), and `shutdown(Shutdown::Read)` wakes a read
///   blocked in another thread, which returns `Ok(0)`, as on Linux.
///
/// ```no_run
/// use amqp_stream::Stream;
/// use std::io::{Read, Write};
/// use std::net::Shutdown;
///
/// let mut stream = Stream::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "echo")?;
/// stream.write_all(b"hello")?;
/// stream.shutdown(Shutdown::Write)?;
/// let mut reply = String::new();
/// stream.read_to_string(&mut reply)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Stream {
    inner: Arc<Inner>,
}

/// What all handles of one stream share.
struct Inner {
    /// Keeps the broker connection open while a handle exists; taken
    /// when the last one goes (see [`Inner::release_connection`]).
    connection: Option<Arc<BrokerConnection>>,
    /// The connection was opened for this stream alone
    /// ([`Stream::connect`]): nothing else uses it.
    owns_connection: bool,
    local: Addr,
    peer: Addr,
    options: StreamOptions,
    outbound: Sender<Outbound>,
    control: Sender<Control>,
    inbox: Arc<Inbox>,
    /// The largest write handed over at once: the message size, cut to
    /// half the peer's window.
    message_limit: usize,
    alive: Receiver<()>,
    shared: Arc<Shared>,
    reader: Mutex<ReadState>,
    read_shut: AtomicBool,
    /// Wakes a read blocked in another thread when the read half shuts.
    read_wake: (Sender<()>, Receiver<()>),
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
    /// Set by [`Stream::set_linger`]; `None`: the options' linger.
    linger: Mutex<Option<Duration>>,
}

/// The reading side: the message being read and what is still unacked.
#[derive(Default)]
struct ReadState {
    current: Vec<u8>,
    position: usize,
    eof: bool,
    error: Option<(io::ErrorKind, String)>,
    unacked: Option<Delivery>,
    unacked_count: u16,
    /// Version 2: the data and FIN frames must be numbered 1, 2, 3...
    sequence: SequenceCheck,
    /// Version 2: what our reader consumed, reported to the peer.
    window: Option<ReceiveWindow>,
}

impl Stream {
    /// Connects to the listener on `queue`, over a new broker connection
    /// that this stream owns (and closes when it is dropped).
    ///
    /// As with TCP, the listener completes the handshake before its owner
    /// calls [`Listener::accept`](crate::Listener::accept) (up to its
    /// backlog), so connecting and then accepting on one thread works.
    ///
    /// Fails with `ConnectionRefused` at once when nothing listens on
    /// `queue`, `HostUnreachable` when the broker cannot be reached,
    /// `PermissionDenied` for bad credentials, `InvalidInput` for
    /// a malformed URL and `TimedOut` when the listener does not answer
    /// within the [handshake timeout](StreamOptions::handshake_timeout).
    ///
    /// ```no_run
    /// use amqp_stream::Stream;
    /// let stream = Stream::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "echo")?;
    /// println!("connected to {}", stream.peer_addr()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect(url: &str, queue: &str) -> io::Result<Stream> {
        Stream::connect_with(url, queue, StreamOptions::default())
    }

    /// Like [`connect`](Stream::connect), giving up with `TimedOut` when
    /// connecting to the broker and the handshake together take longer
    /// than `timeout`.
    ///
    /// ```no_run
    /// use amqp_stream::Stream;
    /// use std::time::Duration;
    /// let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// let stream = Stream::connect_timeout(url, "echo", Duration::from_secs(2))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect_timeout(url: &str, queue: &str, timeout: Duration) -> io::Result<Stream> {
        check_timeout(Some(timeout))?;
        check_queue_name(queue, "the listener's")?;
        let deadline = deadline_after(timeout);
        let connector = Connector::open_for_one(url, StreamOptions::default(), Some(timeout))?;
        connector.connect_own(queue, deadline, Some(timeout))
    }

    /// Like [`connect`](Stream::connect), with the given options.
    ///
    /// ```no_run
    /// use amqp_stream::{Stream, StreamOptions};
    /// let options = StreamOptions::new().max_message_size(256 * 1024);
    /// let stream = Stream::connect_with("amqp://127.0.0.1", "echo", options)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect_with(url: &str, queue: &str, options: StreamOptions) -> io::Result<Stream> {
        check_queue_name(queue, "the listener's")?;
        let timeout = options.get_handshake_timeout();
        let connector = Connector::open_for_one(url, options, None)?;
        connector.connect_own(queue, timeout.and_then(deadline_after), timeout)
    }

    pub(crate) fn from_established(
        connection: Arc<BrokerConnection>,
        established: Established,
        options: StreamOptions,
    ) -> Stream {
        let broker = connection.url().clone();
        let version = established.inbox.version();
        // Version 3 counts each message it reads at its cost too, whoever
        // the peer is: it reports no later than before, only sooner.
        let message_cost = if version >= ProtocolVersion::V3 {
            crate::session::credit::MESSAGE_COST
        } else {
            0
        };
        let window = (version >= ProtocolVersion::V2)
            .then(|| ReceiveWindow::new(options.get_window()).with_message_cost(message_cost));
        Stream {
            inner: Arc::new(Inner {
                local: Addr::new(broker.clone(), established.local_queue),
                peer: Addr::new(broker, established.peer_queue),
                connection: Some(connection),
                owns_connection: false,
                options,
                outbound: established.outbound,
                control: established.control,
                inbox: established.inbox,
                message_limit: established.message_limit,
                alive: established.alive,
                shared: established.shared,
                reader: Mutex::new(ReadState {
                    window,
                    ..ReadState::default()
                }),
                read_shut: AtomicBool::new(false),
                read_wake: bounded(1),
                read_timeout: Mutex::new(None),
                write_timeout: Mutex::new(None),
                linger: Mutex::new(None),
            }),
        }
    }

    /// Marks the stream as the only user of its connection, opened for it
    /// alone: dropping it closes the connection whoever else (the
    /// stream's worker) still holds it.
    pub(crate) fn owning_its_connection(mut self) -> Stream {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.owns_connection = true;
        }
        self
    }

    /// The address of the peer: the broker and the queue this stream
    /// sends to.
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// println!("{}", stream.peer_addr()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn peer_addr(&self) -> io::Result<Addr> {
        Ok(self.inner.peer.clone())
    }

    /// The protocol version this stream speaks, as negotiated with the
    /// peer (or pinned by [`StreamOptions::protocol_version`]).
    ///
    /// ```no_run
    /// use amqp_stream::ProtocolVersion;
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// if stream.protocol_version() == ProtocolVersion::V1 {
    ///     println!("the peer speaks version 1: no flow control");
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.inner.inbox.version()
    }

    /// The address of this end: the broker and the queue this stream
    /// receives on.
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// println!("{}", stream.local_addr()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<Addr> {
        Ok(self.inner.local.clone())
    }

    /// Shuts down the read half, the write half, or both.
    ///
    /// `Shutdown::Write` sends the FIN: the peer reads everything written
    /// before it and then `Ok(0)`; later writes here fail with
    /// `BrokenPipe`, and so does a write blocked in another thread (waiting
    /// for the peer's window or for room in the write buffer), as on Linux
    /// TCP. Every write that returned `Ok`, in any thread, is delivered
    /// before the FIN. `Shutdown::Read` makes reads return `Ok(0)`,
    /// including one blocked in another thread at the time.
    /// Shutting down a half twice is not an error.
    ///
    /// ```no_run
    /// use std::io::Write;
    /// use std::net::Shutdown;
    /// # let mut stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// stream.write_all(b"last words")?;
    /// stream.shutdown(Shutdown::Write)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            // Not under the reader's lock (a blocked read holds it): set
            // the flag, then wake that read so it returns `Ok(0)`.
            self.inner.read_shut.store(true, Ordering::SeqCst);
            let _ = self.inner.read_wake.0.try_send(());
        }
        // Closing the write buffer orders this against every `write`: one
        // that got its bytes in is published before the FIN, later ones
        // (and one blocked for room or credit, woken here) fail with
        // `BrokenPipe`.
        if matches!(how, Shutdown::Write | Shutdown::Both) && self.inner.shared.written.close() {
            self.inner.shared.wake_writer();
            let (reply_tx, reply_rx) = bounded(1);
            let deadline = self.inner.write_deadline();
            self.inner
                .send_outbound(Outbound::Fin(reply_tx), &deadline)?;
            return self.inner.wait_reply(reply_rx, &deadline);
        }
        Ok(())
    }

    /// A second handle to the same stream (for example one to read on and
    /// one to write on, each in its own thread). Timeouts are shared.
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// let mut reader = stream.try_clone()?;
    /// let mut writer = stream;
    /// std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::stdout()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(Stream {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Switches the gathering of small writes off (`true`) or on, like
    /// `TcpStream::set_nodelay`. With it off (the default, as for TCP),
    /// a write smaller than a message waits while earlier data awaits the
    /// broker's confirm, and the writes behind it join it in one message;
    /// a write with nothing unconfirmed before it (the request of a
    /// request/response exchange) is published at once, with no timer.
    /// Turning it on publishes what waits.
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// stream.set_nodelay(true)?;
    /// assert!(stream.nodelay()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.shared.set_nodelay(nodelay);
        if nodelay {
            // Best effort: a full queue is being worked on anyway.
            if self.inner.outbound.try_send(Outbound::Push).is_ok() {
                self.inner.shared.ring();
            }
        }
        Ok(())
    }

    /// Whether [`set_nodelay`](Stream::set_nodelay) is on.
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// assert!(!stream.nodelay()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn nodelay(&self) -> io::Result<bool> {
        Ok(self.inner.shared.nodelay())
    }

    /// Sets how closing this stream (dropping its last handle) treats
    /// data not yet confirmed, like `SO_LINGER` on a TCP socket
    /// (`socket2::Socket::set_linger`).
    ///
    /// `Some(Duration::ZERO)` makes the close abortive, as a TCP close
    /// with linger 0 sends a reset: bytes not yet published are dropped
    /// and the peer's reads and writes fail with `ConnectionReset` (a
    /// version-2 peer gets a reset frame; a version-1 peer gets no FIN and
    /// finds this end gone). `Some(d)` makes the close wait up to `d` for
    /// the broker's confirms; `None` goes back to
    /// [`StreamOptions::linger`]. Shared by every handle of the stream.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// // Something went wrong on our side: make the peer see a reset,
    /// // never a clean end of the stream.
    /// stream.set_linger(Some(Duration::ZERO))?;
    /// drop(stream);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        *lock(&self.inner.linger) = linger;
        Ok(())
    }

    /// What [`set_linger`](Stream::set_linger) set (`None`: the
    /// [`StreamOptions::linger`] applies).
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// assert_eq!(stream.linger()?, None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        Ok(*lock(&self.inner.linger))
    }

    /// Sets how long `read` may block; `None` blocks until data comes. A
    /// read that times out fails with `WouldBlock`, as `TcpStream`'s does
    /// on Unix. A zero duration is an `InvalidInput` error.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        *lock(&self.inner.read_timeout) = timeout;
        Ok(())
    }

    /// Sets how long `write` and `flush` may block; `None` blocks as long
    /// as needed. A write that times out fails with `WouldBlock`. A zero
    /// duration is an `InvalidInput` error.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        *lock(&self.inner.write_timeout) = timeout;
        Ok(())
    }

    /// The read timeout, if one is set.
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// assert_eq!(stream.read_timeout()?, None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(*lock(&self.inner.read_timeout))
    }

    /// The write timeout, if one is set.
    ///
    /// ```no_run
    /// # let stream = amqp_stream::Stream::connect("amqp://127.0.0.1", "echo")?;
    /// assert_eq!(stream.write_timeout()?, None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(*lock(&self.inner.write_timeout))
    }

    /// Reads what has arrived into `buf` without taking it: the next
    /// `read` (or `peek`) returns the same bytes. Like
    /// [`TcpStream::peek`](std::net::TcpStream::peek), it blocks until
    /// something has arrived (or the read timeout passes, `WouldBlock`),
    /// returns `Ok(0)` at the end of the stream and fails as `read` would.
    /// It returns at most what the next read would, which may be less
    /// than has arrived.
    ///
    /// ```
    /// # use amqp_stream::{Listener, Stream};
    /// # use std::io::{Read, Write};
    /// # let url = std::env::var("AMQP_URL")
    /// #     .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    /// # let queue = format!("doc-peek-{}", std::process::id());
    /// # let listener = Listener::bind(&url, &queue)?;
    /// # let mut client = Stream::connect(&url, &queue)?;
    /// # let (mut stream, _) = listener.accept()?;
    /// client.write_all(b"GET /")?;
    /// let mut first = [0; 3];
    /// stream.peek(&mut first)?;
    /// assert_eq!(&first, b"GET");
    /// let mut all = [0; 5];
    /// stream.read_exact(&mut all)?;
    /// assert_eq!(&all, b"GET /");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf, true)
    }
}

impl Inner {
    fn lock_reader(&self) -> MutexGuard<'_, ReadState> {
        lock(&self.reader)
    }

    /// Reads into `out`, or with `peek` copies without taking: the bytes
    /// stay for the next read (and are not reported consumed).
    fn read(&self, out: &mut [u8], peek: bool) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut state = self.lock_reader();
        let deadline = lock(&self.read_timeout).and_then(deadline_after);
        loop {
            if self.read_shut.load(Ordering::SeqCst) {
                return Ok(0);
            }
            if state.position < state.current.len() {
                let available = &state.current[state.position..];
                let n = available.len().min(out.len());
                out[..n].copy_from_slice(&available[..n]);
                if peek {
                    return Ok(n);
                }
                state.position += n;
                let message_done = state.position == state.current.len();
                if let Some(total) = state
                    .window
                    .as_mut()
                    .and_then(|w| w.consume(n, message_done))
                {
                    // Acknowledge first: the broker then never holds more
                    // than the window (what the peer may send past it).
                    self.send_ack(&mut state);
                    // Recorded before the peer can hear of it: what the
                    // peer may send is checked against it.
                    self.inbox.reported(total);
                    let _ = self.control.send(Control::Window(total));
                    self.shared.ring();
                }
                if state.position == state.current.len() {
                    state.current = Vec::new();
                    state.position = 0;
                    if state.unacked_count >= self.ack_batch() {
                        self.send_ack(&mut state);
                    }
                }
                return Ok(n);
            }
            if state.eof {
                return Ok(0);
            }
            if let Some((kind, text)) = &state.error {
                return Err(io::Error::new(*kind, text.clone()));
            }
            let message = self.next_message(deadline)?;
            if message.is_none() && self.read_shut.load(Ordering::SeqCst) {
                return Ok(0);
            }
            self.take_message(&mut state, message);
        }
    }

    /// Acknowledge after this many messages (half the prefetch), so the
    /// broker can send more before the reader runs dry.
    fn ack_batch(&self) -> u16 {
        (self.options.get_prefetch() / 2).max(1)
    }

    /// The next message for the reader: `None` when the worker has ended
    /// or the read half was shut down meanwhile.
    fn next_message(&self, deadline: Option<Instant>) -> io::Result<Option<Received>> {
        let timer = deadline.map(at).unwrap_or_else(never);
        let pump = match self.inbox.try_take() {
            Some(pump) => pump,
            None => {
                self.inbox.set_reader_waiting(true);
                let taken = self.take_inbox(&timer);
                self.inbox.set_reader_waiting(false);
                match taken? {
                    Some(pump) => pump,
                    None => return Ok(None),
                }
            }
        };
        if let Some(received) = pump.pop() {
            return Ok(Some(received));
        }
        let deliveries = self.inbox.deliveries();
        loop {
            let message = match deliveries.try_recv() {
                Ok(message) => Some(message),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    // No acknowledgement before waiting: with fewer than
                    // half the prefetch unacknowledged the broker is not
                    // held back, and an ack here would sit in front of the
                    // reply a request/response peer writes next (about
                    // 60 us of each round trip on a local broker).
                    select! {
                        recv(deliveries) -> message => message.ok(),
                        recv(self.alive) -> _ => deliveries.try_recv().ok(),
                        recv(self.read_wake.1) -> _ => return Ok(None),
                        recv(timer) -> _ => return Err(read_timed_out()),
                    }
                }
            };
            let Some(message) = message else {
                return Ok(None);
            };
            // Control frames are handled in there; wait on for the rest.
            if let Some(received) = self.inbox.sort(message, false) {
                return Ok(Some(received));
            }
        }
    }

    /// Waits for the inbox's token, which another thread holds: `None`
    /// when the read half was shut down meanwhile.
    fn take_inbox(&self, timer: &Receiver<Instant>) -> io::Result<Option<Pump<'_>>> {
        select! {
            recv(self.inbox.token()) -> _ => Ok(Some(self.inbox.taken())),
            // Whoever holds the token gives it back once the worker is gone.
            recv(self.alive) -> _ => Ok(self.inbox.token().recv().ok().map(|()| self.inbox.taken())),
            recv(self.read_wake.1) -> _ => Ok(None),
            recv(*timer) -> _ => Err(read_timed_out()),
        }
    }

    /// Interprets one message from our queue.
    fn take_message(&self, state: &mut ReadState, received: Option<Received>) {
        let (frame, body, delivery) = match received {
            Some(Received::Frame {
                frame,
                body,
                delivery,
            }) => (frame, body, delivery),
            Some(Received::Ended(ConsumerMessage::ServerCancelled)) => {
                state.error = Some((
                    io::ErrorKind::ConnectionReset,
                    format!("the stream's queue {:?} was deleted", self.local.queue()),
                ));
                return;
            }
            Some(Received::Ended(ConsumerMessage::ServerClosedChannel(err)))
            | Some(Received::Ended(ConsumerMessage::ServerClosedConnection(err))) => {
                state.error = Some((
                    io::ErrorKind::ConnectionAborted,
                    format!("lost the broker connection: {err}"),
                ));
                return;
            }
            Some(Received::Ended(_)) | None => {
                let kind = io::ErrorKind::ConnectionAborted;
                self.fail_read(
                    state,
                    kind,
                    "lost the broker connection (the stream's worker stopped)",
                );
                return;
            }
        };
        if let Some(delivery) = delivery {
            state.unacked = Some(delivery);
            state.unacked_count = state.unacked_count.saturating_add(1);
        }
        match frame {
            Frame::Data(seq) => match state.sequence.check(seq) {
                Ok(()) => {
                    state.current = body;
                    state.position = 0;
                }
                Err(why) => self.protocol_error(state, why),
            },
            Frame::Fin(seq) => match state.sequence.check(seq) {
                Ok(()) => {
                    state.eof = true;
                    self.send_ack(state);
                    let _ = self.control.send(Control::FinReceived);
                    self.shared.ring();
                }
                Err(why) => self.protocol_error(state, why),
            },
            Frame::PeerGone => {
                self.fail_read(state, io::ErrorKind::ConnectionReset, "the peer is gone");
                self.send_ack(state);
                let _ = self.control.send(Control::PeerGoneSeen);
                self.shared.ring();
            }
            Frame::Reset(_) => {
                let kind = io::ErrorKind::ConnectionReset;
                self.fail_read(state, kind, "the peer reset the stream");
                self.send_ack(state);
            }
            Frame::Invalid(why) => {
                state.error = Some((io::ErrorKind::InvalidData, why));
                self.send_ack(state);
            }
            // Control frames never reach the reader.
            Frame::Window(_) | Frame::Keepalive => {}
        }
    }

    /// Ends reading with the stream's failure, or else with an error of
    /// `kind` saying `otherwise`.
    fn fail_read(&self, state: &mut ReadState, kind: io::ErrorKind, otherwise: &str) {
        let err = match self.shared.failure() {
            Some(failure) => failure.read_error(),
            None => io::Error::new(kind, otherwise.to_string()),
        };
        state.error = Some((err.kind(), err.to_string()));
    }

    /// The peer broke the protocol: fail reading with `InvalidData` and
    /// have the worker reset the stream.
    fn protocol_error(&self, state: &mut ReadState, why: String) {
        state.error = Some((io::ErrorKind::InvalidData, why.clone()));
        self.send_ack(state);
        self.inbox.abort(why);
    }

    fn send_ack(&self, state: &mut ReadState) {
        if self.inbox.version() >= ProtocolVersion::V3 {
            // Consumed without acknowledgements.
            state.unacked = None;
            return;
        }
        if let Some(delivery) = state.unacked.take() {
            state.unacked_count = 0;
            let _ = self.control.send(Control::Ack(Box::new(delivery)));
        }
    }

    fn write(&self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if let Some(failure) = self.shared.failure() {
            return Err(failure.write_error());
        }
        if self.shared.written.is_closed() {
            return Err(write_shut());
        }
        let deadline = self.write_deadline();
        let n = data.len().min(self.message_limit);
        self.reserve_credit(n, &deadline)?;
        if let Err(err) = self.append(&data[..n], &deadline) {
            self.shared.send_window().unreserve(n);
            return Err(err);
        }
        Ok(n)
    }

    /// Hands written bytes to the worker, waiting while it has its fill.
    fn append(&self, data: &[u8], deadline: &Receiver<Instant>) -> io::Result<()> {
        let written = &self.shared.written;
        loop {
            match written.append(data) {
                Appended::Done => return Ok(()),
                Appended::Closed => return Err(write_shut()),
                Appended::Full => select! {
                    recv(written.emptied()) -> _ => {}
                    recv(self.alive) -> _ => return Err(self.worker_gone()),
                    recv(deadline) -> _ => return Err(write_timed_out()),
                },
            }
        }
    }

    /// When the write timeout, if any, runs out for a call starting now.
    fn write_deadline(&self) -> Receiver<Instant> {
        match lock(&self.write_timeout).and_then(deadline_after) {
            Some(deadline) => at(deadline),
            None => never(),
        }
    }

    /// Takes `n` bytes of the peer's window (version 2), waiting until the
    /// peer's reader has made room. While nobody reads this stream, the
    /// waiting writer takes in the window updates itself.
    fn reserve_credit(&self, n: usize, deadline: &Receiver<Instant>) -> io::Result<()> {
        loop {
            // One wake-up reaches one waiting writer: each passes it on to
            // the next when it leaves and the news is good for others too
            // (the stream ended, or credit is left over).
            if let Some(failure) = self.shared.failure() {
                self.shared.wake_writer();
                return Err(failure.write_error());
            }
            if self.shared.written.is_closed() {
                self.shared.wake_writer();
                return Err(write_shut());
            }
            let mut window = self.shared.send_window();
            if window.try_reserve(n) {
                if window.available() > 0 {
                    self.shared.wake_writer();
                }
                return Ok(());
            }
            drop(window);
            // A waiting reader has the inbox first (and wakes us after).
            let no_turn = never();
            let inbox = if self.inbox.reader_waiting() {
                &no_turn
            } else {
                self.inbox.token()
            };
            select! {
                recv(self.shared.credit_wake()) -> _ => {}
                recv(inbox) -> _ => self.receive_credit(self.inbox.taken(), n, deadline)?,
                recv(self.alive) -> _ => return Err(self.worker_gone()),
                recv(deadline) -> _ => return Err(write_timed_out()),
            }
        }
    }

    /// Receives for the reader until `n` bytes of credit are there, a
    /// reader wants the inbox back or the stream fails.
    fn receive_credit(
        &self,
        pump: Pump<'_>,
        n: usize,
        deadline: &Receiver<Instant>,
    ) -> io::Result<()> {
        loop {
            if self.shared.failure().is_some()
                || self.shared.written.is_closed()
                || self.shared.send_window().available() >= n as u64
                || self.inbox.reader_waiting()
            {
                return Ok(());
            }
            select! {
                recv(self.inbox.deliveries()) -> message => match message {
                    Ok(message) => {
                        if let Some(received) = self.inbox.sort(message, true) {
                            let ended = matches!(received, Received::Ended(_));
                            pump.stash(received);
                            if ended {
                                return Ok(());
                            }
                        }
                    }
                    Err(_) => return Ok(()),
                },
                recv(self.inbox.wanted()) -> _ => {}
                // A shutdown wakes us so.
                recv(self.shared.credit_wake()) -> _ => {}
                recv(self.alive) -> _ => return Ok(()),
                recv(deadline) -> _ => return Err(write_timed_out()),
            }
        }
    }

    fn flush(&self) -> io::Result<()> {
        let (reply_tx, reply_rx) = bounded(1);
        let deadline = self.write_deadline();
        match self.send_outbound(Outbound::Flush(reply_tx), &deadline) {
            Ok(()) => self.wait_reply(reply_rx, &deadline),
            Err(err) => Err(err),
        }
    }

    /// Hands an item to the worker, before the deadline.
    fn send_outbound(&self, item: Outbound, deadline: &Receiver<Instant>) -> io::Result<()> {
        match self.outbound.try_send(item) {
            Ok(()) => {
                self.shared.ring();
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => self.after_worker(),
            Err(crossbeam_channel::TrySendError::Full(item)) => select! {
                send(self.outbound, item) -> sent => {
                    self.shared.ring();
                    sent.map_err(|_| self.worker_gone())
                }
                recv(deadline) -> _ => Err(write_timed_out()),
            },
        }
    }

    /// Waits for the worker's answer to a FIN or flush. A worker that
    /// ends first (the broker connection was lost) never answers: the
    /// request may still sit in the channel, so watch `alive` too.
    fn wait_reply(
        &self,
        reply: Receiver<io::Result<()>>,
        deadline: &Receiver<Instant>,
    ) -> io::Result<()> {
        select! {
            // Dropped unanswered: the worker ended with it still queued.
            recv(reply) -> answer => answer.unwrap_or_else(|_| self.after_worker()),
            recv(self.alive) -> _ => match reply.try_recv() {
                Ok(answer) => answer,
                Err(_) => self.after_worker(),
            },
            recv(deadline) -> _ => Err(write_timed_out()),
        }
    }

    /// Whether this end holds data it received and nobody read: then
    /// closing it is abortive, as for TCP.
    fn holds_unread_data(&self) -> bool {
        let state = self.lock_reader();
        if state.error.is_some() {
            return false;
        }
        if state.position < state.current.len() {
            return true;
        }
        drop(state);
        match self.inbox.token().recv_timeout(Duration::from_secs(1)) {
            Ok(()) => {
                let pump = self.inbox.taken();
                pump.drain();
                pump.holds_data()
            }
            Err(_) => false,
        }
    }

    fn worker_gone(&self) -> io::Error {
        self.shared.write_error()
    }

    /// The answer to a flush (or FIN) the worker can no longer give: `Ok`
    /// when it ended cleanly with everything confirmed (both directions
    /// closed, so nothing is left to flush), else the stream's error.
    fn after_worker(&self) -> io::Result<()> {
        if self.shared.closed_cleanly() {
            Ok(())
        } else {
            Err(self.worker_gone())
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let linger = lock(&self.linger).unwrap_or(self.options.get_linger());
        let ending = if linger.is_zero() {
            Ending::Reset("closed abortively (linger 0)".to_string())
        } else if self.holds_unread_data() {
            Ending::Reset("closed with unread data".to_string())
        } else {
            Ending::Close { linger }
        };
        // Recorded first: if the worker's queue is full past the linger
        // time, it still finds the ending when the channel disconnects.
        self.shared.set_ending(ending.clone());
        let last = match ending {
            Ending::Close { .. } => Outbound::Close,
            Ending::Reset(why) => Outbound::Reset(why),
        };
        // One deadline for all of it (none: no limit).
        let deadline = deadline_after(linger);
        let sent = match deadline {
            Some(deadline) => self.outbound.send_deadline(last, deadline).is_ok(),
            None => self.outbound.send(last).is_ok(),
        };
        self.shared.ring();
        if sent {
            // Disconnects when the worker has finished.
            let _ = match deadline {
                Some(deadline) => self.alive.recv_deadline(deadline).map_err(drop),
                None => self.alive.recv().map_err(drop),
            };
        }
        self.release_connection(deadline);
    }
}

impl Inner {
    /// Lets go of the broker connection once the worker is done or the
    /// linger is over. The stream closes it if it owns it, or holds it
    /// last: waiting for the broker until the linger's `deadline`, and
    /// at least [`CLOSE_GRACE`] (else its own close timeout), so that a
    /// link that stalled holds the drop about that long, no longer.
    fn release_connection(&mut self, deadline: Option<Instant>) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let close = |connection: &BrokerConnection| {
            let _ = match deadline {
                Some(deadline) => connection.close_within(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(CLOSE_GRACE),
                ),
                None => connection.close(),
            };
        };
        if self.owns_connection {
            close(&connection);
        } else if let Some(last) = Arc::into_inner(connection) {
            close(&last);
        }
    }
}

fn write_shut() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the stream was shut down for writing",
    )
}

fn read_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "read timed out")
}

fn write_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "write timed out")
}

impl Read for Stream {
    /// Reads what has arrived, blocking until something has (or the read
    /// timeout passes). `Ok(0)` means the peer shut down its side.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf, false)
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf, false)
    }
}

impl Write for Stream {
    /// Queues up to one message's worth of `buf` for sending.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    /// Returns once the broker has confirmed everything written before
    /// (publisher confirms); fails if any of it was returned or refused.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("local", &self.inner.local)
            .field("peer", &self.inner.peer)
            .finish()
    }
}
