//! Copying both ways between two connections, with half-close carried
//! across, and the per-connection log lines.

use crate::lifecycle::ConnectionGuard;
use amqp_stream::Stream;
use log::{info, warn};
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

/// How much one read may take from a connection: a full default message.
const CHUNK: usize = 64 * 1024;

/// A connection that can be split into a reading and a writing half and
/// shut down one direction at a time.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    /// Another handle to the same connection.
    fn duplicate(&self) -> io::Result<Self>;
    /// Shuts down one or both directions.
    fn close(&self, how: Shutdown) -> io::Result<()>;
}

impl Duplex for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl Duplex for Stream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

/// What went through a spliced connection.
#[derive(Debug, Default)]
pub struct Transfer {
    /// Bytes from the first connection to the second.
    pub forth: u64,
    /// Bytes from the second connection back to the first.
    pub back: u64,
    /// The first failure, if any.
    pub error: Option<io::Error>,
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended.
/// The end of one direction is passed on as a half-close; a failure in
/// either shuts both connections down so that nothing waits.
pub fn splice<A: Duplex, B: Duplex>(a: A, b: B) -> Transfer {
    let (a_reader, b_reader) = match (a.duplicate(), b.duplicate()) {
        (Ok(a_reader), Ok(b_reader)) => (a_reader, b_reader),
        (Err(err), _) | (_, Err(err)) => {
            return Transfer {
                error: Some(err),
                ..Transfer::default()
            };
        }
    };
    let back = std::thread::Builder::new()
        .name("splice".to_string())
        .spawn(move || pump(b_reader, a));
    let back = match back {
        Ok(thread) => thread,
        Err(err) => {
            return Transfer {
                error: Some(err),
                ..Transfer::default()
            };
        }
    };
    let (forth, forth_error) = pump(a_reader, b);
    let (back, back_error) = back
        .join()
        .unwrap_or_else(|_| (0, Some(io::Error::other("the copying thread panicked"))));
    Transfer {
        forth,
        back,
        error: forth_error.or(back_error),
    }
}

/// Copies `from` into `to` until EOF, then half-closes `to`; on failure
/// shuts both down. Returns the bytes copied and the failure.
fn pump<R: Duplex, W: Duplex>(from: R, to: W) -> (u64, Option<io::Error>) {
    let mut reader = BufReader::with_capacity(CHUNK, from);
    let mut writer = Counted {
        inner: to,
        count: 0,
    };
    let result =
        io::copy(&mut reader, &mut writer).and_then(|_| writer.inner.close(Shutdown::Write));
    let error = result.err();
    if error.is_some() {
        let _ = reader.get_ref().close(Shutdown::Both);
        let _ = writer.inner.close(Shutdown::Both);
    }
    (writer.count, error)
}

/// A writer that counts what it wrote.
struct Counted<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The log lines of one bridged connection: one when it opens, one when
/// it closes (with the bytes each way and how long it lasted).
pub struct ConnectionLog {
    guard: ConnectionGuard,
    from: String,
    to: String,
    started: Instant,
}

impl ConnectionLog {
    /// Logs the opening of a connection from `from` to `to`.
    pub fn open(guard: ConnectionGuard, from: impl Into<String>, to: impl Into<String>) -> Self {
        let log = ConnectionLog {
            guard,
            from: from.into(),
            to: to.into(),
            started: Instant::now(),
        };
        info!("#{} open: {} -> {}", log.guard.id(), log.from, log.to);
        log
    }

    /// Logs that the far end could not be reached.
    pub fn failed(self, err: &io::Error) {
        warn!(
            "#{} failed: {} -> {}: {err} (after {:.3} s)",
            self.guard.id(),
            self.from,
            self.to,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Logs the end of a connection and what went through it.
    pub fn closed(self, transfer: &Transfer) {
        let id = self.guard.id();
        let secs = self.started.elapsed().as_secs_f64();
        let (from, to, forth, back) = (&self.from, &self.to, transfer.forth, transfer.back);
        match &transfer.error {
            None => info!(
                "#{id} closed: {from} -> {to}: {forth} bytes sent, {back} bytes received, {secs:.3} s"
            ),
            Some(err) => warn!(
                "#{id} closed with an error: {from} -> {to}: {err}; {forth} bytes sent, {back} bytes received, {secs:.3} s"
            ),
        }
    }
}
