//! Stopping gracefully: counts open connections and, on SIGINT or
//! SIGTERM, stops accepting and gives them a grace period.

use crossbeam_channel::{Receiver, Sender, after, select, unbounded};
use log::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Shared by the accepting thread, every connection and `main`.
pub struct Lifecycle {
    stopping: AtomicBool,
    open: AtomicUsize,
    next_id: AtomicU64,
    closed_tx: Sender<()>,
    closed_rx: Receiver<()>,
    signals: Receiver<i32>,
    /// How to reset each open connection, by its number.
    aborters: Mutex<HashMap<u64, Aborter>>,
}

/// Resets one open connection (both of its sides).
pub type Aborter = Arc<dyn Fn() + Send + Sync>;

/// How long the connections reset when the grace period runs out have to
/// end before the process exits.
const RESET_WAIT: Duration = Duration::from_secs(2);

/// Held by a connection while it is open; dropping it counts it closed.
pub struct ConnectionGuard {
    lifecycle: Arc<Lifecycle>,
    id: u64,
}

impl Lifecycle {
    /// Takes over SIGINT and SIGTERM (from now on they no longer kill the
    /// process) and starts counting connections.
    pub fn install() -> io::Result<Arc<Lifecycle>> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let (signal_tx, signal_rx) = unbounded();
        std::thread::Builder::new()
            .name("signals".to_string())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal_tx.send(signal).is_err() {
                        break;
                    }
                }
            })?;
        let (closed_tx, closed_rx) = unbounded();
        Ok(Arc::new(Lifecycle {
            stopping: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            closed_tx,
            closed_rx,
            signals: signal_rx,
            aborters: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether a stop was asked for: accept nothing more.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Counts a new connection open and gives it a number for the logs.
    pub fn enter(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard {
            lifecycle: Arc::clone(self),
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
        }
    }

    /// Blocks until SIGINT or SIGTERM; then stops accepting (`wake` must
    /// make the accepting thread look at [`stopping`](Self::stopping)),
    /// waits up to `grace` for open connections to finish (a second signal
    /// cuts it short) and returns, for the process to exit 0.
    pub fn run_until_signalled(&self, grace: Duration, wake: impl FnOnce()) {
        let Ok(signal) = self.signals.recv() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        wake();
        let open = self.open.load(Ordering::SeqCst);
        info!(
            "{}: no longer accepting; waiting up to {grace:?} for {open} open connection(s)",
            signal_name(signal)
        );
        let deadline = after(grace);
        while self.open.load(Ordering::SeqCst) > 0 {
            select! {
                recv(self.closed_rx) -> _ => {}
                recv(self.signals) -> _ => break,
                recv(deadline) -> _ => break,
            }
        }
        let open = self.open.load(Ordering::SeqCst);
        if open == 0 {
            info!("all connections closed; exiting");
            return;
        }
        // Ended by us: each side sees a reset, never a clean end of data.
        warn!("resetting {open} connection(s) still open");
        let aborters: Vec<Aborter> = self.aborters().values().cloned().collect();
        for abort in aborters {
            abort();
        }
        let deadline = after(RESET_WAIT);
        while self.open.load(Ordering::SeqCst) > 0 {
            select! {
                recv(self.closed_rx) -> _ => {}
                recv(deadline) -> _ => break,
            }
        }
        match self.open.load(Ordering::SeqCst) {
            0 => info!("all connections closed; exiting"),
            open => warn!("exiting with {open} connection(s) still open"),
        }
    }

    fn aborters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Aborter>> {
        self.aborters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ConnectionGuard {
    /// The connection's number, for the logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How to reset this connection should the grace period run out.
    pub fn on_abort(&self, abort: Aborter) {
        self.lifecycle.aborters().insert(self.id, abort);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let abort = self.lifecycle.aborters().remove(&self.id);
        // Its handles close here: after a reset, the last one sends it.
        drop(abort);
        self.lifecycle.open.fetch_sub(1, Ordering::SeqCst);
        let _ = self.lifecycle.closed_tx.send(());
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
