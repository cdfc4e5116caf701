//! `amqp-bridge run --config FILE`: the tunnels a config file lists, in
//! one process. SIGHUP reads the file again: tunnels added start, those
//! removed or changed stop accepting (their open connections go on to
//! their end), the others are left alone but read their key files again;
//! a file with an error changes nothing. SIGINT and SIGTERM stop
//! everything gracefully, SIGQUIT at once.
//!
//! A tunnel whose broker cannot be reached starts all the same and keeps
//! trying (unless `--fail-fast`), so one broker down takes no other
//! tunnel with it. A tunnel keeps its metrics (one series per kind and
//! name, counters that never go back) across the reloads that change it,
//! for as long as an instance of it runs or has connections open.

use crate::carry::address::BrokerAddress;
use crate::cli::RunArgs;
use crate::fatal::Fatal;
use crate::service::config::{self, Defaults, TunnelSpec};
use crate::service::signals::{self, Action};
use crate::service::single::log_reload;
use crate::service::{kinds, metrics_http, readiness, shutdown};
use crate::tunnel::Tunnel;
use crate::tunnel::metrics::TunnelMetrics;
use crossbeam_channel::{select, tick};
use log::{error, info};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often tunnels removed by a reload are checked for their last
/// connection to have closed (their broker connection then closes), and
/// the readiness status brought up to date.
const RETIRED_CHECK: Duration = Duration::from_secs(1);

/// A tunnel of the file, running.
struct Running {
    spec: TunnelSpec,
    tunnel: Tunnel,
}

/// The tunnels of the file and the metrics endpoint's view of them.
struct Tunnels {
    running: Vec<Running>,
    /// Removed or changed by a reload, with connections still open.
    retired: Vec<Tunnel>,
    /// What the metrics endpoint shows: one entry per kind and name.
    shown: Arc<Mutex<Vec<Arc<TunnelMetrics>>>>,
}

