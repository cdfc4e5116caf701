//! The secured connection: records sealed with the keys of a finished
//! handshake, each carried as a length-prefixed frame; reading and
//! writing work from two threads at once, each direction with its own
//! counter (the Noise nonce).

use super::channel::Channel;
use super::keys::PublicKey;
use snow::StatelessTransportState;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The largest Noise message (the Noise limit).
pub(crate) const MAX_MESSAGE: usize = 65535;
/// The authentication tag each record carries.
pub(crate) const TAG_LEN: usize = 16;
/// The most plaintext one record carries.
pub(crate) const MAX_PLAIN: usize = MAX_MESSAGE - TAG_LEN;
/// The most one write takes (sealed as several records).
const MAX_WRITE: usize = 4 * MAX_PLAIN;
/// The length prefix of a frame.
pub(crate) const PREFIX_LEN: usize = 2;
/// Bytes read ahead from the connection at most: two whole frames.
const RAW_CAPACITY: usize = 2 * (PREFIX_LEN + MAX_MESSAGE);
/// The read-ahead buffer to begin with: it grows with the records that
/// come (an idle or interactive connection keeps little memory).
const RAW_INITIAL: usize = 16 << 10;

/// A connection whose every byte is encrypted and authenticated: made by
/// [`client`](super::client) or [`server`](super::server) over any
/// `Read + Write`, and itself `Read + Write`.
///
/// A record that was changed, replayed, reordered or cut short fails the
/// read with `InvalidData`, and every read after it too. The end of data
/// is a record of its own ([`close_write`](Self::close_write), or
/// [`shutdown`](Self::shutdown) with `Shutdown::Write`): the connection
/// ending without it is `InvalidData` too (a truncation attack), never a
/// clean end. Dropping a `SecureStream` sends no such record: the peer
/// sees an abortive end.
///
/// Reading and writing from two threads: [`try_clone`](Self::try_clone)
/// for a [`Channel`] (a `TcpStream`, a [`Stream`](crate::Stream)), or
/// share it: `&SecureStream` is `Read + Write` when `&S` is.
///
/// ```
/// use amqp_stream::secure::{self, ClientConfig, PresharedKey, ServerConfig};
/// use std::io::{Read, Write};
/// use std::net::{Shutdown, TcpListener, TcpStream};
///
/// let psk = PresharedKey::generate()?;
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let server_psk = psk.clone();
/// let server = std::thread::spawn(move || -> std::io::Result<String> {
///     let (tcp, _) = listener.accept()?;
///     let mut secured = secure::server(tcp, &ServerConfig::psk(server_psk))?;
///     let mut got = String::new();
///     secured.read_to_string(&mut got)?; // until the client's close record
///     secured.write_all(got.to_uppercase().as_bytes())?;
///     secured.shutdown(Shutdown::Write)?;
///     Ok(got)
/// });
///
/// let tcp = TcpStream::connect(addr)?;
/// let mut secured = secure::client(tcp, &ClientConfig::psk(psk))?;
/// secured.write_all(b"hello")?;
/// secured.shutdown(Shutdown::Write)?;
/// let mut answer = String::new();
/// secured.read_to_string(&mut answer)?;
/// assert_eq!(answer, "HELLO");
/// assert_eq!(server.join().unwrap()?, "hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SecureStream<S> {
    inner: S,
    session: Arc<Session>,
}

/// What every handle to one secured connection shares.
pub(crate) struct Session {
    keys: StatelessTransportState,
    sending: Mutex<Sending>,
    receiving: Mutex<Receiving>,
    peer_key: Option<PublicKey>,
    /// A client whose server has not yet said it accepted it (as
    /// `Receiving::awaiting_acceptance`, readable without the reading
    /// lock): a write that finds the stream reset or ended now reports
    /// the refusal, as a read would.
    unaccepted: AtomicBool,
}

/// The writing direction.
struct Sending {
    /// The nonce of the next record.
    nonce: u64,
    /// One sealed frame: `pending[sent..len]` not yet handed to the
    /// connection (the buffer only grows: nothing to zero per record).
    pending: Vec<u8>,
    len: usize,
    sent: usize,
    /// The close record has been sealed.
    closed: bool,
    /// A failure writing to the connection: every later write fails so.
    failed: Option<(ErrorKind, String)>,
}

