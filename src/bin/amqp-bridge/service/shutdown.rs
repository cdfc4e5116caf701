//! Stopping tunnels gracefully: they stop accepting, their open
//! connections get a grace period, and those still open then are reset.

use crate::service::signals::{self, Action};
use crate::tunnel::Tunnel;
use crate::tunnel::connections::Waited;
use crossbeam_channel::Receiver;
use log::{info, warn};
use std::time::{Duration, Instant};

/// How long the connections reset when the grace period runs out have to
/// end before the process exits.
const RESET_WAIT: Duration = Duration::from_secs(2);

/// Stops `tunnels` after `signal`: none accepts any more, each one's open
/// connections have its grace period to finish (a further signal on
/// `signals` cuts every grace short), those still open then are reset,
/// and the broker connections close properly. Returns for the process
/// to exit 0.
pub fn stop_all(mut tunnels: Vec<Tunnel>, signal: i32, signals: &Receiver<i32>) {
    for tunnel in &mut tunnels {
        tunnel.stop_accepting();
    }
    let open: usize = tunnels.iter().map(|t| t.connections().open()).sum();
    let now = signals::action(signal) == Action::StopNow;
    let grace = |tunnel: &Tunnel| if now { Duration::ZERO } else { tunnel.grace() };
    let longest = tunnels.iter().map(grace).max().unwrap_or_default();
    let name = signals::name(signal);
    match open {
        0 => info!("{name}: no longer accepting; no connection open"),
        _ if now => info!("{name}: no longer accepting; resetting {open} open connection(s) now"),
        _ => info!(
            "{name}: no longer accepting; waiting up to {:.1} s for {open} open connection(s)",
            longest.as_secs_f64()
        ),
    }
    // Shortest grace first: each tunnel's connections still open when
    // its own grace runs out are reset then.
    tunnels.sort_by_key(|tunnel| grace(tunnel));
    let started = Instant::now();
    let mut interrupted = false;
    for tunnel in &tunnels {
        let connections = tunnel.connections();
        if !interrupted {
            let deadline = started + grace(tunnel);
            interrupted = connections.wait_closed(deadline, signals) == Waited::Interrupted;
        }
        let open = connections.open();
        if open > 0 {
            // Ended by us: each side sees a reset, never a clean end of data.
            warn!("resetting {open} connection(s) still open");
            connections.abort_all();
        }
    }
    let deadline = Instant::now() + RESET_WAIT;
    let never = crossbeam_channel::never::<()>();
    for tunnel in &tunnels {
        tunnel.connections().wait_closed(deadline, &never);
    }
    match tunnels
        .iter()
        .map(|t| t.connections().open())
        .sum::<usize>()
    {
        0 => info!("all connections closed; exiting"),
        open => warn!("exiting with {open} connection(s) still open"),
    }
    for tunnel in tunnels {
        tunnel.close();
    }
}
