//! The command line: subcommands, their options and `--help`.

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

/// The broker used when neither `--url` nor `AMQP_URL` names one.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const EXIT_CODES: &str = "\
Exit codes:
  0  finished, or stopped by SIGINT/SIGTERM
  1  failed while running
  2  bad arguments (URL, address, queue name)
  3  the broker cannot be reached
  4  the broker refused the user name, password or virtual host
  5  address in use (the queue is served elsewhere, or the TCP port is taken)
  6  connection refused (nothing serves the queue)

Logging: RUST_LOG=debug (default info). The password is never printed.";

/// Carry TCP connections through a RabbitMQ broker.
///
/// Run `serve` next to a service (it only needs to reach the broker) and
/// `forward`, `connect` or `http` wherever clients are: each client
/// connection becomes one reliable, ordered stream through the broker.
#[derive(Debug, Parser)]
#[command(name = "amqp-bridge", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Broker URL: amqp://USER:PASSWORD@HOST:PORT/VHOST (default: the local
    /// broker, user guest)
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_URL,
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub url: String,

    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a queue: connect every stream that arrives on it to a TCP service
    #[command(after_help = "\
Example: reach the SSH server of a machine behind NAT as queue `ssh`:
  amqp-bridge serve --queue ssh --to 127.0.0.1:22
Example: three web servers behind one queue, each next to its server:
  amqp-bridge serve --shared --queue web --to 127.0.0.1:8080")]
    Serve(ServeArgs),

    /// Listen on a TCP port: carry every client connection to a served queue
    #[command(after_help = "\
Example: make the service served as queue `db` reachable on local port 5433:
  amqp-bridge forward --listen 127.0.0.1:5433 --queue db
  psql -h 127.0.0.1 -p 5433")]
    Forward(ForwardArgs),

    /// Join standard input and output to one stream (an SSH ProxyCommand)
    #[command(after_help = "\
Example: SSH through the broker to the machine serving queue `ssh`:
  ssh -o ProxyCommand='amqp-bridge connect --queue ssh' user@host")]
    Connect(ConnectArgs),

    /// An HTTP/1.x front door: each connection goes to the queue its first
    /// request names in the X-AMQP-Server-Queue header
    #[command(after_help = "\
Example: reach the web server served as queue `web`:
  amqp-bridge http --listen 127.0.0.1:8080
  curl -H 'X-AMQP-Server-Queue: web' http://127.0.0.1:8080/
A request without the header is answered 400 Bad Request.")]
    Http(HttpArgs),
}

/// `serve`'s options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The queue to serve (clients name it to reach the service)
    #[arg(long)]
    pub queue: String,
    /// The TCP service every stream is connected to
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Share the queue with other `serve --shared` processes: the broker
    /// spreads new streams over those ready for one, and a process that
    /// dies leaves the stream it was about to take to the others
    #[arg(long)]
    pub shared: bool,
    #[command(flatten)]
    pub stop: StopArgs,
}

/// `forward`'s options.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// The local address to accept TCP clients on (port 0: any free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// The queue that serves the far end
    #[arg(long)]
    pub queue: String,
    #[command(flatten)]
    pub stop: StopArgs,
}

/// `connect`'s options.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The queue that serves the far end
    #[arg(long)]
    pub queue: String,
    /// How long to wait for the server's answer
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub connect_timeout: f64,
}

/// `http`'s options.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The local address to accept HTTP clients on (port 0: any free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    #[command(flatten)]
    pub stop: StopArgs,
}

/// How a long-running subcommand stops.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// After SIGINT or SIGTERM, how long open connections may go on
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub grace: f64,
}

impl StopArgs {
    /// The grace period, or an error for a negative or absurd one.
    pub fn grace(&self) -> Result<Duration, String> {
        seconds("--grace", self.grace)
    }
}

impl ConnectArgs {
    /// The connect timeout, or an error for a negative or absurd one.
    pub fn connect_timeout(&self) -> Result<Duration, String> {
        seconds("--connect-timeout", self.connect_timeout)
    }
}

/// A number of seconds from the command line as a `Duration`.
fn seconds(option: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{option} must be a number of seconds, not {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn url_defaults_to_the_local_broker() {
        let cli = Cli::try_parse_from(["amqp-bridge", "connect", "--queue", "q"]).unwrap();
        // AMQP_URL may be set in the environment running the tests.
        let expected = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        assert_eq!(cli.url, expected);
    }

    #[test]
    fn negative_durations_are_refused() {
        assert!(seconds("--grace", -1.0).is_err());
        assert!(seconds("--grace", f64::NAN).is_err());
        assert_eq!(
            seconds("--grace", 1.5).unwrap(),
            Duration::from_millis(1500)
        );
    }
}
