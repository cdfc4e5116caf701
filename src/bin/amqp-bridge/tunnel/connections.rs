//! The open connections of one tunnel: counted, numbered for the logs,
//! and resettable from outside when a stop's grace period runs out.

pub use crate::carry::splice::Aborter;
use crate::tunnel::metrics::TunnelMetrics;
use crossbeam_channel::{Receiver, Sender, select, unbounded};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Connection numbers are unique in the process, whatever the tunnel.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The open connections of one tunnel, shared by its accepting thread,
/// every connection and whoever stops it.
pub struct Connections {
    open: AtomicUsize,
    closed_tx: Sender<()>,
    closed_rx: Receiver<()>,
    /// How to reset each open connection, by its number.
    aborters: Mutex<HashMap<u64, Reset>>,
    metrics: Arc<TunnelMetrics>,
}

/// How one open connection is reset.
enum Reset {
    /// Not said yet.
    Pending,
    /// With this.
    By(Aborter),
    /// As soon as it says how, for this reason (it was reset before).
    Due(io::ErrorKind, String),
}

/// Held by a connection while it is open; dropping it counts it closed.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    id: u64,
}

/// How a wait for the connections to close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// None is open any more.
    AllClosed,
    /// The deadline came first.
    Deadline,
    /// Something on the interrupting channel came first (a second
    /// signal), or it disconnected.
    Interrupted,
}

impl Connections {
    /// No connection open yet; each one that opens is counted in
    /// `metrics` too.
    pub fn new(metrics: Arc<TunnelMetrics>) -> Arc<Connections> {
        let (closed_tx, closed_rx) = unbounded();
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            closed_tx,
            closed_rx,
            aborters: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Counts a new connection open and gives it a number for the logs.
    pub fn enter(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.metrics.opened();
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        self.aborters().insert(id, Reset::Pending);
        ConnectionGuard {
            connections: Arc::clone(self),
            id,
        }
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open, `deadline` passes or
    /// `interrupt` delivers something.
    pub fn wait_closed<T>(&self, deadline: Instant, interrupt: &Receiver<T>) -> Waited {
        let timeout = crossbeam_channel::at(deadline);
        while self.open() > 0 {
            select! {
                recv(self.closed_rx) -> _ => {}
                recv(interrupt) -> _ => return Waited::Interrupted,
                recv(timeout) -> _ => return Waited::Deadline,
            }
        }
        Waited::AllClosed
    }

    /// Resets every connection still open (each side sees a reset, never
    /// a clean end of data); they close as their threads notice.
    pub fn abort_all(&self) {
        let aborters: Vec<Aborter> = self
            .aborters()
            .values()
            .filter_map(|reset| match reset {
                Reset::By(abort) => Some(Arc::clone(abort)),
                Reset::Pending | Reset::Due(..) => None,
            })
            .collect();
        for abort in aborters {
            abort(io::Error::new(
                io::ErrorKind::Interrupted,
                "the bridge stopped with it open",
            ));
        }
    }

    /// Resets connection `id` for the reason `why`; one that has not
    /// started carrying bytes yet is reset as soon as it does.
    pub fn abort(&self, id: u64, why: io::Error) {
        let mut aborters = self.aborters();
        match aborters.get(&id) {
            Some(Reset::By(abort)) => {
                let abort = Arc::clone(abort);
                drop(aborters);
                abort(why);
            }
            Some(Reset::Pending) => {
                aborters.insert(id, Reset::Due(why.kind(), why.to_string()));
            }
            // Reset already, or closed.
            Some(Reset::Due(..)) | None => {}
        }
    }

    fn aborters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reset>> {
        self.aborters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ConnectionGuard {
    /// The connection's number, for the logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The counters of the tunnel this connection belongs to.
    pub fn metrics(&self) -> &Arc<TunnelMetrics> {
        &self.connections.metrics
    }

    /// How to reset this connection should the grace period run out (or
    /// its key be revoked); at once if it was reset already.
    pub fn on_abort(&self, abort: Aborter) {
        let earlier = self
            .connections
            .aborters()
            .insert(self.id, Reset::By(Arc::clone(&abort)));
        if let Some(Reset::Due(kind, why)) = earlier {
            abort(io::Error::new(kind, why));
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let abort = self.connections.aborters().remove(&self.id);
        // Its handles close here: after a reset, the last one sends it.
        drop(abort);
        self.connections.metrics.closed();
        self.connections.open.fetch_sub(1, Ordering::SeqCst);
        let _ = self.connections.closed_tx.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_connections_until_their_guards_drop() {
        let metrics = TunnelMetrics::new("forward", "t");
        let connections = Connections::new(Arc::clone(&metrics));
        let (first, second) = (connections.enter(), connections.enter());
        assert_ne!(first.id(), second.id());
        assert_eq!(connections.open(), 2);
        let never = crossbeam_channel::never::<()>();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(connections.wait_closed(soon, &never), Waited::Deadline);
        let aborted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&aborted);
        first.on_abort(Arc::new(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        connections.abort_all();
        assert_eq!(aborted.load(Ordering::SeqCst), 1);
        drop((first, second));
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(connections.wait_closed(later, &never), Waited::AllClosed);
        assert_eq!(metrics.open(), 0);
    }
}
