//! `amqp-bridge`: carries TCP connections (or standard input and output)
//! through a RabbitMQ broker, over `amqp-stream` streams.
//!
//! `serve` accepts streams on a queue and connects each to a TCP service;
//! `forward`, `http` and `socks` accept TCP clients and carry each to a
//! served queue; `connect` joins standard input and output to one stream;
//! `run` runs the tunnels a config file lists; `keygen` writes keys. See
//! `amqp-bridge --help`.

mod abort;
mod allow;
mod backoff;
mod broker_stream;
mod chosen_target;
mod cli;
mod completions;
mod config;
mod conn_log;
mod connect;
mod deadline;
mod fatal;
mod forward;
mod http;
mod key_args;
mod keygen;
mod lifecycle;
mod link;
mod metered;
mod metrics;
mod metrics_http;
mod run;
mod serve;
mod shutdown;
mod signals;
mod single;
mod socks;
mod socks5;
mod splice;
mod target;
mod target_request;
mod tcp_front;
mod tunnel;

use amqp_stream::BrokerUrls;
use clap::Parser;
use clap::error::ErrorKind;
use cli::{Cli, Command};
use fatal::Fatal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return bad_command_line(err),
    };
    init_logging(&cli.command);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("amqp-bridge: {fatal}");
            fatal.exit_code()
        }
    }
}

fn run(cli: &Cli) -> Result<(), Fatal> {
    if let Command::Completions(args) = &cli.command {
        completions::run(args);
        return Ok(());
    }
    // Every argument is checked before the network is touched.
    cli.url
        .parse::<BrokerUrls>()
        .map_err(|err| Fatal::usage(err.to_string()))?;
    match &cli.command {
        Command::Serve(args) => serve::run(&cli.url, args),
        Command::Forward(args) => forward::run(&cli.url, args),
        Command::Connect(args) => connect::run(&cli.url, args),
        Command::Http(args) => http::run(&cli.url, args),
        Command::Socks(args) => socks::run(&cli.url, args),
        Command::Keygen(args) => keygen::run(args),
        Command::Run(args) => run::run(&cli.url, args),
        Command::Completions(_) => Ok(()),
    }
}

/// A bad value gets one line that says what is wrong with it (exit 2);
/// a missing or unknown argument gets clap's message with the usage.
fn bad_command_line(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            eprintln!(
                "amqp-bridge: {} (see --help)",
                first.strip_prefix("error: ").unwrap_or(first)
            );
            ExitCode::from(2)
        }
        _ => err.exit(),
    }
}

/// `RUST_LOG` decides. Without it, `connect` logs only errors (its
/// standard error is the terminal of whoever runs `ssh`), the others
/// `info`; amiquip's own lines (the library reports what they mean) only
/// when `RUST_LOG` asks for them.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Connect(_) => "error,amiquip=off",
        _ => "info,amiquip=off",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}