/// The reading direction.
struct Receiving {
    /// The nonce the next record must have.
    nonce: u64,
    /// Bytes read from the connection: `raw[start..end]` not yet used.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    /// Opened plaintext not yet read: `plain[at..len]` (for reads into
    /// buffers smaller than the record; grows when needed).
    plain: Vec<u8>,
    at: usize,
    len: usize,
    state: ReadState,
    /// A client whose server has not yet said it accepted it: an end or
    /// a reset now is the server's refusal.
    awaiting_acceptance: bool,
}

#[derive(Clone)]
enum ReadState {
    Open,
    /// The peer's close record came: reads give `Ok(0)`.
    Closed,
    /// A bad record or a cut-off connection: reads fail so.
    Failed(ErrorKind, String),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

impl Session {
    /// A session from a finished handshake; the first records in each
    /// direction have the nonces given.
    pub(crate) fn new(
        keys: StatelessTransportState,
        send_nonce: u64,
        receive_nonce: u64,
        peer_key: Option<PublicKey>,
        awaiting_acceptance: bool,
    ) -> Session {
        Session {
            keys,
            sending: Mutex::new(Sending {
                nonce: send_nonce,
                pending: Vec::new(),
                len: 0,
                sent: 0,
                closed: false,
                failed: None,
            }),
            receiving: Mutex::new(Receiving {
                nonce: receive_nonce,
                raw: vec![0; RAW_INITIAL],
                start: 0,
                end: 0,
                plain: Vec::new(),
                at: 0,
                len: 0,
                state: ReadState::Open,
                awaiting_acceptance,
            }),
            peer_key,
            unaccepted: AtomicBool::new(awaiting_acceptance),
        }
    }

    /// Seals `plain` (at most [`MAX_PLAIN`] bytes; empty: the close
    /// record) as the next frame, after those pending.
    fn seal(&self, sending: &mut Sending, plain: &[u8]) -> io::Result<()> {
        let sealed = plain.len() + TAG_LEN;
        let (from, to) = (sending.len, sending.len + PREFIX_LEN + sealed);
        if sending.pending.len() < to {
            sending.pending.resize(to, 0);
        }
        sending.pending[from..from + PREFIX_LEN].copy_from_slice(&(sealed as u16).to_be_bytes());
        self.keys
            .write_message(
                sending.nonce,
                plain,
                &mut sending.pending[from + PREFIX_LEN..to],
            )
            .map_err(|err| io::Error::other(format!("sealing a record: {err}")))?;
        sending.nonce += 1;
        sending.len = to;
        Ok(())
    }

    /// Hands what is pending to `inner`. A timeout leaves the rest
    /// pending (the next call goes on with it); any other failure is
    /// final.
    fn push(sending: &mut Sending, inner: &mut impl Write) -> io::Result<()> {
        if let Some((kind, message)) = &sending.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        while sending.sent < sending.len {
            match inner.write(&sending.pending[sending.sent..sending.len]) {
                Ok(0) => {
                    let err = io::Error::new(ErrorKind::WriteZero, "the connection took nothing");
                    sending.failed = Some((err.kind(), err.to_string()));
                    return Err(err);
                }
                Ok(n) => sending.sent += n,
                Err(err) if transient(&err) => return Err(err),
                Err(err) => {
                    sending.failed = Some((err.kind(), err.to_string()));
                    return Err(err);
                }
            }
        }
        sending.len = 0;
        sending.sent = 0;
        Ok(())
    }

    fn write(&self, inner: &mut impl Write, data: &[u8]) -> io::Result<usize> {
        self.write_unless_refused(inner, data)
            .map_err(|err| self.refused_or(err))
    }

    /// `err`, or, while the server has not accepted this client, the
    /// refusal that a reset or end of the stream means then (the writing
    /// thread may learn of it before the reading one).
    fn refused_or(&self, err: io::Error) -> io::Error {
        let ended = matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        );
        if ended && self.unaccepted.load(Ordering::SeqCst) {
            io::Error::new(ErrorKind::PermissionDenied, REFUSED)
        } else {
            err
        }
    }

