//! `amqp-bridge`: carries TCP connections (or standard input and output)
//! through a RabbitMQ broker, over `amqp-stream` streams.
//!
//! `serve` accepts streams on a queue and connects each to a TCP service;
//! `forward` and `http` accept TCP clients and carry each to a served
//! queue; `connect` joins standard input and output to one stream. See
//! `amqp-bridge --help`.

mod backoff;
mod cli;
mod connect;
mod fatal;
mod forward;
mod http;
mod lifecycle;
mod link;
mod serve;
mod splice;
mod target;
mod tcp_front;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match &cli.command {
        Command::Serve(args) => serve::run(&cli.url, args),
        Command::Forward(args) => forward::run(&cli.url, args),
        Command::Connect(args) => connect::run(&cli.url, args),
        Command::Http(args) => http::run(&cli.url, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("amqp-bridge: {fatal}");
            fatal.exit_code()
        }
    }
}

/// `RUST_LOG` decides (default `info`). The library keeps the password
/// out of every level.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}
