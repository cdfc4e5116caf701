//! The subcommands that run as tunnels, and starting one from its
//! parsed command line.

use crate::args::MetricsArgs;
use crate::carry::address::BrokerAddress;
use crate::cli::Command;
use crate::fatal::Fatal;
use crate::tunnel::Tunnel;
use crate::tunnel::metrics::TunnelMetrics;
use std::sync::Arc;

/// The subcommands that can run as tunnels of a config file. A new one
/// goes here and in [`start`].
pub const KINDS: &[&str] = &["serve", "forward", "http", "socks"];

/// Starts the tunnel `command` describes, counted in `metrics`; `None`
/// for a subcommand that is no tunnel (see [`KINDS`]).
pub fn start(
    broker: &BrokerAddress,
    command: &Command,
    metrics: Arc<TunnelMetrics>,
) -> Option<Result<Tunnel, Fatal>> {
    Some(match command {
        Command::Serve(args) => crate::serving::serve::start(broker, args, metrics),
        Command::Forward(args) => crate::front::forward::start(broker, args, metrics),
        Command::Http(args) => crate::front::http::start(broker, args, metrics),
        Command::Socks(args) => crate::front::socks::start(broker, args, metrics),
        Command::Connect(_) | Command::Run(_) | Command::Completions(_) | Command::Keygen(_) => {
            return None;
        }
    })
}

/// A tunnel run on its own from the command line: its kind, the name its
/// metrics carry (the queue; `http` for `http`, which has none) and its
/// `--metrics`; `None` for a subcommand that is no tunnel.
pub fn on_its_own(command: &Command) -> Option<(&'static str, &str, &MetricsArgs)> {
    Some(match command {
        Command::Serve(args) => ("serve", args.queue.as_str(), &args.metrics),
        Command::Forward(args) => ("forward", args.queue.as_str(), &args.metrics),
        Command::Http(args) => ("http", "http", &args.metrics),
        Command::Socks(args) => ("socks", args.queue.as_str(), &args.metrics),
        Command::Connect(_) | Command::Run(_) | Command::Completions(_) | Command::Keygen(_) => {
            return None;
        }
    })
}

/// Checks what the tunnel `command` describes reads when it starts (its
/// key files), without starting it: a reload with a mistake in them
/// changes nothing.
pub fn check(command: &Command) -> Result<(), Fatal> {
    match command {
        Command::Serve(args) => args.keys.live().map(drop),
        Command::Forward(args) => args.keys.live().map(drop),
        Command::Http(args) => args.keys.live().map(drop),
        Command::Socks(args) => args.keys.live().map(drop),
        Command::Connect(_) | Command::Run(_) | Command::Completions(_) | Command::Keygen(_) => {
            Ok(())
        }
    }
}