    fn write_unless_refused(&self, inner: &mut impl Write, data: &[u8]) -> io::Result<usize> {
        let mut sending = lock(&self.sending);
        Self::push(&mut sending, inner)?;
        if sending.closed {
            return Err(io::Error::new(
                ErrorKind::BrokenPipe,
                "this end's direction is shut down",
            ));
        }
        if data.is_empty() {
            return Ok(0);
        }
        // Several records at once, handed on together: a 64 KiB write
        // (one record and a small one) is one write underneath, not a
        // full one and a tiny one that wakes the reader by itself.
        let n = data.len().min(MAX_WRITE);
        for record in data[..n].chunks(MAX_PLAIN) {
            self.seal(&mut sending, record)?;
        }
        // Sealed, the bytes are taken: a timeout leaves them pending.
        match Self::push(&mut sending, inner) {
            Err(err) if !transient(&err) => Err(err),
            _ => Ok(n),
        }
    }

    fn flush(&self, inner: &mut impl Write) -> io::Result<()> {
        Self::push(&mut lock(&self.sending), inner)
            .and_then(|()| inner.flush())
            .map_err(|err| self.refused_or(err))
    }

    fn close_write(&self, inner: &mut impl Write) -> io::Result<()> {
        self.close_write_unless_refused(inner)
            .map_err(|err| self.refused_or(err))
    }

    fn close_write_unless_refused(&self, inner: &mut impl Write) -> io::Result<()> {
        let mut sending = lock(&self.sending);
        if !sending.closed {
            Self::push(&mut sending, inner)?;
            self.seal(&mut sending, &[])?;
            sending.closed = true;
        }
        Self::push(&mut sending, inner)?;
        inner.flush()
    }

    fn read(&self, inner: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
        let mut receiving = lock(&self.receiving);
        let r = &mut *receiving;
        loop {
            if r.at < r.len {
                let n = buf.len().min(r.len - r.at);
                buf[..n].copy_from_slice(&r.plain[r.at..r.at + n]);
                r.at += n;
                return Ok(n);
            }
            match &r.state {
                ReadState::Open => {}
                ReadState::Closed => return Ok(0),
                ReadState::Failed(kind, message) => {
                    return Err(io::Error::new(*kind, message.clone()));
                }
            }
            if buf.is_empty() {
                return Ok(0);
            }
            match self.open_next(r, buf) {
                Ok(Some(0)) => {}
                // Opened straight into `buf`.
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {
                    if let Err(err) = r.fill(inner) {
                        return Err(r.refused_or(err));
                    }
                }
                Err(err) => {
                    r.state = ReadState::Failed(err.kind(), err.to_string());
                    return Err(err);
                }
            }
        }
    }

    /// Opens the next whole frame in `raw`, if there is one: into `buf`
    /// when it fits (`Some(n)`), else into `plain` (`Some(0)`). The
    /// close record sets the state.
    fn open_next(&self, r: &mut Receiving, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let available = r.end - r.start;
        if available < PREFIX_LEN {
            return Ok(None);
        }
        let sealed = u16::from_be_bytes([r.raw[r.start], r.raw[r.start + 1]]) as usize;
        if sealed < TAG_LEN {
            return Err(invalid("a record too short to be sealed"));
        }
        if available < PREFIX_LEN + sealed {
            return Ok(None);
        }
        let frame = &r.raw[r.start + PREFIX_LEN..r.start + PREFIX_LEN + sealed];
        let plain_len = sealed - TAG_LEN;
        // The cipher opens in place: room for the tag too, or it makes
        // a copy of its own.
        let into_buf = plain_len > 0 && buf.len() >= sealed;
        if !into_buf && r.plain.len() < sealed {
            r.plain.resize(sealed, 0);
        }
        let out: &mut [u8] = if into_buf {
            buf
        } else {
            &mut r.plain[..sealed]
        };
        let opened = self.keys.read_message(r.nonce, frame, out).map_err(|_| {
            invalid(
                "a record failed authentication: changed, replayed, reordered, \
                     or sealed with other keys",
            )
        })?;
        r.nonce += 1;
        r.start += PREFIX_LEN + sealed;
        if r.awaiting_acceptance {
            if opened != 0 {
                return Err(invalid("the server's first record was not its acceptance"));
            }
            r.awaiting_acceptance = false;
            self.unaccepted.store(false, Ordering::SeqCst);
            return Ok(Some(0));
        }
        if opened == 0 {
            r.state = ReadState::Closed;
            return Ok(Some(0));
        }
        if into_buf {
            Ok(Some(opened))
        } else {
            r.at = 0;
            r.len = opened;
            Ok(Some(0))
        }
    }
}

/// What a client learns when its server ends the stream before accepting
/// it.
const REFUSED: &str = "the server refused this end's key (it ended the stream before accepting it)";

