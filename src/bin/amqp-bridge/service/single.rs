//! `serve`, `forward` and `http` as commands: one tunnel, run until
//! SIGINT or SIGTERM, then stopped gracefully.

use crate::cli::Command;
use crate::fatal::Fatal;
use crate::service::kinds;
use crate::service::metrics_http;
use crate::service::shutdown;
use crate::service::signals;
use crate::tunnel::metrics::TunnelMetrics;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::Arc;

/// Runs the tunnel `command` describes (counted under its kind and
/// queue, and shown on the metrics endpoint if it asks for one) until
/// SIGINT or SIGTERM, then stops it gracefully.
pub fn run(url: &str, command: &Command) -> Result<(), Fatal> {
    let Some((kind, name, metrics)) = kinds::on_its_own(command) else {
        return Err(Fatal::usage("not a tunnel"));
    };
    let signals =
        signals::take_over(&[SIGINT, SIGTERM]).map_err(|e| Fatal::runtime(e.to_string()))?;
    let counters = TunnelMetrics::new(kind, name);
    if let Some(listen) = &metrics.metrics {
        let shown = Arc::clone(&counters);
        metrics_http::serve(&listen.0, Arc::new(move || vec![Arc::clone(&shown)]))?;
    }
    let tunnel = kinds::start(url, command, counters)
        .unwrap_or_else(|| Err(Fatal::usage("not a tunnel")))?;
    let Ok(signal) = signals.recv() else {
        return Ok(());
    };
    shutdown::stop_all(vec![tunnel], signal, &signals);
    Ok(())
}
