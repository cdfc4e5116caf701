//! Streams prepared ahead of need: worker threads that have opened their
//! channel, declared their queue and started consuming before anyone asks
//! for a stream, so that a new stream's setup is only its handshake.

use super::{Assignment, Spare, Spares};
use crate::options::StreamOptions;
use crate::transport::connection::BrokerConnection;
use crate::version::ProtocolVersion;
use crossbeam_channel::{Receiver, Sender, after, bounded, select, unbounded};
use log::debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The prepared workers of one `Connector` or `Listener`, kept at
/// [`StreamOptions::prepared_streams`].
///
/// Dropping the pool lets every waiting worker go: each closes its
/// channel (its queue goes with it) and ends its thread.
pub(crate) struct SparePool {
    connection: Arc<BrokerConnection>,
    options: StreamOptions,
    /// Prepared workers offer themselves here.
    ready: Receiver<Spare>,
    offer: Sender<Spare>,
    /// Workers preparing or waiting, counted by their slots.
    kept: Arc<AtomicUsize>,
    /// Cloned into each worker's [`SpareLife`]; taken when dropping.
    life: Option<Sender<()>>,
    /// Disconnects once no unassigned worker is left.
    all_gone: Receiver<()>,
}

impl SparePool {
    /// A pool that prepares nothing until [`refill`](Self::refill) or
    /// [`hand_over`](Self::hand_over) is first called.
    pub(crate) fn new(connection: Arc<BrokerConnection>, options: StreamOptions) -> SparePool {
        let (offer, ready) = unbounded();
        let (life, all_gone) = bounded(0);
        SparePool {
            connection,
            options,
            ready,
            offer,
            kept: Arc::new(AtomicUsize::new(0)),
            life: Some(life),
            all_gone,
        }
    }

    /// Gives `assignment` to a prepared worker, or hands it back when none
    /// is ready; either way starts preparing replacements.
    pub(crate) fn hand_over(&self, mut assignment: Box<Assignment>) -> Result<(), Box<Assignment>> {
        let taken = loop {
            match self.ready.try_recv() {
                // Its slot goes with it, so the refill below replaces it.
                Ok(spare) => match spare.assign(assignment) {
                    Ok(()) => break Ok(()),
                    // That worker gave up (its connection is gone, say).
                    Err(back) => assignment = back,
                },
                Err(_) => break Err(assignment),
            }
        };
        self.refill();
        taken
    }

    /// Starts preparing workers until the pool holds as many as it should.
    pub(crate) fn refill(&self) {
        // Version-3 streams need nothing prepared: no queue, no channel.
        let wanted = match self.options.get_protocol_version() {
            Some(ProtocolVersion::V3) => 0,
            _ => self.options.get_prepared_streams(),
        };
        let Some(life) = &self.life else { return };
        while self.kept.load(Ordering::Acquire) < wanted {
            let slot = SpareSlot::take(&self.kept);
            let life = SpareLife {
                _alive: life.clone(),
            };
            let started = super::spawn_spare(
                Arc::clone(&self.connection),
                self.options.clone(),
                self.offer.clone(),
                Box::new(slot),
                Box::new(life),
            );
            if let Err(err) = started {
                debug!("not preparing streams: {err}");
                return;
            }
        }
    }
}

impl Spares for SparePool {
    fn hand_over(&self, assignment: Box<Assignment>) -> Result<(), Box<Assignment>> {
        SparePool::hand_over(self, assignment)
    }
}

impl Drop for SparePool {
    /// Lets every unassigned worker go and waits (at most
    /// [`CLOSE_WAIT`]) until each has closed its channel, so that dropping
    /// a `Connector` or `Listener` leaves no channel behind.
    fn drop(&mut self) {
        self.life = None;
        let deadline = after(CLOSE_WAIT);
        loop {
            select! {
                // A waiting worker sees its assignment channel close.
                recv(self.ready) -> spare => drop(spare),
                recv(self.all_gone) -> _ => return,
                recv(deadline) -> _ => {
                    debug!("prepared streams still closing after {CLOSE_WAIT:?}");
                    return;
                }
            }
        }
    }
}

/// How long dropping a pool waits for its workers to close their channels.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Held by a worker while it is unassigned; the pool's drop waits until
/// every one is gone.
pub(crate) struct SpareLife {
    _alive: Sender<()>,
}

/// One worker's place in its pool's count, given back when dropped.
pub(crate) struct SpareSlot {
    kept: Arc<AtomicUsize>,
}

impl SpareSlot {
    fn take(kept: &Arc<AtomicUsize>) -> SpareSlot {
        kept.fetch_add(1, Ordering::AcqRel);
        SpareSlot {
            kept: Arc::clone(kept),
        }
    }
}

impl Drop for SpareSlot {
    fn drop(&mut self) {
        self.kept.fetch_sub(1, Ordering::AcqRel);
    }
}
