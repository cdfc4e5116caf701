//! Reads that must all end by one deadline: a peer that sends a byte
//! just within each read's timeout (a slowloris client) still runs out
//! of time, where a read timeout alone bounds only each read.

use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// `conn` whose reads, together, end within `limit` of its making: each
/// read's timeout (set through `set_read_timeout`) is the time left, and
/// a read once it is gone fails with `TimedOut`. Writes pass through.
///
/// ```ignore
/// let mut limited = ByDeadline::new(&client, HANDSHAKE_TIMEOUT, |t| client.set_read_timeout(t));
/// let request = read_greeting_and_request(&mut limited)?;
/// ```
pub struct ByDeadline<C, F> {
    conn: C,
    set_read_timeout: F,
    deadline: Instant,
    limit: Duration,
}

impl<C, F: Fn(Option<Duration>) -> io::Result<()>> ByDeadline<C, F> {
    /// Bounds the reads of `conn` to `limit` from now, in all.
    pub fn new(conn: C, limit: Duration, set_read_timeout: F) -> Self {
        ByDeadline {
            conn,
            set_read_timeout,
            // A limit beyond what an `Instant` holds is a long one still.
            deadline: Instant::now()
                .checked_add(limit)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(u32::MAX.into())),
            limit,
        }
    }
}

impl<C: Read, F: Fn(Option<Duration>) -> io::Result<()>> Read for ByDeadline<C, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("took longer than {:?} in all", self.limit),
            ));
        }
        (self.set_read_timeout)(Some(left))?;
        self.conn.read(buf)
    }
}

impl<C: Write, F> Write for ByDeadline<C, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_byte_within_each_read_timeout_still_runs_out_of_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut slow = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let limit = Duration::from_millis(300);
        let mut limited = ByDeadline::new(&conn, limit, |t| conn.set_read_timeout(t));
        let started = Instant::now();
        let sender = std::thread::spawn(move || {
            // A byte every 100 ms, for a second.
            for _ in 0..10 {
                if slow.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Ten bytes would come within 1 s, each within 100 ms.
        let err = limited.read_exact(&mut [0u8; 10]).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "{err}"
        );
        assert!(started.elapsed() < limit * 3, "{:?}", started.elapsed());
        drop(conn);
        sender.join().unwrap();
    }
}
