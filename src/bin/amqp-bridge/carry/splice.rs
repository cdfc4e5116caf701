//! Copying both ways between two connections. An end of data on one side
//! is passed on as a half-close (FIN); an abortive end (a reset, a lost
//! broker connection, a failed write) ends the other side abortively
//! too, as a TCP RST or a stream reset: never as a FIN. A connection whose
//! data ended is still watched while the other direction goes on: a
//! stream whose peer dies after its FIN fails (its keepalives find the
//! peer gone), and the splice resets both sides then, even if the other
//! side sends nothing that could fail.

use crate::carry::abort::{abort_stream, abort_tcp, settle_tcp};
use amqp_stream::Stream;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Resets one spliced connection (both of its sides) from outside, for
/// the reason given (what its log line and metrics report).
pub type Aborter = Arc<dyn Fn(io::Error) + Send + Sync>;

/// How much one read may take from a connection: a full default message.
const CHUNK: usize = 64 * 1024;

/// How long one write may block before it looks whether the splice was
/// aborted meanwhile (then it gives up, and lets go of its handle).
const WRITE_POLL: Duration = Duration::from_millis(200);

/// How often a connection whose data ended is asked whether it broke,
/// while the other direction goes on.
const WATCH: Duration = Duration::from_millis(500);

/// What a connection says when asked whether it broke (see
/// [`Duplex::health`]).
pub enum Health {
    /// Nothing to ask without writing (TCP).
    Unknown,
    /// Not broken, as far as it knows.
    Fine,
    /// Broken: its peer is gone or reset it, or the broker is lost.
    Broken(io::Error),
}

/// A stream's [`Health`]: a flush fails once the stream has (its
/// keepalives found the peer gone, the peer reset it, the broker
/// connection was lost); one that waits for the broker's confirms past
/// the write limit is no news.
pub fn stream_health(stream: &Stream) -> Health {
    match (&mut &*stream).flush() {
        Ok(()) => Health::Fine,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            Health::Fine
        }
        Err(err) => Health::Broken(err),
    }
}

/// A connection that can be split into handles for two threads, closed
/// one direction at a time, or reset.
pub trait Duplex: Read + Write + Send + Sync + Sized + 'static {
    /// Another handle to the same connection.
    fn duplicate(&self) -> io::Result<Self>;
    /// Sends the end of data (FIN) after everything written.
    fn finish(&self) -> io::Result<()>;
    /// Makes a read blocked in another thread return, sending nothing.
    fn stop_reading(&self);
    /// Makes the close abortive, once every handle is dropped.
    fn abort(&self);
    /// Waits (briefly) until what was written has left: bytes the bridge
    /// took before a reset then reach the peer ahead of the reset, as
    /// they would over TCP.
    fn drain(&self);
    /// Bounds how long one write blocks (`None`: forever).
    fn set_write_limit(&self, limit: Option<Duration>) -> io::Result<()>;
    /// Makes the close orderly: the connection ended normally (a TCP
    /// connection is abortive until then, see
    /// [`abort`](crate::carry::abort)).
    fn settle(&self);
    /// Whether the connection broke, asked without reading or writing
    /// data, while only the other direction is in use.
    fn health(&self) -> Health;
}

