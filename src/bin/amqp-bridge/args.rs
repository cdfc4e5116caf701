//! Option values shared by several subcommands: numbers of seconds,
//! queue names, listen addresses, `--grace`, `--fail-fast` and
//! `--metrics`.

use clap::Args;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Where the metrics are served.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (open and total
    /// connections, bytes each way, refusals and failures by reason,
    /// broker reconnects, handshake latency)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub metrics: Option<ListenAddress>,
}

/// How a long-running subcommand starts and stops.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// After SIGINT or SIGTERM, how long open connections may go on
    #[arg(long, value_name = "SECONDS", default_value = "10",
          value_parser = seconds, allow_negative_numbers = true)]
    pub grace: Duration,
    /// Exit (code 3 or 4) when the broker cannot be reached at start,
    /// instead of trying again until it can (a connection lost later is
    /// always tried again)
    #[arg(long)]
    pub fail_fast: bool,
}

/// A number of seconds from the command line (`1.5`), as a `Duration`.
pub fn seconds(value: &str) -> Result<Duration, String> {
    let number: f64 = value
        .trim()
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    Duration::try_from_secs_f64(number)
        .map_err(|_| "the number of seconds must be 0 or more (and finite)".to_string())
}

/// A number of seconds more than 0: a time limit of none at all (a
/// handshake that must be over before it starts) is a mistake.
pub fn positive_seconds(value: &str) -> Result<Duration, String> {
    match seconds(value)? {
        limit if limit.is_zero() => Err("the number of seconds must be more than 0".to_string()),
        limit => Ok(limit),
    }
}

/// A queue name as the broker takes it: 1 to 255 bytes.
pub fn queue_name(value: &str) -> Result<String, String> {
    match value.len() {
        0 => Err("a queue name cannot be empty".to_string()),
        1..=255 => Ok(value.to_string()),
        n => Err(format!("a queue name is at most 255 bytes, not {n}")),
    }
}

/// A local `ADDR:PORT` to listen on, resolved when the command line is
/// read (a name may give several addresses; binding takes the first that
/// works, as `TcpListener` does).
#[derive(Debug, Clone)]
pub struct ListenAddress(pub Vec<SocketAddr>);

pub fn listen_address(value: &str) -> Result<ListenAddress, String> {
    match value.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("it resolves to no address".to_string())
            } else {
                Ok(ListenAddress(addrs))
            }
        }
        Err(err) => Err(format!(
            "{err} (expected ADDR:PORT, such as 127.0.0.1:8080)"
        )),
    }
}
