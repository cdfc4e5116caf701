//! The command line: subcommands, their options and `--help`.

use crate::args::{MetricsArgs, seconds};
use crate::front::connect::ConnectArgs;
use crate::front::forward::ForwardArgs;
use crate::front::http::HttpArgs;
use crate::front::socks::SocksArgs;
use crate::keys::keygen::KeygenArgs;
use crate::serving::serve::ServeArgs;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// The broker used when neither `--url` nor `AMQP_URL` names one.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const EXIT_CODES: &str = "\
Signals (serve, forward, http, socks, run):
  SIGHUP         read again what can change: key files, authorized keys
                 (run: and its config file); open connections go on
  SIGINT/SIGTERM stop accepting; open connections get --grace seconds
  SIGQUIT        stop at once: open connections are reset
  SIGUSR1/USR2   ignored (logged)
  connect ends on SIGINT, SIGTERM, SIGHUP and SIGQUIT, resetting the
  stream unless all its input was sent. No signal ends a connection
  with a clean end of data: a connection cut short is reset.

Exit codes:
  0  finished, or stopped by a signal
  1  failed while running
  2  bad arguments (URL, address, queue name), or a bad config file
  3  the broker cannot be reached (serve, forward, http, socks and run
     only with --fail-fast: else they keep trying)
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
    /// broker, user guest). Without /VHOST: the default virtual host, /.
    /// A cluster's nodes: a comma-separated list of such URLs, tried in
    /// random order. Keep the password out of it (every user of the
    /// machine can read a command line): --password-file, or the AMQP_URL variable
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_URL,
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub url: String,

    /// The file whose first line is the broker password (it replaces one
    /// in the URL); read again at each connection to the broker
    #[arg(
        long,
        value_name = "FILE",
        env = "AMQP_PASSWORD_FILE",
        hide_env_values = true,
        global = true
    )]
    pub password_file: Option<PathBuf>,

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
  url = \"amqp://bridge@broker:5672\"     # optional, for every tunnel
  password_file = \"/etc/amqp-bridge/password\"   # optional: its password
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
    /// Exit (code 3 or 4) when a tunnel's broker cannot be reached at
    /// start, instead of starting the others and trying again until it
    /// can (for the tunnels whose table sets no `fail_fast`)
    #[arg(long)]
    pub fail_fast: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// The whole command line, as `--help` and the completion scripts show
/// it: the broker options are left out of `keygen` and `completions`,
/// which never touch the broker.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    command.build();
    for name in ["keygen", "completions"] {
        if let Some(sub) = command.find_subcommand_mut(name) {
            let hidden = std::mem::take(sub)
                .mut_arg("url", |arg| arg.hide(true))
                .mut_arg("password_file", |arg| arg.hide(true));
            *sub = hidden;
        }
    }
    command
}

/// The command line as the completion scripts offer it: the broker
/// options only where the broker is used. (clap_complete's bash script
/// lists hidden options too, so they are left out of `keygen` and
/// `completions` here rather than hidden.)
pub fn completion_command() -> clap::Command {
    let command = Cli::command();
    let broker_options: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| ["url", "password_file"].contains(&arg.get_id().as_str()))
        .map(|arg| arg.clone().global(false))
        .collect();
    let mut command = command
        .mut_arg("url", |arg| arg.global(false))
        .mut_arg("password_file", |arg| arg.global(false));
    for name in ["serve", "forward", "connect", "http", "socks", "run"] {
        let options = broker_options.clone();
        command = command.mut_subcommand(name, |sub| sub.args(options));
    }
    command
}

/// The parsed command line, and whether a password came with `--url` on
/// it (where every user of the machine can read it).
pub fn parse() -> Result<(Cli, bool), clap::Error> {
    let matches = command().try_get_matches()?;
    let from_command_line = matches.value_source("url") == Some(ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches)?;
    let exposed = from_command_line && names_a_password(&cli.url);
    Ok((cli, exposed))
}

/// Whether any URL of `urls` (one, or a comma-separated list of a
/// cluster's nodes) carries a password.
fn names_a_password(urls: &str) -> bool {
    urls.split(',')
        .any(|one| url::Url::parse(one.trim()).is_ok_and(|url| url.password().is_some()))
}

/// `completions`' options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::net::SocketAddr;

    #[test]
    fn a_password_anywhere_in_a_url_list_is_noticed() {
        assert!(names_a_password("amqp://u:secret@a"));
        assert!(names_a_password("amqp://u@a,amqp://u:secret@b"));
        assert!(names_a_password("amqp://u@a, amqp://u:secret@b:5673/%2f"));
        assert!(!names_a_password("amqp://u@a,amqp://u@b"));
        assert!(!names_a_password("amqp://127.0.0.1"));
    }

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
