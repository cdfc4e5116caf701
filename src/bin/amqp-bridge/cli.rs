//! The command line: subcommands, their options and `--help`.

use crate::allow::AllowRule;
use crate::key_args::{ClientKeyArgs, ServeKeyArgs};
use crate::target::Target;
use clap::{Args, Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The broker used when neither `--url` nor `AMQP_URL` names one.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const EXIT_CODES: &str = "\
Exit codes:
  0  finished, or stopped by SIGINT/SIGTERM (connect: or SIGHUP;
     run: SIGHUP reloads the config file)
  1  failed while running
  2  bad arguments (URL, address, queue name), or a bad config file
  3  the broker cannot be reached
  4  the broker refused the user name, password or virtual host
  5  address in use (the queue is served elsewhere, or the TCP port is taken)
  6  connection refused (nothing serves the queue)

Logging: RUST_LOG=debug (default info; connect: error, as its standard
error is often an ssh user's terminal). The password is never printed.";

/// Carry TCP connections through a RabbitMQ broker.
///
/// Run `serve` next to a service (it only needs to reach the broker) and
/// `forward`, `connect`, `http` or `socks` wherever clients are: each client
/// connection becomes one reliable, ordered stream through the broker.
#[derive(Debug, Parser)]
#[command(name = "amqp-bridge", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Broker URL: amqp://USER:PASSWORD@HOST:PORT/VHOST (default: the local
    /// broker, user guest); a cluster's nodes as a comma-separated list of
    /// such URLs, tried in random order
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
    /// Serve a queue: connect every stream that arrives on it to a TCP
    /// service (--to), or to the one it asks for within --allow (for `socks`)
    #[command(after_help = "\
Example: reach the SSH server of a machine behind NAT as queue `ssh`:
  amqp-bridge serve --queue ssh --to 127.0.0.1:22
Example: three web servers behind one queue, each next to its server:
  amqp-bridge serve --shared --queue web --to 127.0.0.1:8080
Example: let `amqp-bridge socks` clients reach the web servers of one
network and one database, and nothing else:
  amqp-bridge serve --queue lan --allow '*.lan.example.com:443' --allow 10.0.0.0/8:80 \\
      --allow db.lan.example.com:5432

--allow HOST:PORTS (repeatable; nothing else is allowed). HOST: a name
(db.example.com), *.example.com (any name below it), an address
(127.0.0.1, [::1]), a network (10.0.0.0/8, [fd00::/8]) or * (any).
PORTS: 5432, 8000-8099 or *. A requested name is matched against name
rules before it is resolved (a listed name is connected wherever its DNS
points); otherwise it is resolved and only the addresses that address or
network rules cover are connected to (checked and connected without a
second lookup). A request outside the list is answered \"not allowed\",
logged, and no connection is made.")]
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

    /// A SOCKS5 proxy (CONNECT, no authentication): each connection goes
    /// through a queue served with `serve --allow` to the target the
    /// client names, resolved on the serving side
    #[command(after_help = "\
Example: browse the network behind the machine serving queue `lan`:
  amqp-bridge serve --queue lan --allow '*.lan.example.com:*'   # on that machine
  amqp-bridge socks --listen 127.0.0.1:1080 --queue lan
  curl --socks5-hostname 127.0.0.1:1080 https://wiki.lan.example.com/
A target outside serve's --allow list gets the SOCKS reply \"connection not
allowed by ruleset\"; one that refuses, \"connection refused\".")]
    Socks(SocksArgs),
    /// Write a new key pair (or pre-shared key) for the end-to-end key options
    #[command(after_help = "\
Example: a database reachable only by holders of a key:
  amqp-bridge keygen server.key      # on the server: prints its public key
  amqp-bridge keygen client.key      # on the client: prints its public key
  amqp-bridge serve --queue db --to 127.0.0.1:5432 \\
      --key server.key --authorized-keys clients.pub
  amqp-bridge forward --listen 127.0.0.1:5433 --queue db \\
      --key client.key --peer-key server.key.pub")]
    Keygen(KeygenArgs),

    /// Run the tunnels a config file lists (serve, forward, http, ...);
    /// SIGHUP reloads it
    #[command(after_help = "\
Example: three tunnels from one file, metrics on port 9100:
  amqp-bridge run --config /etc/amqp-bridge/tunnels.toml --metrics 127.0.0.1:9100
The file has a table per tunnel, [KIND.NAME], whose keys are the options
of that subcommand without their dashes:
  url = \"amqp://bridge:secret@broker:5672/%2f\"   # optional, for every tunnel
  [serve.db]
  queue = \"db\"
  to = \"127.0.0.1:5432\"
  [forward.web]
  listen = \"127.0.0.1:8080\"
  queue = \"web\"")]
    Run(RunArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "\
Example: completions for bash, for every new shell:
  amqp-bridge completions bash > /etc/bash_completion.d/amqp-bridge")]
    Completions(CompletionsArgs),
}

/// `serve`'s options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The queue to serve (clients name it to reach the service)
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    /// The TCP service every stream is connected to (or --allow)
    #[arg(long, value_name = "HOST:PORT", value_parser = Target::parse,
          required_unless_present = "allow", conflicts_with = "allow")]
    pub to: Option<Target>,
    /// Instead of --to: each stream names its target (`amqp-bridge
    /// socks`), connected only when a rule allows it (repeatable; see
    /// below)
    #[arg(long, value_name = "HOST:PORTS", value_parser = AllowRule::parse)]
    pub allow: Vec<AllowRule>,
    /// Share the queue with other `serve --shared` processes: the broker
    /// spreads new streams over those ready for one, and a process that
    /// dies leaves the stream it was about to take to the others
    #[arg(long)]
    pub shared: bool,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub keys: ServeKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// `forward`'s options.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// The local address to accept TCP clients on (port 0: any free port)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub listen: ListenAddress,
    /// The queue that serves the far end
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// `socks`'s options.
#[derive(Debug, Args)]
pub struct SocksArgs {
    /// The local address to accept SOCKS5 clients on (port 0: any free
    /// port)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub listen: ListenAddress,
    /// The queue served with `serve --allow` that connects the targets
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// `connect`'s options.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The queue that serves the far end
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    /// How long to wait for the server's answer
    #[arg(long, value_name = "SECONDS", default_value = "30",
          value_parser = seconds, allow_negative_numbers = true)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
}

