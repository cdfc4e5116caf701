//! Bytes written to a stream and not yet taken by its worker.
//!
//! `write` appends here under a mutex and wakes the worker only when the
//! buffer was empty: back-to-back small writes cost a copy each, not a
//! thread hop each, and the worker takes them all at once.
//!
//! `shutdown(Write)` closes the buffer under the same mutex before it asks
//! the worker for the FIN: a write either got its bytes in before the
//! close (and the worker, which takes the buffer before it sends the FIN,
//! publishes them first) or is refused. No byte a `write` accepted can
//! land behind the FIN.

use super::carrier::Carrier;
use crate::lock::lock;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::sync::{Arc, Mutex, OnceLock};

/// Written bytes on their way to the worker, up to a limit.
pub(crate) struct WriteBuffer {
    /// The stream's carrier (version 3), run with `filled`.
    carrier: Arc<OnceLock<Box<dyn Carrier>>>,
    state: Mutex<Buffered>,
    /// `write` waits while the buffer holds this much.
    limit: usize,
    /// Signalled when the buffer goes from empty to not.
    filled: (Sender<()>, Receiver<()>),
    /// Signalled when the worker took the buffer.
    emptied: (Sender<()>, Receiver<()>),
}

/// The bytes, and whether the writing half is shut.
#[derive(Default)]
struct Buffered {
    bytes: Vec<u8>,
    closed: bool,
}

/// What [`WriteBuffer::append`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Appended {
    /// The bytes are in; the worker was woken if it needed to be.
    Done,
    /// The buffer is full: wait for [`WriteBuffer::emptied`] and try again.
    Full,
    /// The buffer is closed (the stream was shut down for writing): the
    /// bytes were not taken.
    Closed,
}

impl WriteBuffer {
    /// An empty buffer that takes up to about `limit` bytes.
    pub(crate) fn new(limit: usize, carrier: Arc<OnceLock<Box<dyn Carrier>>>) -> WriteBuffer {
        WriteBuffer {
            carrier,
            state: Mutex::new(Buffered::default()),
            limit: limit.max(1),
            filled: bounded(1),
            emptied: bounded(1),
        }
    }

    /// Appends `data` unless the buffer is full or closed.
    pub(crate) fn append(&self, data: &[u8]) -> Appended {
        let mut state = lock(&self.state);
        if state.closed {
            // One wake-up reaches one waiting writer: pass it on.
            let _ = self.emptied.0.try_send(());
            return Appended::Closed;
        }
        if state.bytes.len() >= self.limit {
            return Appended::Full;
        }
        let was_empty = state.bytes.is_empty();
        state.bytes.extend_from_slice(data);
        let room_left = state.bytes.len() < self.limit;
        drop(state);
        if was_empty {
            let _ = self.filled.0.try_send(());
            // The writer's own thread publishes (version 3).
            if let Some(carrier) = self.carrier.get() {
                carrier.run_here();
            }
        }
        if room_left {
            // Another writer waiting for room may go too.
            let _ = self.emptied.0.try_send(());
        }
        Appended::Done
    }

    /// Refuses every later append; `false` if it was closed already. A
    /// writer waiting for room is woken (and then refused).
    pub(crate) fn close(&self) -> bool {
        let was_open = !std::mem::replace(&mut lock(&self.state).closed, true);
        let _ = self.emptied.0.try_send(());
        was_open
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// How many bytes wait to be taken.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).bytes.len()
    }

    /// Takes everything written so far.
    pub(crate) fn take(&self) -> Vec<u8> {
        let bytes = std::mem::take(&mut lock(&self.state).bytes);
        if !bytes.is_empty() {
            let _ = self.emptied.0.try_send(());
        }
        bytes
    }

    /// Ready when bytes arrived in an empty buffer.
    pub(crate) fn filled(&self) -> &Receiver<()> {
        &self.filled.1
    }

    /// Ready when the worker took the buffer.
    pub(crate) fn emptied(&self) -> &Receiver<()> {
        &self.emptied.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_writes_and_wakes_once_per_batch() {
        let buffer = WriteBuffer::new(10, Arc::default());
        assert_eq!(buffer.append(b"abc"), Appended::Done);
        assert_eq!(buffer.append(b"def"), Appended::Done);
        assert!(buffer.filled().try_recv().is_ok());
        assert!(
            buffer.filled().try_recv().is_err(),
            "one wake for the batch"
        );
        // Room is left after each append: a waiting writer may go too.
        assert!(buffer.emptied().try_recv().is_ok());
        assert_eq!(buffer.take(), b"abcdef");
        assert!(buffer.emptied().try_recv().is_ok());
        assert_eq!(buffer.take(), b"");
        assert!(buffer.emptied().try_recv().is_err());
    }

    #[test]
    fn refuses_once_full_until_taken() {
        let buffer = WriteBuffer::new(4, Arc::default());
        assert_eq!(buffer.append(b"12345"), Appended::Done);
        assert_eq!(buffer.append(b"6"), Appended::Full);
        buffer.take();
        assert_eq!(buffer.append(b"6"), Appended::Done);
    }

    #[test]
    fn a_closed_buffer_refuses_and_wakes_a_waiting_writer() {
        let buffer = WriteBuffer::new(4, Arc::default());
        assert_eq!(buffer.append(b"1234"), Appended::Done);
        assert_eq!(buffer.append(b"5"), Appended::Full);
        assert!(buffer.close());
        assert!(
            buffer.emptied().try_recv().is_ok(),
            "the waiting writer wakes"
        );
        assert_eq!(buffer.append(b"5"), Appended::Closed);
        assert!(!buffer.close(), "closed once");
        assert!(buffer.is_closed());
        // What was in before the close is still taken (it precedes the FIN).
        assert_eq!(buffer.take(), b"1234");
    }
}