/// Runs the tunnels of `args.config` until a signal stops them.
pub fn run(broker: &BrokerAddress, args: &RunArgs) -> Result<(), Fatal> {
    let defaults = Defaults {
        url: broker.url().to_string(),
        password_file: broker.password_file().cloned(),
        grace: args.grace,
        fail_fast: args.fail_fast,
    };
    // First: from now on no signal kills the process.
    let signals =
        signals::take_over(signals::LONG_RUNNING).map_err(|e| Fatal::runtime(e.to_string()))?;
    let path = args.config.as_path();
    let specs = config::load(path, &defaults).map_err(Fatal::usage)?;
    let mut tunnels = Tunnels {
        running: Vec::new(),
        retired: Vec::new(),
        shown: Arc::default(),
    };
    if let Some(listen) = &args.metrics.metrics {
        let source = Arc::clone(&tunnels.shown);
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
    for spec in specs {
        match tunnels.start(&spec) {
            Ok(tunnel) => tunnels.running.push(Running { spec, tunnel }),
            Err(fatal) => {
                for started in tunnels.running {
                    started.tunnel.close();
                }
                return Err(fatal.context(&spec.label()));
            }
        }
    }
    info!(
        "running {} tunnel(s) from {}",
        tunnels.running.len(),
        path.display()
    );
    let mut status = tunnels.status();
    readiness::ready(&status);
    let checks = tick(RETIRED_CHECK);
    loop {
        tunnels.show();
        select! {
            recv(signals) -> signal => {
                let Ok(signal) = signal else { return Ok(()) };
                match signals::action(signal) {
                    Action::Reload => {
                        readiness::reloading();
                        tunnels.reload(path, &defaults);
                        status = tunnels.status();
                        readiness::ready(&status);
                    }
                    Action::Ignore => info!(
                        "{}: ignored (SIGHUP reloads, SIGINT/SIGTERM stop, SIGQUIT stops at once)",
                        signals::name(signal)
                    ),
                    Action::Stop | Action::StopNow => {
                        readiness::stopping();
                        let all = tunnels
                            .running
                            .into_iter()
                            .map(|r| r.tunnel)
                            .chain(tunnels.retired)
                            .collect();
                        shutdown::stop_all(all, signal, &signals::stop_signals(signals));
                        return Ok(());
                    }
                }
            },
            recv(checks) -> _ => {
                tunnels.close_finished();
                let now = tunnels.status();
                if now != status {
                    status = now;
                    readiness::ready(&status);
                }
            }
        }
    }
}

impl Tunnels {
    /// Starts the tunnel `spec` describes, with the metrics of an
    /// instance of the same kind and name that is still there (changed
    /// by a reload, its connections still open), else new ones.
    fn start(&self, spec: &TunnelSpec) -> Result<Tunnel, Fatal> {
        let metrics = self
            .instances()
            .map(Tunnel::metrics)
            .find(|m| m.kind() == spec.kind && m.name() == spec.name)
            .cloned()
            .unwrap_or_else(|| TunnelMetrics::new(&spec.kind, &spec.name));
        let started = kinds::start(&spec.broker, &spec.command, metrics)
            .unwrap_or_else(|| Err(Fatal::usage("not a tunnel kind")))?;
        if started.is_connected() {
            info!("tunnel {} started", spec.label());
        } else {
            info!(
                "tunnel {} started; it serves once its broker can be reached",
                spec.label()
            );
        }
        Ok(started)
    }

    /// Every instance: running, and retired with connections open.
    fn instances(&self) -> impl Iterator<Item = &Tunnel> {
        self.running.iter().map(|r| &r.tunnel).chain(&self.retired)
    }

    /// Reads the file again and brings the tunnels in line with it; a
    /// file with an error is logged and changes nothing. The tunnels left
    /// alone read their key files again.
    fn reload(&mut self, path: &Path, defaults: &Defaults) {
        let specs = match config::load(path, defaults) {
            Ok(specs) => specs,
            Err(err) => {
                error!("SIGHUP: not reloaded, the tunnels stay as they were: {err}");
                return;
            }
        };
        // What can be checked is, before anything changes.
        let added = specs
            .iter()
            .filter(|spec| !self.running.iter().any(|r| r.spec.same_as(spec)));
        for spec in added {
            if let Err(err) = kinds::check(&spec.command) {
                error!(
                    "SIGHUP: not reloaded, the tunnels stay as they were: {}: {err}",
                    spec.label()
                );
                return;
            }
        }
        let (kept, gone): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
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
            self.retired.push(tunnel);
        }
        let unchanged = kept.len();
        for running in &kept {
            log_reload("SIGHUP", &running.tunnel);
        }
        self.running = kept;
        let (mut started, mut failed) = (0, 0);
        for spec in specs {
            if self.running.iter().any(|r| r.spec.same_as(&spec)) {
                continue;
            }
            match self.start(&spec) {
                Ok(tunnel) => {
                    started += 1;
                    self.running.push(Running { spec, tunnel });
                }
                Err(err) => {
                    failed += 1;
                    error!(
                        "tunnel {} not started: {err} (the next SIGHUP tries again)",
                        spec.label()
                    );
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
    fn close_finished(&mut self) {
        let (done, open): (Vec<Tunnel>, Vec<Tunnel>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|t| t.connections().open() == 0);
        self.retired = open;
        for tunnel in done {
            let label = tunnel.label();
            tunnel.close();
            info!("tunnel {label} removed: its last connection has ended");
        }
    }

    /// Brings what the metrics endpoint shows up to date: each kind and
    /// name once (a changed tunnel's instances share their metrics).
    fn show(&self) {
        let mut all: Vec<Arc<TunnelMetrics>> = Vec::new();
        for metrics in self.instances().map(Tunnel::metrics) {
            if !all.iter().any(|m| Arc::ptr_eq(m, metrics)) {
                all.push(Arc::clone(metrics));
            }
        }
        *self.shown.lock().unwrap_or_else(PoisonError::into_inner) = all;
    }

    /// How the tunnels stand, for `systemctl status`.
    fn status(&self) -> String {
        let total = self.running.len();
        let waiting: Vec<String> = self
            .running
            .iter()
            .filter(|r| !r.tunnel.is_connected())
            .map(|r| r.spec.label())
            .collect();
        match waiting.len() {
            0 => format!("{total} tunnel(s) up"),
            n => format!(
                "{} of {total} tunnel(s) up; waiting for the broker: {}",
                total - n,
                waiting.join(", ")
            ),
        }
    }
}