fn invalid(message: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message.to_string())
}

impl Receiving {
    /// `err`, or, while the server has not accepted this client, the
    /// refusal that the end of the stream (or its reset) means then.
    fn refused_or(&mut self, err: io::Error) -> io::Error {
        let refusal = matches!(
            err.kind(),
            ErrorKind::InvalidData
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
        );
        if !(self.awaiting_acceptance && refusal) {
            return err;
        }
        let err = io::Error::new(ErrorKind::PermissionDenied, REFUSED);
        self.state = ReadState::Failed(err.kind(), err.to_string());
        err
    }

    /// Reads more of the connection into `raw`. Its end here is an
    /// error: the peer's close record did not come.
    fn fill(&mut self, inner: &mut impl Read) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // The whole of the frame being read must fit after `start`.
        let frame = if self.end - self.start >= PREFIX_LEN {
            PREFIX_LEN
                + u16::from_be_bytes([self.raw[self.start], self.raw[self.start + 1]]) as usize
        } else {
            PREFIX_LEN
        };
        if self.start + frame > self.raw.len() || self.end == self.raw.len() {
            self.raw.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if frame > self.raw.len() || self.end == self.raw.len() {
            let grown = (2 * self.raw.len()).max(frame).min(RAW_CAPACITY);
            self.raw.resize(grown, 0);
        }
        let n = inner.read(&mut self.raw[self.end..])?;
        if n == 0 {
            let err = invalid(if self.start == self.end {
                "the connection ended without the peer's close record (truncated)"
            } else {
                "the connection ended in the middle of a record (truncated)"
            });
            self.state = ReadState::Failed(err.kind(), err.to_string());
            return Err(err);
        }
        self.end += n;
        Ok(())
    }
}

impl<S> SecureStream<S> {
    pub(crate) fn new(inner: S, session: Session) -> SecureStream<S> {
        SecureStream {
            inner,
            session: Arc::new(session),
        }
    }

    /// The peer's public key, when it authenticated with a key pair (on
    /// the server: which of the authorized keys it used).
    pub fn peer_key(&self) -> Option<&PublicKey> {
        self.session.peer_key.as_ref()
    }

    /// The connection underneath. Reading or writing it directly breaks
    /// the secured stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Another handle to this secured connection over `inner`, which
    /// must be a handle to the same connection (from its own
    /// `try_clone`, say): one thread may read while another writes.
    pub fn with_handle(&self, inner: S) -> SecureStream<S> {
        SecureStream {
            inner,
            session: Arc::clone(&self.session),
        }
    }

    /// Sends the end of data: an authenticated close record after
    /// everything written, then flushes. The connection itself stays
    /// open (close it, or use [`shutdown`](Self::shutdown)).
    pub fn close_write(&mut self) -> io::Result<()>
    where
        S: Write,
    {
        self.session.close_write(&mut self.inner)
    }
}

impl<S: Channel> SecureStream<S> {
    /// Another handle for another thread.
    pub fn try_clone(&self) -> io::Result<SecureStream<S>> {
        Ok(self.with_handle(self.inner.try_clone()?))
    }

    /// Shuts down reading, writing or both. `Write` (and `Both`) first
    /// sends the close record, then the connection's own end of data.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()>
    where
        for<'a> &'a S: Write,
    {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.session.close_write(&mut &self.inner)?;
        }
        self.inner
            .shutdown(how)
            .map_err(|err| self.session.refused_or(err))
    }
}

impl<S: Read> Read for SecureStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.read(&mut self.inner, buf)
    }
}

impl<S> Read for &SecureStream<S>
where
    for<'a> &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.read(&mut &self.inner, buf)
    }
}

impl<S: Write> Write for SecureStream<S> {
    /// Seals up to four records' worth of `buf` and hands it on. Once it
    /// returns `Ok(n)` the bytes are taken: a connection that times out
    /// keeps the rest of the record for the next write or flush.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session.write(&mut self.inner, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.session.flush(&mut self.inner)
    }
}

impl<S> Write for &SecureStream<S>
where
    for<'a> &'a S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session.write(&mut &self.inner, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.session.flush(&mut &self.inner)
    }
}

impl<S: fmt::Debug> fmt::Debug for SecureStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("inner", &self.inner)
            .field("peer_key", &self.session.peer_key)
            .finish_non_exhaustive()
    }
}
