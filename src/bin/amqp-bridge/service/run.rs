//! `amqp-bridge run --config FILE`: the tunnels a config file lists, in
//! one process. SIGHUP reads the file again: tunnels added start, those
//! removed or changed stop accepting (their open connections go on to
//! their end), the others are left alone; a file with an error changes
//! nothing. SIGINT and SIGTERM stop everything gracefully.

use crate::cli::RunArgs;
use crate::fatal::Fatal;
use crate::service::config::{self, Defaults, TunnelSpec};
use crate::service::kinds;
use crate::service::metrics_http;
use crate::service::shutdown;
use crate::service::signals;
use crate::tunnel::Tunnel;
use crate::tunnel::metrics::TunnelMetrics;
use crossbeam_channel::{Receiver, select, tick, unbounded};
use log::{error, info};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often tunnels removed by a reload are checked for their last
/// connection to have closed (their broker connection then closes).
const RETIRED_CHECK: Duration = Duration::from_secs(1);

/// A tunnel of the file, running.
struct Running {
    spec: TunnelSpec,
    tunnel: Tunnel,
}

/// Runs the tunnels of `args.config` until SIGINT/SIGTERM.
pub fn run(url: &str, args: &RunArgs) -> Result<(), Fatal> {
    let defaults = Defaults {
        url: url.to_string(),
        grace: args.grace,
    };
    let path = args.config.as_path();
    let specs = config::load(path, &defaults).map_err(Fatal::usage)?;
    let signals = signals::take_over(&[SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Fatal::runtime(e.to_string()))?;
    let shown: Arc<Mutex<Vec<Arc<TunnelMetrics>>>> = Arc::default();
    if let Some(listen) = &args.metrics.metrics {
        let source = Arc::clone(&shown);
        metrics_http::serve(
            &listen.0,
            Arc::new(move || {
                source
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            }),
        )?;
    }

    let mut running = Vec::new();
    for spec in specs {
        match start(&spec) {
            Ok(tunnel) => running.push(Running { spec, tunnel }),
            Err(fatal) => {
                for started in running {
                    started.tunnel.close();
                }
                return Err(fatal.context(&spec.label()));
            }
        }
    }
    info!(
        "running {} tunnel(s) from {}",
        running.len(),
        path.display()
    );
    let mut retired: Vec<Tunnel> = Vec::new();
    let checks = tick(RETIRED_CHECK);
    loop {
        show(&shown, &running, &retired);
        select! {
            recv(signals) -> signal => match signal {
                Ok(SIGHUP) => reload(path, &defaults, &mut running, &mut retired),
                Ok(signal) => {
                    let all = running.into_iter().map(|r| r.tunnel).chain(retired).collect();
                    shutdown::stop_all(all, signal, &stop_signals(signals));
                    return Ok(());
                }
                Err(_) => return Ok(()),
            },
            recv(checks) -> _ => close_finished(&mut retired),
        }
    }
}

/// The signals that cut a stop's grace short: SIGINT and SIGTERM (a
/// SIGHUP then is ignored).
fn stop_signals(signals: Receiver<i32>) -> Receiver<i32> {
    let (stop_tx, stop) = unbounded();
    let _ = std::thread::Builder::new()
        .name("stop-signals".to_string())
        .spawn(move || {
            for signal in signals.iter().filter(|&s| s != SIGHUP) {
                if stop_tx.send(signal).is_err() {
                    break;
                }
            }
        });
    stop
}

fn start(spec: &TunnelSpec) -> Result<Tunnel, Fatal> {
    let metrics = TunnelMetrics::new(&spec.kind, &spec.name);
    let started = kinds::start(&spec.url, &spec.command, metrics)
        .unwrap_or_else(|| Err(Fatal::usage("not a tunnel kind")))?;
    info!("tunnel {} started", spec.label());
    Ok(started)
}

/// Reads the file again and brings the tunnels in line with it; a file
/// with an error is logged and changes nothing.
fn reload(path: &Path, defaults: &Defaults, running: &mut Vec<Running>, retired: &mut Vec<Tunnel>) {
    let specs = match config::load(path, defaults) {
        Ok(specs) => specs,
        Err(err) => {
            error!("SIGHUP: not reloaded, the tunnels stay as they were: {err}");
            return;
        }
    };
    let (kept, gone): (Vec<Running>, Vec<Running>) = std::mem::take(running)
        .into_iter()
        .partition(|r| specs.iter().any(|spec| spec.same_as(&r.spec)));
    let stopped = gone.len();
    // Stopped first: a changed tunnel may take the same port or queue.
    for Running { spec, mut tunnel } in gone {
        tunnel.stop_accepting();
        info!(
            "tunnel {} stopped accepting; {} open connection(s) go on to their end",
            spec.label(),
            tunnel.connections().open()
        );
        retired.push(tunnel);
    }
    let unchanged = kept.len();
    *running = kept;
    let (mut started, mut failed) = (0, 0);
    for spec in specs {
        if running.iter().any(|r| r.spec.same_as(&spec)) {
            continue;
        }
        match start(&spec) {
            Ok(tunnel) => {
                started += 1;
                running.push(Running { spec, tunnel });
            }
            Err(err) => {
                failed += 1;
                error!("tunnel {} not started: {err}", spec.label());
            }
        }
    }
    info!(
        "reloaded {}: {started} started, {stopped} stopped, {unchanged} unchanged, {failed} failed",
        path.display()
    );
}

/// Closes the broker connections of removed tunnels whose last
/// connection has ended.
fn close_finished(retired: &mut Vec<Tunnel>) {
    let (done, open): (Vec<Tunnel>, Vec<Tunnel>) = std::mem::take(retired)
        .into_iter()
        .partition(|t| t.connections().open() == 0);
    *retired = open;
    for tunnel in done {
        let label = tunnel.label();
        tunnel.close();
        info!("tunnel {label} removed: its last connection has ended");
    }
}

/// What the metrics endpoint shows: the running tunnels and the removed
/// ones whose connections are still open.
fn show(shown: &Mutex<Vec<Arc<TunnelMetrics>>>, running: &[Running], retired: &[Tunnel]) {
    let all = running
        .iter()
        .map(|r| &r.tunnel)
        .chain(retired)
        .map(|t| Arc::clone(t.metrics()))
        .collect();
    *shown.lock().unwrap_or_else(PoisonError::into_inner) = all;
}
