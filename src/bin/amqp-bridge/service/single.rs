//! `serve`, `forward` and `http` as commands: one tunnel, run until
//! SIGINT or SIGTERM, then stopped gracefully.

use crate::cli::MetricsArgs;
use crate::fatal::Fatal;
use crate::service::metrics_http;
use crate::service::shutdown;
use crate::service::signals;
use crate::tunnel::Tunnel;
use crate::tunnel::metrics::TunnelMetrics;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::Arc;

/// Runs the tunnel `start` starts (counted as tunnel `name` of `kind`,
/// and shown on the metrics endpoint if `metrics` asks for one) until
/// SIGINT or SIGTERM, then stops it gracefully.
pub fn run(
    kind: &str,
    name: &str,
    metrics: &MetricsArgs,
    start: impl FnOnce(Arc<TunnelMetrics>) -> Result<Tunnel, Fatal>,
) -> Result<(), Fatal> {
    let signals =
        signals::take_over(&[SIGINT, SIGTERM]).map_err(|e| Fatal::runtime(e.to_string()))?;
    let counters = TunnelMetrics::new(kind, name);
    if let Some(listen) = &metrics.metrics {
        let shown = Arc::clone(&counters);
        metrics_http::serve(&listen.0, Arc::new(move || vec![Arc::clone(&shown)]))?;
    }
    let tunnel = start(counters)?;
    let Ok(signal) = signals.recv() else {
        return Ok(());
    };
    shutdown::stop_all(vec![tunnel], signal, &signals);
    Ok(())
}