impl Duplex for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn finish(&self) -> io::Result<()> {
        match self.shutdown(Shutdown::Write) {
            // The peer has already closed both ways: nothing to end.
            Err(err) if err.kind() == ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
    fn stop_reading(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
    fn abort(&self) {
        abort_tcp(self);
    }
    fn drain(&self) {
        // Written bytes are in the kernel's hands already.
    }
    fn set_write_limit(&self, limit: Option<Duration>) -> io::Result<()> {
        self.set_write_timeout(limit)
    }
    fn settle(&self) {
        settle_tcp(self);
    }
    fn health(&self) -> Health {
        // A peer that died after its FIN shows only when written to.
        Health::Unknown
    }
}

impl Duplex for Stream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn finish(&self) -> io::Result<()> {
        // The FIN waits for the broker's confirm: no write limit on it.
        self.set_write_timeout(None)?;
        self.shutdown(Shutdown::Write)
    }
    fn stop_reading(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
    fn abort(&self) {
        abort_stream(self);
    }
    fn drain(&self) {
        // Bounded by the write limit: the broker's confirms, if they come.
        let _ = (&mut &*self).flush();
    }
    fn set_write_limit(&self, limit: Option<Duration>) -> io::Result<()> {
        self.set_write_timeout(limit)
    }
    fn settle(&self) {
        // A stream closes in order unless it was reset.
    }
    fn health(&self) -> Health {
        stream_health(self)
    }
}

/// Which of the two spliced connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first connection given to [`splice`].
    First,
    /// The second.
    Second,
}

/// Why a spliced connection ended abortively.
#[derive(Debug)]
pub struct Failure {
    /// The connection whose read or write failed.
    pub side: Side,
    /// What failed.
    pub error: io::Error,
    /// Whether a FIN had already gone either way between that side and
    /// the bridge: a peer that resets after a half-close (as a database
    /// server does once its client has said goodbye) has ended normally.
    pub after_fin: bool,
}

impl Failure {
    /// Whether the peer on `side` ended the connection itself (a reset,
    /// a broken pipe): its business, not a fault of the bridge.
    pub fn is_peer_reset(&self) -> bool {
        matches!(
            self.error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::NotConnected
        )
    }
}

/// What went through a spliced connection.
#[derive(Debug, Default)]
pub struct Transfer {
    /// Bytes from the first connection to the second.
    pub forth: u64,
    /// Bytes from the second connection back to the first.
    pub back: u64,
    /// The first failure, if the splice ended abortively.
    pub failure: Option<Failure>,
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended. The
/// end of data of one direction is passed on as a half-close; a failure
/// in either resets both connections. `on_abort` is given a function that
/// resets both from outside (for a bridge that stops with it open).
pub fn splice<A: Duplex, B: Duplex>(a: A, b: B, on_abort: impl FnOnce(Aborter)) -> Transfer {
    let state = Arc::new(Mutex::new(State::default()));
    let prepared = (|| {
        a.set_write_limit(Some(WRITE_POLL))?;
        b.set_write_limit(Some(WRITE_POLL))?;
        let (a_reader, b_reader) = (a.duplicate()?, b.duplicate()?);
        let (a_kept, b_kept) = (a.duplicate()?, b.duplicate()?);
        let ends = (a.duplicate()?, b.duplicate()?);
        Ok::<_, io::Error>((a_reader, b_reader, a_kept, b_kept, ends))
    })();
    let (a_reader, b_reader, (a_end, b_end)) = match prepared {
        Ok((a_reader, b_reader, a_kept, b_kept, ends)) => {
            let stopped = Arc::clone(&state);
            on_abort(Arc::new(move |why: io::Error| {
                lock(&stopped).fail(Side::First, why);
                for_both(&a_kept, &b_kept);
            }));
            (a_reader, b_reader, ends)
        }
        Err(error) => {
            a.abort();
            b.abort();
            return Transfer {
                failure: Some(Failure {
                    side: Side::First,
                    error,
                    after_fin: false,
                }),
                ..Transfer::default()
            };
        }
    };
    // Each direction's end disconnects the other's watch.
    let (forth_done, forth_ended) = mpsc::channel();
    let (back_done, back_ended) = mpsc::channel();
    let back_state = Arc::clone(&state);
    let back = std::thread::Builder::new()
        .name("splice".to_string())
        .spawn(move || {
            Pump::new(
                b_reader,
                a,
                Side::Second,
                back_state,
                (back_done, forth_ended),
            )
            .run()
        });
    let back = match back {
        Ok(thread) => Some(thread),
        Err(error) => {
            // Not started: its handles were dropped; what is left resets.
            a_reader.abort();
            b.abort();
            lock(&state).fail(Side::First, error);
            None
        }
    };
    let forth = Pump::new(
        a_reader,
        b,
        Side::First,
        Arc::clone(&state),
        (forth_done, back_ended),
    )
    .run();
    let back = back.map_or(0, |thread| {
        thread.join().unwrap_or_else(|_| {
            lock(&state).fail(
                Side::Second,
                io::Error::other("the copying thread panicked"),
            );
            0
        })
    });
    let failure = lock(&state).failure.take();
    if failure.is_none() {
        // Both ends of data went through: the closes are orderly.
        a_end.settle();
        b_end.settle();
    }
    Transfer {
        forth,
        back,
        failure,
    }
}

/// What both directions share: which sides have sent their FIN, and the
/// first failure. Deciding to pass a FIN on and deciding to abort happen
/// under its lock, so a FIN never follows an abort.
#[derive(Default)]
struct State {
    fin_from_first: bool,
    fin_from_second: bool,
    failure: Option<Failure>,
}

impl State {
    fn aborted(&self) -> bool {
        self.failure.is_some()
    }

