//! `Stream`: one end of a connected byte stream, used like a `TcpStream`.

use crate::addr::Addr;
use crate::connection::BrokerConnection;
use crate::connector::Connector;
use crate::options::{StreamOptions, check_timeout};
use crate::protocol::{self, Frame};
use crate::worker::{Control, Established, Outbound, Shared};
use amiquip::{ConsumerMessage, Delivery};
use crossbeam_channel::{Receiver, Sender, at, bounded, never, select};
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
/// the stream's queue.
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
    /// Keeps the broker connection open while a handle exists.
    _connection: Arc<BrokerConnection>,
    local: Addr,
    peer: Addr,
    options: StreamOptions,
    outbound: Sender<Outbound>,
    control: Sender<Control>,
    deliveries: Receiver<ConsumerMessage>,
    alive: Receiver<()>,
    shared: Arc<Shared>,
    reader: Mutex<ReadState>,
    write_shut: AtomicBool,
    read_shut: AtomicBool,
    /// Wakes a read blocked in another thread when the read half shuts.
    read_wake: (Sender<()>, Receiver<()>),
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
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
    /// `queue`, `PermissionDenied` for bad credentials, `InvalidInput` for
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
        Stream::connect_with(url, queue, &StreamOptions::default())
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
        let deadline = Instant::now() + timeout;
        let connector = Connector::open_with_timeout(url, StreamOptions::default(), Some(timeout))?;
        connector.connect_until(queue, Some(deadline), Some(timeout))
    }

    /// Like [`connect`](Stream::connect), with the given options.
    ///
    /// ```no_run
    /// use amqp_stream::{Stream, StreamOptions};
    /// let options = StreamOptions::new().max_message_size(256 * 1024);
    /// let stream = Stream::connect_with("amqp://127.0.0.1", "echo", &options)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect_with(url: &str, queue: &str, options: &StreamOptions) -> io::Result<Stream> {
        Connector::open_with(url, options.clone())?.connect(queue)
    }

    pub(crate) fn from_established(
        connection: Arc<BrokerConnection>,
        established: Established,
        options: StreamOptions,
    ) -> Stream {
        let broker = connection.url().clone();
        Stream {
            inner: Arc::new(Inner {
                local: Addr::new(broker.clone(), established.local_queue),
                peer: Addr::new(broker, established.peer_queue),
                _connection: connection,
                options,
                outbound: established.outbound,
                control: established.control,
                deliveries: established.deliveries,
                alive: established.alive,
                shared: established.shared,
                reader: Mutex::new(ReadState::default()),
                write_shut: AtomicBool::new(false),
                read_shut: AtomicBool::new(false),
                read_wake: bounded(1),
                read_timeout: Mutex::new(None),
                write_timeout: Mutex::new(None),
            }),
        }
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
    /// `BrokenPipe`. `Shutdown::Read` makes reads return `Ok(0)`,
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
        if matches!(how, Shutdown::Write | Shutdown::Both)
            && !self.inner.write_shut.swap(true, Ordering::SeqCst)
        {
            let (reply_tx, reply_rx) = bounded(1);
            self.inner.send_outbound(Outbound::Fin(reply_tx))?;
            return self.inner.wait_reply(reply_rx);
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
}

impl Inner {
    fn lock_reader(&self) -> MutexGuard<'_, ReadState> {
        lock(&self.reader)
    }

    fn read(&self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut state = self.lock_reader();
        let deadline = lock(&self.read_timeout).map(|t| Instant::now() + t);
        loop {
            if self.read_shut.load(Ordering::SeqCst) {
                return Ok(0);
            }
            if state.position < state.current.len() {
                let available = &state.current[state.position..];
                let n = available.len().min(out.len());
                out[..n].copy_from_slice(&available[..n]);
                state.position += n;
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
            let message = self.next_message(&mut state, deadline)?;
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
    fn next_message(
        &self,
        state: &mut ReadState,
        deadline: Option<Instant>,
    ) -> io::Result<Option<ConsumerMessage>> {
        if let Ok(message) = self.deliveries.try_recv() {
            return Ok(Some(message));
        }
        // About to wait: let the broker refill the prefetch window first.
        self.send_ack(state);
        let timer = deadline.map(at).unwrap_or_else(never);
        select! {
            recv(self.deliveries) -> message => Ok(message.ok()),
            recv(self.alive) -> _ => Ok(self.deliveries.try_recv().ok()),
            recv(self.read_wake.1) -> _ => Ok(None),
            recv(timer) -> _ => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "read timed out",
            )),
        }
    }

    /// Interprets one message from our queue.
    fn take_message(&self, state: &mut ReadState, message: Option<ConsumerMessage>) {
        let delivery = match message {
            Some(ConsumerMessage::Delivery(delivery)) => delivery,
            Some(ConsumerMessage::ServerCancelled) => {
                state.error = Some((
                    io::ErrorKind::ConnectionReset,
                    format!("the stream's queue {:?} was deleted", self.local.queue()),
                ));
                return;
            }
            Some(ConsumerMessage::ServerClosedChannel(err))
            | Some(ConsumerMessage::ServerClosedConnection(err)) => {
                state.error = Some((
                    io::ErrorKind::ConnectionAborted,
                    format!("lost the broker connection: {err}"),
                ));
                return;
            }
            Some(_) | None => {
                let err = match self.shared.failure() {
                    Some(failure) => failure.read_error(),
                    None => io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the stream's worker stopped",
                    ),
                };
                state.error = Some((err.kind(), err.to_string()));
                return;
            }
        };
        let mut delivery = delivery;
        let frame = protocol::classify(&delivery.body, &delivery.properties);
        let body = std::mem::take(&mut delivery.body);
        state.unacked = Some(delivery);
        state.unacked_count = state.unacked_count.saturating_add(1);
        match frame {
            Frame::Data => {
                state.current = body;
                state.position = 0;
            }
            Frame::Fin => {
                state.eof = true;
                self.send_ack(state);
                let _ = self.control.send(Control::FinReceived);
            }
            Frame::PeerGone => {
                let err = match self.shared.failure() {
                    Some(failure) => failure.read_error(),
                    None => io::Error::new(io::ErrorKind::ConnectionReset, "the peer is gone"),
                };
                state.error = Some((err.kind(), err.to_string()));
                self.send_ack(state);
                let _ = self.control.send(Control::PeerGoneSeen);
            }
        }
    }

    fn send_ack(&self, state: &mut ReadState) {
        if let Some(delivery) = state.unacked.take() {
            state.unacked_count = 0;
            let _ = self.control.send(Control::Ack(Box::new(delivery)));
        }
    }

    fn write(&self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.write_shut.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was shut down for writing",
            ));
        }
        if let Some(failure) = self.shared.failure() {
            return Err(failure.write_error());
        }
        let n = data.len().min(self.options.get_max_message_size());
        self.send_outbound(Outbound::Data(data[..n].to_vec()))?;
        Ok(n)
    }

    fn flush(&self) -> io::Result<()> {
        let (reply_tx, reply_rx) = bounded(1);
        match self.send_outbound(Outbound::Flush(reply_tx)) {
            Ok(()) => self.wait_reply(reply_rx),
            // The worker is gone after a clean close: nothing is unflushed.
            Err(_) if self.shared.failure().is_none() => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Hands an item to the worker, within the write timeout.
    fn send_outbound(&self, item: Outbound) -> io::Result<()> {
        let timeout = *lock(&self.write_timeout);
        match timeout {
            Some(timeout) => self.outbound.send_timeout(item, timeout).map_err(|e| {
                if e.is_timeout() {
                    io::Error::new(io::ErrorKind::WouldBlock, "write timed out")
                } else {
                    self.worker_gone()
                }
            }),
            None => self.outbound.send(item).map_err(|_| self.worker_gone()),
        }
    }

    /// Waits for the worker's answer to a FIN or flush.
    fn wait_reply(&self, reply: Receiver<io::Result<()>>) -> io::Result<()> {
        let timeout = *lock(&self.write_timeout);
        match timeout {
            Some(timeout) => reply.recv_timeout(timeout).map_err(|e| {
                if e.is_timeout() {
                    io::Error::new(io::ErrorKind::WouldBlock, "write timed out")
                } else {
                    self.worker_gone()
                }
            })?,
            None => reply.recv().map_err(|_| self.worker_gone())?,
        }
    }

    fn worker_gone(&self) -> io::Error {
        match self.shared.failure() {
            Some(failure) => failure.write_error(),
            None => io::Error::new(io::ErrorKind::BrokenPipe, "the stream is closed"),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let linger = self.options.get_linger();
        if self.outbound.send_timeout(Outbound::Close, linger).is_ok() {
            // Disconnects when the worker has finished.
            let _ = self.alive.recv_timeout(linger);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Read for Stream {
    /// Reads what has arrived, blocking until something has (or the read
    /// timeout passes). `Ok(0)` means the peer shut down its side.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
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
