//! A connection that counts the bytes read from it and written to it as
//! they go, for the metrics of a transfer still running.

use crate::carry::splice::Duplex;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `inner`, with every byte read added to `read` and every byte written
/// to `written`.
pub struct Metered<D> {
    inner: D,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<D> Metered<D> {
    /// Counts what goes through `inner` into the two counters.
    pub fn new(inner: D, (read, written): (Arc<AtomicU64>, Arc<AtomicU64>)) -> Self {
        Metered {
            inner,
            read,
            written,
        }
    }
}

impl<D: Read> Read for Metered<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<D: Write> Write for Metered<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D: Duplex> Duplex for Metered<D> {
    fn duplicate(&self) -> io::Result<Self> {
        Ok(Metered {
            inner: self.inner.duplicate()?,
            read: Arc::clone(&self.read),
            written: Arc::clone(&self.written),
        })
    }
    fn finish(&self) -> io::Result<()> {
        self.inner.finish()
    }
    fn stop_reading(&self) {
        self.inner.stop_reading();
    }
    fn abort(&self) {
        self.inner.abort();
    }
    fn drain(&self) {
        self.inner.drain();
    }
    fn set_write_limit(&self, limit: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_limit(limit)
    }
    fn settle(&self) {
        self.inner.settle();
    }
    fn health(&self) -> crate::carry::splice::Health {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn counts_both_ways_across_duplicates() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut outside = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (inside, _) = listener.accept().unwrap();
        let counters = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut metered = Metered::new(inside, counters.clone());
        let mut copy = metered.duplicate().unwrap();
        copy.write_all(b"hello").unwrap();
        outside.write_all(b"abc").unwrap();
        let mut got = [0u8; 3];
        metered.read_exact(&mut got).unwrap();
        assert_eq!(counters.0.load(Ordering::Relaxed), 3);
        assert_eq!(counters.1.load(Ordering::Relaxed), 5);
    }
}