    fn fail(&mut self, side: Side, error: io::Error) {
        if self.failure.is_none() {
            // A FIN from that side, or one passed on to it from the other.
            let after_fin = self.fin_from_first || self.fin_from_second;
            self.failure = Some(Failure {
                side,
                error,
                after_fin,
            });
        }
    }

    fn fin_from(&mut self, side: Side) {
        match side {
            Side::First => self.fin_from_first = true,
            Side::Second => self.fin_from_second = true,
        }
    }
}

/// Makes both connections reset when closed and wakes both directions.
fn for_both<A: Duplex, B: Duplex>(a: &A, b: &B) {
    a.abort();
    b.abort();
    a.stop_reading();
    b.stop_reading();
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn other(side: Side) -> Side {
    match side {
        Side::First => Side::Second,
        Side::Second => Side::First,
    }
}

/// One direction: reads `from` (the connection on `side`) into `to`.
struct Pump<R, W> {
    from: R,
    to: W,
    side: Side,
    state: Arc<Mutex<State>>,
    copied: u64,
    /// Dropped when this direction ends, which ends the other's watch.
    _done: Sender<()>,
    /// Disconnected when the other direction has ended.
    other_ended: Receiver<()>,
}

impl<R: Duplex, W: Duplex> Pump<R, W> {
    fn new(
        from: R,
        to: W,
        side: Side,
        state: Arc<Mutex<State>>,
        (done, other_ended): (Sender<()>, Receiver<()>),
    ) -> Self {
        Pump {
            from,
            to,
            side,
            state,
            copied: 0,
            _done: done,
            other_ended,
        }
    }

    /// Copies until the end of data, which it passes on (then watches
    /// `from` until the other direction ends), or a failure, which
    /// resets both connections; returns the bytes copied. Its two
    /// handles are dropped when it returns: the last handle of an aborted
    /// connection sends the reset.
    fn run(mut self) -> u64 {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = match self.from.read(&mut buf) {
                Ok(0) => {
                    self.pass_fin_on();
                    self.watch();
                    break;
                }
                Ok(n) => n,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => {
                    // What came before the reset goes on ahead of it.
                    self.to.drain();
                    self.abort(self.side, err);
                    break;
                }
            };
            match self.write_all(&buf[..n]) {
                Ok(true) => {}
                // The other direction failed: it has reset both sides.
                Ok(false) => break,
                Err(err) => {
                    self.abort(other(self.side), err);
                    break;
                }
            }
        }
        self.copied
    }

    /// Writes all of `data`; a write blocked past [`WRITE_POLL`] looks
    /// whether the splice was aborted meanwhile, and if so gives up:
    /// `Ok(false)`.
    fn write_all(&mut self, mut data: &[u8]) -> io::Result<bool> {
        while !data.is_empty() {
            match self.to.write(data) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    self.copied += n as u64;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if lock(&self.state).aborted() {
                        return Ok(false);
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// The end of data from `from`: a FIN to `to`, unless the splice was
    /// aborted (then `from`'s read ended because the other direction
    /// woke it).
    fn pass_fin_on(&mut self) {
        let mut state = lock(&self.state);
        if state.aborted() {
            return;
        }
        state.fin_from(self.side);
        if let Err(err) = self.to.finish() {
            drop(state);
            self.abort(other(self.side), err);
        }
    }

    /// After `from`'s end of data, while the other direction goes on:
    /// asks `from` now and then whether it broke, and if so resets both
    /// connections. A stream's peer that dies after its FIN is otherwise
    /// noticed only by a write to it, which a silent other side never
    /// makes. Returns once the other direction has ended, the splice was
    /// aborted, or `from` cannot tell.
    fn watch(&self) {
        loop {
            if lock(&self.state).aborted() {
                return;
            }
            match self.from.health() {
                Health::Unknown => return,
                Health::Fine => {}
                Health::Broken(err) => {
                    self.abort(self.side, err);
                    return;
                }
            }
            match self.other_ended.recv_timeout(WATCH) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Records the failure of `failed` (unless one came first), makes
    /// both connections reset when closed and wakes the other direction,
    /// so that it lets go of its handles too.
    fn abort(&self, failed: Side, error: io::Error) {
        lock(&self.state).fail(failed, error);
        for_both(&self.from, &self.to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    const BOUND: Duration = Duration::from_secs(20);

    /// A connected pair of loopback sockets: (the outside end, the end
    /// the splice gets).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let outside = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (inside, _) = listener.accept().unwrap();
        outside.set_read_timeout(Some(BOUND)).unwrap();
        (outside, inside)
    }

    /// Splices two fresh pairs on a thread; returns both outside ends,
    /// the transfer (when it ends) and the outside abort function.
    fn spliced() -> (TcpStream, TcpStream, mpsc::Receiver<Transfer>, Aborter) {
        let ((one, a), (two, b)) = (pair(), pair());
        let (done_tx, done) = mpsc::channel();
        let (abort_tx, abort) = mpsc::channel();
        std::thread::spawn(move || {
            let transfer = splice(a, b, |f| abort_tx.send(f).unwrap());
            let _ = done_tx.send(transfer);
        });
        (one, two, done, abort.recv().unwrap())
    }

    fn read_to_end(mut tcp: &TcpStream) -> (Vec<u8>, io::Result<()>) {
        let mut got = Vec::new();
        let end = tcp.read_to_end(&mut got).map(drop);
        (got, end)
    }

    fn reset(tcp: TcpStream) {
        abort_tcp(&tcp);
        drop(tcp);
    }

    #[test]
    fn an_end_of_data_passes_on_as_an_end_of_data() {
        let (mut one, mut two, done, _) = spliced();
        one.write_all(b"request").unwrap();
        one.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&two).0, b"request");
        two.write_all(b"answer").unwrap();
        two.shutdown(Shutdown::Write).unwrap();
        let (got, end) = read_to_end(&one);
        assert_eq!(got, b"answer");
        end.unwrap();
        let transfer = done.recv_timeout(BOUND).unwrap();
        assert!(transfer.failure.is_none(), "{:?}", transfer.failure);
        assert_eq!((transfer.forth, transfer.back), (7, 6));
    }

    #[test]
    fn a_reset_passes_on_as_a_reset() {
        let (mut one, two, done, _) = spliced();
        one.write_all(b"partial").unwrap();
        let mut first = [0u8; 7];
        (&two).read_exact(&mut first).unwrap();
        reset(one);
        let err = read_to_end(&two).1.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        let failure = done.recv_timeout(BOUND).unwrap().failure.unwrap();
        assert_eq!(failure.side, Side::First);
        assert!(failure.is_peer_reset(), "{:?}", failure.error);
    }

    #[test]
    fn a_writer_blocked_on_a_reader_that_does_not_read_lets_go_after_a_reset() {
        let (one, mut two, done, _) = spliced();
        // Fill every buffer towards `two`, which reads nothing, until
        // `one` cannot write for a while: the copy towards `two` is then
        // blocked in a write.
        one.set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let chunk = vec![0u8; 64 << 10];
        loop {
            match (&one).write(&chunk) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) => panic!("{err}"),
            }
        }
        // `one` goes away abortively; the other direction finds out when
        // it writes there, and the blocked copy must let go of `two`.
        reset(one);
        let deadline = std::time::Instant::now() + BOUND;
        let transfer = loop {
            let _ = two.write_all(b"are you there?");
            if let Ok(transfer) = done.recv_timeout(Duration::from_millis(100)) {
                break transfer;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the blocked copy never let go"
            );
        };
        assert_eq!(transfer.failure.unwrap().side, Side::First);
        let (_, end) = read_to_end(&two);
        assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
    }

    #[test]
    fn the_outside_abort_resets_both_sides() {
        let (one, two, done, abort) = spliced();
        abort(io::Error::new(ErrorKind::Interrupted, "stopped"));
        let failure = done.recv_timeout(BOUND).unwrap().failure.unwrap();
        assert_eq!(failure.error.kind(), ErrorKind::Interrupted);
        // Its handles are the last: dropping it sends the resets (the
        // bridge drops it with the connection's guard).
        drop(abort);
        for side in [&one, &two] {
            let err = read_to_end(side).1.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        }
    }

    /// A TCP connection that says it broke once `broken` is set, as a
    /// stream does once its keepalives find the peer gone.
    struct Mortal {
        tcp: TcpStream,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Read for Mortal {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.tcp.read(buf)
        }
    }

    impl Write for Mortal {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.tcp.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.tcp.flush()
        }
    }

    impl Duplex for Mortal {
        fn duplicate(&self) -> io::Result<Self> {
            Ok(Mortal {
                tcp: self.tcp.try_clone()?,
                broken: Arc::clone(&self.broken),
            })
        }
        fn finish(&self) -> io::Result<()> {
            self.tcp.finish()
        }
        fn stop_reading(&self) {
            self.tcp.stop_reading();
        }
        fn abort(&self) {
            self.tcp.abort();
        }
        fn drain(&self) {}
        fn set_write_limit(&self, limit: Option<Duration>) -> io::Result<()> {
            self.tcp.set_write_limit(limit)
        }
        fn settle(&self) {
            self.tcp.settle();
        }
        fn health(&self) -> Health {
            if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                Health::Broken(io::Error::new(ErrorKind::BrokenPipe, "the peer is gone"))
            } else {
                Health::Fine
            }
        }
    }

    #[test]
    fn a_connection_that_breaks_after_its_end_of_data_resets_a_silent_other_side() {
        let ((one, a), (two, b)) = (pair(), pair());
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let a = Mortal {
            tcp: a,
            broken: Arc::clone(&broken),
        };
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(splice(a, b, |_| {}));
        });
        // `one` half-closes; `two` gets the end of data and stays silent.
        (&one).write_all(b"request").unwrap();
        one.shutdown(Shutdown::Write).unwrap();
        let mut request = [0u8; 7];
        (&two).read_exact(&mut request).unwrap();
        assert_eq!((&two).read(&mut [0; 1]).unwrap(), 0, "the end of data");
        // Then `one`'s side breaks, which only asking it shows.
        broken.store(true, std::sync::atomic::Ordering::SeqCst);
        let transfer = done.recv_timeout(BOUND).expect("the splice ends");
        let failure = transfer.failure.expect("an abortive end");
        assert_eq!(failure.side, Side::First);
        assert_eq!(failure.error.kind(), ErrorKind::BrokenPipe);
        assert!(failure.after_fin);
        // `two` is reset, not left open (a first write may go before the
        // reset is in).
        let deadline = std::time::Instant::now() + BOUND;
        let err = loop {
            match (&two).write_all(b"anyone?") {
                Ok(()) => assert!(std::time::Instant::now() < deadline, "never reset"),
                Err(err) => break err,
            }
        };
        assert!(
            matches!(
                err.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }
}