/// `http`'s options.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The local address to accept HTTP clients on (port 0: any free port)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub listen: ListenAddress,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// `keygen`'s options.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (0600); the public key goes to
    /// FILE.pub and to standard output. Existing files are never replaced
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Write a pre-shared key to FILE instead (for --psk-file on both ends)
    #[arg(long)]
    pub psk: bool,
    /// The comment after the public key (default: USER@HOST)
    #[arg(long, conflicts_with = "psk")]
    pub comment: Option<String>,
}

/// `run`'s options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML file that lists the tunnels (read again on SIGHUP)
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// After SIGINT or SIGTERM, how long open connections may go on (for
    /// the tunnels whose table sets no `grace`)
    #[arg(long, value_name = "SECONDS", value_parser = seconds, allow_negative_numbers = true)]
    pub grace: Option<Duration>,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// `completions`' options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Where the metrics are served.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (open and total
    /// connections, bytes each way, refusals and failures by reason,
    /// broker reconnects, handshake latency)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub metrics: Option<ListenAddress>,
}

/// How a long-running subcommand stops.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// After SIGINT or SIGTERM, how long open connections may go on
    #[arg(long, value_name = "SECONDS", default_value = "10",
          value_parser = seconds, allow_negative_numbers = true)]
    pub grace: Duration,
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
fn queue_name(value: &str) -> Result<String, String> {
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

fn listen_address(value: &str) -> Result<ListenAddress, String> {
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
    fn key_options_come_in_pairs() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ());
        let forward = [
            "amqp-bridge",
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            "q",
        ];
        let with = |extra: &[&'static str]| [&forward[..], extra].concat();
        assert!(parse(&with(&["--psk-file", "k"])).is_ok());
        assert!(parse(&with(&["--key", "k", "--peer-key", "p"])).is_ok());
        let err = parse(&with(&["--key", "k"])).unwrap_err();
        assert!(err.to_string().contains("--peer-key"), "{err}");
        let err = parse(&with(&["--authorized-keys", "a"])).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let serve = [
            "amqp-bridge",
            "serve",
            "--queue",
            "q",
            "--to",
            "127.0.0.1:1",
        ];
        let err = parse(&[&serve[..], &["--authorized-keys", "a"]].concat()).unwrap_err();
        assert!(err.to_string().contains("--key"), "{err}");
        assert!(parse(&[&serve[..], &["--key", "k", "--authorized-keys", "a"]].concat()).is_ok());
    }

    #[test]
    fn negative_durations_are_refused() {
        assert!(seconds("-1").unwrap_err().contains("0 or more"));
        assert!(seconds("NaN").is_err());
        assert!(seconds("soon").unwrap_err().contains("not a number"));
        assert_eq!(seconds("1.5").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn a_negative_timeout_is_a_bad_value_not_an_unknown_option() {
        let err = Cli::try_parse_from([
            "amqp-bridge",
            "connect",
            "--queue",
            "q",
            "--connect-timeout",
            "-1",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("0 or more"), "{err}");
    }

    #[test]
    fn empty_queues_and_bad_addresses_are_refused_before_anything_runs() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ()).unwrap_err();
        let err = parse(&["amqp-bridge", "connect", "--queue", ""]);
        assert!(err.to_string().contains("cannot be empty"), "{err}");
        let long = "q".repeat(256);
        let err = parse(&[
            "amqp-bridge",
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            &long,
        ]);
        assert!(err.to_string().contains("at most 255"), "{err}");
        let err = parse(&[
            "amqp-bridge",
            "forward",
            "--listen",
            "nowhere",
            "--queue",
            "q",
        ]);
        assert!(err.to_string().contains("ADDR:PORT"), "{err}");
        let cli = Cli::try_parse_from(["amqp-bridge", "http", "--listen", "127.0.0.1:0"]).unwrap();
        let Command::Http(http) = cli.command else {
            panic!("not http")
        };
        assert_eq!(
            http.listen.0,
            ["127.0.0.1:0".parse::<SocketAddr>().unwrap()]
        );
        let err = parse(&["amqp-bridge", "serve", "--queue", "q", "--to", "127.0.0.1"]);
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }

    #[test]
    fn serve_takes_exactly_one_of_to_and_allow() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let err = parse(&["amqp-bridge", "serve", "--queue", "q"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = parse(&[
            "amqp-bridge",
            "serve",
            "--queue",
            "q",
            "--to",
            "127.0.0.1:22",
            "--allow",
            "127.0.0.1:22",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = parse(&[
            "amqp-bridge",
            "serve",
            "--queue",
            "q",
            "--allow",
            "10.0.0.0/33:*",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("/33"), "{err}");
        let cli = parse(&[
            "amqp-bridge",
            "serve",
            "--queue",
            "q",
            "--allow",
            "*.example.com:443",
            "--allow",
            "[::1]:22",
        ])
        .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert!(serve.to.is_none());
        assert_eq!(serve.allow.len(), 2);
        let cli = parse(&[
            "amqp-bridge",
            "socks",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            "lan",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Socks(_)));
    }
}
