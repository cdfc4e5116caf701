//! Bytes written to a stream and not yet taken by its worker.
//!
//! `write` appends here under a mutex and wakes the worker only when the
//! buffer was empty: back-to-back small writes cost a copy each, not a
//! thread hop each, and the worker takes them all at once.

use crate::shared::lock;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::sync::Mutex;

/// Written bytes on their way to the worker, up to a limit.
pub(crate) struct WriteBuffer {
    bytes: Mutex<Vec<u8>>,
    /// `write` waits while the buffer holds this much.
    limit: usize,
    /// Signalled when the buffer goes from empty to not.
    filled: (Sender<()>, Receiver<()>),
    /// Signalled when the worker took the buffer.
    emptied: (Sender<()>, Receiver<()>),
}

/// What [`WriteBuffer::append`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Appended {
    /// The bytes are in; the worker was woken if it needed to be.
    Done,
    /// The buffer is full: wait for [`WriteBuffer::emptied`] and try again.
    Full,
}

impl WriteBuffer {
    /// An empty buffer that takes up to about `limit` bytes.
    pub(crate) fn new(limit: usize) -> WriteBuffer {
        WriteBuffer {
            bytes: Mutex::new(Vec::new()),
            limit: limit.max(1),
            filled: bounded(1),
            emptied: bounded(1),
        }
    }

    /// Appends `data` unless the buffer is full.
    pub(crate) fn append(&self, data: &[u8]) -> Appended {
        let mut bytes = lock(&self.bytes);
        if bytes.len() >= self.limit {
            return Appended::Full;
        }
        let was_empty = bytes.is_empty();
        bytes.extend_from_slice(data);
        drop(bytes);
        if was_empty {
            let _ = self.filled.0.try_send(());
        }
        Appended::Done
    }

    /// Takes everything written so far.
    pub(crate) fn take(&self) -> Vec<u8> {
        let bytes = std::mem::take(&mut *lock(&self.bytes));
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
        let buffer = WriteBuffer::new(10);
        assert_eq!(buffer.append(b"abc"), Appended::Done);
        assert_eq!(buffer.append(b"def"), Appended::Done);
        assert!(buffer.filled().try_recv().is_ok());
        assert!(
            buffer.filled().try_recv().is_err(),
            "one wake for the batch"
        );
        assert_eq!(buffer.take(), b"abcdef");
        assert!(buffer.emptied().try_recv().is_ok());
        assert_eq!(buffer.take(), b"");
        assert!(buffer.emptied().try_recv().is_err());
    }

    #[test]
    fn refuses_once_full_until_taken() {
        let buffer = WriteBuffer::new(4);
        assert_eq!(buffer.append(b"12345"), Appended::Done);
        assert_eq!(buffer.append(b"6"), Appended::Full);
        buffer.take();
        assert_eq!(buffer.append(b"6"), Appended::Done);
    }
}
