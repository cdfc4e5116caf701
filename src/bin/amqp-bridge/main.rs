//! `amqp-bridge`: carries TCP connections (or standard input and output)
//! through a RabbitMQ broker, over `amqp-stream` streams.
//!
//! `serve` accepts streams on a queue and connects each to a TCP service;
//! `forward`, `http` and `socks` accept TCP clients and carry each to a
//! served queue; `connect` joins standard input and output to one stream;
//! `run` runs the tunnels a config file lists; `keygen` writes keys. See
//! `amqp-bridge --help`.

mod args;
mod carry;
mod cli;
mod completions;
mod fatal;
mod front;
mod keys;
mod service;
mod serving;
mod tunnel;

use carry::address::BrokerAddress;
use clap::error::ErrorKind;
use cli::{Cli, Command};
use fatal::Fatal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let (cli, exposed_password) = match cli::parse() {
        Ok(parsed) => parsed,
        Err(err) => return bad_command_line(err),
    };
    init_logging(&cli.command);
    if exposed_password && cli.password_file.is_none() {
        eprintln!(
            "amqp-bridge: warning: the password in --url can be read by every user of this \
             machine (ps, /proc/PID/cmdline): put it in a file for --password-file, or the \
             URL in AMQP_URL"
        );
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("amqp-bridge: {fatal}");
            fatal.exit_code()
        }
    }
}

fn run(cli: &Cli) -> Result<(), Fatal> {
    match &cli.command {
        Command::Completions(args) => {
            completions::run(args);
            return Ok(());
        }
        Command::Keygen(args) => return keys::keygen::run(args),
        _ => {}
    }
    // Every argument is checked before the network is touched.
    let broker = BrokerAddress::new(&cli.url, cli.password_file.clone());
    broker.check().map_err(Fatal::usage)?;
    match &cli.command {
        Command::Serve(_) | Command::Forward(_) | Command::Http(_) | Command::Socks(_) => {
            service::single::run(&broker, &cli.command)
        }
        Command::Connect(args) => front::connect::run(&broker, args),
        Command::Run(args) => service::run::run(&broker, args),
        Command::Keygen(_) | Command::Completions(_) => Ok(()),
    }
}

/// A command line clap cannot take: one line that says what is wrong
/// (exit 2), and where the help is. `--help` and `--version` print
/// theirs as usual.
fn bad_command_line(err: clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit()
    }
    eprintln!(
        "amqp-bridge: {} (see {} --help)",
        one_line(&err.render().to_string()),
        help_command()
    );
    ExitCode::from(2)
}

/// clap's message without its usage lines, on one line (a tip, such as
/// the option meant, kept).
fn one_line(rendered: &str) -> String {
    let mut message = Vec::new();
    let mut tips = Vec::new();
    for line in rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
    {
        match line.strip_prefix("tip: ") {
            Some(tip) => tips.push(tip),
            None => message.push(line),
        }
    }
    let joined = message.join(" ");
    let mut line = joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .to_string();
    if !tips.is_empty() {
        line.push_str(&format!(" ({})", tips.join("; ")));
    }
    line
}

/// `amqp-bridge SUBCOMMAND` for the subcommand on the command line, else
/// `amqp-bridge`.
fn help_command() -> String {
    let command = cli::command();
    let subcommand = std::env::args()
        .skip(1)
        .find(|arg| command.find_subcommand(arg).is_some());
    match subcommand {
        Some(name) => format!("amqp-bridge {name}"),
        None => "amqp-bridge".to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistake_on_the_command_line_is_one_line_with_its_tip() {
        let err = cli::command()
            .try_get_matches_from(["amqp-bridge", "forward", "--lisen", "1"])
            .unwrap_err();
        let line = one_line(&err.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("unexpected argument '--lisen' found"),
            "{line}"
        );
        assert!(line.contains("'--listen'"), "{line}");
        assert!(
            !line.contains("Usage") && !line.contains("For more"),
            "{line}"
        );
    }
}
