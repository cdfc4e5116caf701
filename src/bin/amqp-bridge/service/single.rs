//! `serve`, `forward`, `http` and `socks` as commands: one tunnel, run as
//! a service: SIGHUP reads its key files again, SIGINT or SIGTERM stop it
//! gracefully, SIGQUIT at once (see [`signals`]).

use crate::carry::address::BrokerAddress;
use crate::cli::Command;
use crate::fatal::Fatal;
use crate::service::signals::{self, Action};
use crate::service::{kinds, metrics_http, readiness, shutdown};
use crate::tunnel::Tunnel;
use crate::tunnel::metrics::TunnelMetrics;
use log::{error, info};
use std::sync::Arc;

/// Runs the tunnel `command` describes (counted under its kind and
/// queue, and shown on the metrics endpoint if it asks for one) until a
/// signal stops it.
pub fn run(broker: &BrokerAddress, command: &Command) -> Result<(), Fatal> {
    let Some((kind, name, metrics)) = kinds::on_its_own(command) else {
        return Err(Fatal::usage("not a tunnel"));
    };
    let signals =
        signals::take_over(signals::LONG_RUNNING).map_err(|e| Fatal::runtime(e.to_string()))?;
    let counters = TunnelMetrics::new(kind, name);
    if let Some(listen) = &metrics.metrics {
        let shown = Arc::clone(&counters);
        metrics_http::serve(&listen.0, Arc::new(move || vec![Arc::clone(&shown)]))?;
    }
    let tunnel = kinds::start(broker, command, counters)
        .unwrap_or_else(|| Err(Fatal::usage("not a tunnel")))?;
    readiness::ready(&status(&tunnel));
    while let Ok(signal) = signals.recv() {
        match signals::action(signal) {
            Action::Reload => {
                readiness::reloading();
                log_reload(signals::name(signal), &tunnel);
                readiness::ready(&status(&tunnel));
            }
            Action::Ignore => info!(
                "{}: ignored (SIGHUP reloads, SIGINT/SIGTERM stop, SIGQUIT stops at once)",
                signals::name(signal)
            ),
            Action::Stop | Action::StopNow => {
                readiness::stopping();
                shutdown::stop_all(vec![tunnel], signal, &signals::stop_signals(signals));
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Reads the tunnel's key files again and logs what changed.
pub fn log_reload(signal: &str, tunnel: &Tunnel) {
    let reloaded = tunnel.reload();
    let label = tunnel.label();
    for problem in &reloaded.errors {
        error!("{signal}: tunnel {label}: {problem}");
    }
    if reloaded.changes.is_empty() && reloaded.errors.is_empty() {
        info!("{signal}: tunnel {label}: nothing to read again (no key files)");
    } else if !reloaded.changes.is_empty() {
        info!(
            "{signal}: tunnel {label} reloaded: {}",
            reloaded.changes.join("; ")
        );
    }
}

/// How the tunnel stands, for `systemctl status`.
fn status(tunnel: &Tunnel) -> String {
    if tunnel.is_connected() {
        format!("tunnel {} up", tunnel.label())
    } else {
        format!("tunnel {} waiting for its broker", tunnel.label())
    }
}
