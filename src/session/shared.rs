//! The state a stream's worker and its user-facing handles both see: the
//! stream's failure, the `nodelay` switch and the send window.

use super::carrier::Carrier;
use super::credit::SendWindow;
use super::write_buffer::WriteBuffer;
use crate::lock::lock;
use crossbeam_channel::{Receiver, Sender, bounded};
use log::debug;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Why a stream can no longer carry data.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The peer's queue is gone (the peer closed or died).
    PeerGone(String),
    /// The peer aborted the stream with a reset frame.
    PeerReset(String),
    /// The peer broke the protocol (or we did, and told it so).
    Protocol(String),
    /// The broker connection or our channel failed.
    BrokerLost(String),
    /// The broker refused (nacked) a message of ours: what was written
    /// cannot all arrive, so the stream is aborted.
    Refused(String),
}

impl Failure {
    /// The error a `read` reports.
    pub(crate) fn read_error(&self) -> io::Error {
        match self {
            Failure::PeerGone(why) | Failure::PeerReset(why) => {
                io::Error::new(io::ErrorKind::ConnectionReset, why.clone())
            }
            Failure::Protocol(why) => io::Error::new(io::ErrorKind::InvalidData, why.clone()),
            Failure::BrokerLost(why) | Failure::Refused(why) => {
                io::Error::new(io::ErrorKind::ConnectionAborted, why.clone())
            }
        }
    }

    /// The error a `write` reports.
    pub(crate) fn write_error(&self) -> io::Error {
        match self {
            Failure::PeerGone(why) => io::Error::new(io::ErrorKind::BrokenPipe, why.clone()),
            other => other.read_error(),
        }
    }
}

/// How the last handle of a stream ended it.
#[derive(Debug, Clone)]
pub(crate) enum Ending {
    /// A clean close: the FIN (if not sent), then up to `linger` waiting
    /// for the broker's confirms.
    Close { linger: std::time::Duration },
    /// An abortive close: unsent bytes are dropped and the peer is reset
    /// (version 1, which has no reset: no FIN, the queue goes away).
    Reset(String),
}

/// State the worker and the user's handles both see.
pub(crate) struct Shared {
    failure: Mutex<Option<Failure>>,
    /// Set by the last handle before it lets go of the worker.
    ending: Mutex<Option<Ending>>,
    /// Set by the worker when it ended with no failure and every message
    /// confirmed by the broker: a later `flush` has nothing to wait for.
    closed_cleanly: AtomicBool,
    /// Publish every write at once (no coalescing while a confirm is due).
    nodelay: AtomicBool,
    /// The peer's receive window, as far as writes have used it.
    send_window: Mutex<SendWindow>,
    /// Signalled when credit comes back or the stream fails.
    credit_wake: (Sender<()>, Receiver<()>),
    /// What `write` hands to the worker.
    pub(crate) written: WriteBuffer,
    /// What runs the stream's worker for its handles (version 3's
    /// engine); a stream with a thread of its own has none.
    carrier: Arc<OnceLock<Box<dyn Carrier>>>,
}

impl Shared {
    /// The state of a new stream whose writes may buffer `write_limit`
    /// bytes ahead of its worker.
    pub(crate) fn new(write_limit: usize) -> Shared {
        let carrier = Arc::new(OnceLock::new());
        Shared {
            failure: Mutex::new(None),
            ending: Mutex::new(None),
            closed_cleanly: AtomicBool::new(false),
            nodelay: AtomicBool::new(false),
            send_window: Mutex::new(SendWindow::unlimited()),
            credit_wake: bounded(1),
            written: WriteBuffer::new(write_limit, Arc::clone(&carrier)),
            carrier,
        }
    }

    /// From now on the stream is run by `carrier`.
    pub(crate) fn set_carrier(&self, carrier: Box<dyn Carrier>) {
        let _ = self.carrier.set(carrier);
    }

    /// After a handle's message to the worker: a stream an engine runs
    /// (version 3) has its worker run in this thread, or by whoever holds
    /// it; a worker with a thread of its own needs nothing.
    pub(crate) fn ring(&self) {
        if let Some(carrier) = self.carrier.get() {
            carrier.run_here();
        }
    }

    /// After a message to the worker from a thread that must not run it
    /// (the demultiplexer's): wakes the stream's engine, if it has one.
    pub(crate) fn wake_engine(&self) {
        if let Some(carrier) = self.carrier.get() {
            carrier.ring();
        }
    }

    /// Whether writes are published at once.
    pub(crate) fn nodelay(&self) -> bool {
        self.nodelay.load(Ordering::SeqCst)
    }

    /// Switches coalescing of small writes off (`true`) or on.
    pub(crate) fn set_nodelay(&self, nodelay: bool) {
        self.nodelay.store(nodelay, Ordering::SeqCst);
    }

    /// The error a write gets once the stream can no longer send: its
    /// failure's, or `BrokenPipe` after a clean close.
    pub(crate) fn write_error(&self) -> io::Error {
        match self.failure() {
            Some(failure) => failure.write_error(),
            None => io::Error::new(io::ErrorKind::BrokenPipe, "the stream is closed"),
        }
    }

    /// Records how the last handle ends the stream.
    pub(crate) fn set_ending(&self, ending: Ending) {
        *lock(&self.ending) = Some(ending);
    }

    /// How the last handle ended the stream, if it has.
    pub(crate) fn ending(&self) -> Option<Ending> {
        lock(&self.ending).clone()
    }

    /// The worker ended with everything confirmed and no failure.
    pub(crate) fn set_closed_cleanly(&self) {
        self.closed_cleanly.store(true, Ordering::SeqCst);
    }

    /// Whether the worker ended with everything confirmed and no failure.
    pub(crate) fn closed_cleanly(&self) -> bool {
        self.closed_cleanly.load(Ordering::SeqCst) && self.failure().is_none()
    }

    /// The failure, if the stream has one.
    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    /// Records the first failure (later ones are ignored) and wakes a
    /// writer waiting for credit.
    pub(crate) fn fail(&self, failure: Failure) {
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            debug!("stream failed: {failure:?}");
            *slot = Some(failure);
        }
        drop(slot);
        self.wake_writer();
    }

    /// The send window, locked.
    pub(crate) fn send_window(&self) -> MutexGuard<'_, SendWindow> {
        lock(&self.send_window)
    }

    /// Takes the peer's report of what it consumed; a report that cannot
    /// be true fails the stream.
    pub(crate) fn grant(&self, consumed: u64) -> Result<(), String> {
        let granted = self.send_window().grant(consumed);
        self.wake_writer();
        granted
    }

    /// Wakes a writer waiting for credit.
    pub(crate) fn wake_writer(&self) {
        let _ = self.credit_wake.0.try_send(());
    }

    /// Signalled when a writer waiting for credit should look again.
    pub(crate) fn credit_wake(&self) -> &Receiver<()> {
        &self.credit_wake.1
    }
}
