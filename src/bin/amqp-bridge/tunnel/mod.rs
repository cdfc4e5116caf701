//! A running tunnel as a value: it accepts connections (TCP clients or
//! streams on a queue) and carries each through the broker until it is
//! told to stop accepting. `serve`, `forward` and `http` run one; `run`
//! runs many and starts and stops them as its file changes.

pub mod conn_log;
pub mod connections;
pub mod metrics;

use crate::carry::link::BrokerLink;
use crate::tunnel::connections::Connections;
use crate::tunnel::metrics::TunnelMetrics;
use std::sync::Arc;
use std::time::Duration;

/// Stops a tunnel's accepting: returns once no new connection can come
/// (its port closed, its queue deleted).
pub type Stopper = Box<dyn FnOnce() + Send>;

/// Reads again what a tunnel was started with that can change (its key
/// files) and says what changed.
pub type Reloader = Box<dyn Fn() -> Reloaded + Send + Sync>;

/// What a reload found.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// What changed and was taken, one phrase each ("authorized keys: 2
    /// keys", ...).
    pub changes: Vec<String>,
    /// What changed but could not be taken, one line each.
    pub errors: Vec<String>,
}

/// One tunnel, accepting until [`stop_accepting`](Tunnel::stop_accepting).
pub struct Tunnel {
    metrics: Arc<TunnelMetrics>,
    connections: Arc<Connections>,
    link: Arc<BrokerLink>,
    grace: Duration,
    stopper: Option<Stopper>,
    reloader: Option<Reloader>,
}

impl Tunnel {
    /// A tunnel that accepts into `connections` over `link` until
    /// `stopper` runs; `grace` is how long its open connections may go on
    /// once the process is stopping.
    pub fn new(
        metrics: Arc<TunnelMetrics>,
        connections: Arc<Connections>,
        link: Arc<BrokerLink>,
        grace: Duration,
        stopper: Stopper,
    ) -> Tunnel {
        Tunnel {
            metrics,
            connections,
            link,
            grace,
            stopper: Some(stopper),
            reloader: None,
        }
    }

    /// The same tunnel, with `reloader` run by [`reload`](Tunnel::reload).
    pub fn with_reloader(mut self, reloader: Reloader) -> Tunnel {
        self.reloader = Some(reloader);
        self
    }

    /// Reads again what the tunnel was started with that can change
    /// (SIGHUP): nothing for a tunnel without key files.
    pub fn reload(&self) -> Reloaded {
        self.reloader
            .as_ref()
            .map(|reload| reload())
            .unwrap_or_default()
    }

    /// Whether its broker connection is up now.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Accepts nothing more; the connections open go on. Done once.
    pub fn stop_accepting(&mut self) {
        if let Some(stop) = self.stopper.take() {
            stop();
        }
    }

    /// Its open connections.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Its counters.
    pub fn metrics(&self) -> &Arc<TunnelMetrics> {
        &self.metrics
    }

    /// `kind "name"`, for the logs.
    pub fn label(&self) -> String {
        self.metrics.label()
    }

    /// How long its open connections may go on once the process stops.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Stops accepting and closes the broker connection properly:
    /// connections still open fail.
    pub fn close(mut self) {
        self.stop_accepting();
        self.link.close();
    }
}
