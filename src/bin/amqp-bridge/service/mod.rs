//! Running as a service: one tunnel or the tunnels of a config file,
//! reloaded on SIGHUP and stopped gracefully on SIGINT/SIGTERM, with
//! their metrics served over HTTP.

pub mod config;
pub mod kinds;
pub mod metrics_http;
pub mod readiness;
pub mod run;
pub mod shutdown;
pub mod signals;
pub mod single;
