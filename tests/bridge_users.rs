//! `amqp-bridge` as its users run it, with real third-party programs
//! (installed by `scripts/ensure-test-tools.sh`): OpenSSH through
//! `connect` as a ProxyCommand and through `forward`/`serve`, psql against
//! the machine's PostgreSQL, redis-cli and redis-benchmark (50 clients)
//! against its Redis, curl through `http`, a request/response protocol
//! that half-closes, a TCP client that must see a reset when the bridge's
//! broker connection is cut or the target resets, and `serve` restarted
//! at once.

mod common;
#[path = "bridge/harness.rs"]
mod harness;
#[path = "bridge/sshd.rs"]
mod sshd;

use common::relay::Relay;
use harness::{BOUND, Bridge, assert_same, forward, http_service, serve, warnings};
use sshd::{Sshd, run_ok};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

const BRIDGE: &str = env!("CARGO_BIN_EXE_amqp-bridge");

/// `ssh`/`scp` with the server's options, reaching it through `connect`.
fn through_connect(program: &str, sshd: &Sshd, queue: &str) -> Command {
    let mut command = Command::new(program);
    command
        .args(sshd.client_options())
        .arg("-o")
        .arg(format!("ProxyCommand={BRIDGE} connect --queue {queue}"))
        .env("AMQP_URL", common::url())
        // As a user runs it: connect logs only errors.
        .env_remove("RUST_LOG");
    command
}

#[test]
fn ssh_through_connect_runs_a_command_and_scp_copies_20_mib_both_ways() {
    let url = common::url();
    let sshd = Sshd::start();
    let (server, queue) = serve(&url, sshd.addr);

    let out = run_ok(
        through_connect("ssh", &sshd, &queue).args(["root@bridged", "echo hello $((6 * 7))"]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 42\n");
    assert!(
        out.stderr.is_empty(),
        "connect wrote into the ssh user's terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data = common::random_bytes(20 << 20, 11);
    let (local, remote, back) = (
        sshd.dir().join("up"),
        sshd.dir().join("remote"),
        sshd.dir().join("down"),
    );
    std::fs::write(&local, &data).unwrap();
    run_ok(
        through_connect("scp", &sshd, &queue)
            .arg(&local)
            .arg(format!("root@bridged:{}", remote.display())),
    );
    assert_same("scp up", &data, &std::fs::read(&remote).unwrap());
    run_ok(
        through_connect("scp", &sshd, &queue)
            .arg(format!("root@bridged:{}", remote.display()))
            .arg(&back),
    );
    assert_same("scp down", &data, &std::fs::read(&back).unwrap());
    assert_eq!(warnings(&server.log()), Vec::<&str>::new());
}

#[test]
fn ssh_and_scp_through_forward_and_serve() {
    let url = common::url();
    let sshd = Sshd::start();
    let (server, queue) = serve(&url, sshd.addr);
    let (forwarder, port) = forward(&url, &queue);
    let port = port.port().to_string();

    let out = run_ok(Command::new("ssh").args(sshd.client_options()).args([
        "-p",
        &port,
        "root@127.0.0.1",
        "echo forwarded",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "forwarded\n");

    let data = common::random_bytes(20 << 20, 12);
    let (local, remote) = (sshd.dir().join("up"), sshd.dir().join("remote"));
    std::fs::write(&local, &data).unwrap();
    run_ok(
        Command::new("scp")
            .args(sshd.client_options())
            .args(["-P", &port])
            .arg(&local)
            .arg(format!("root@127.0.0.1:{}", remote.display())),
    );
    assert_same(
        "scp through forward",
        &data,
        &std::fs::read(&remote).unwrap(),
    );
    for bridge in [&server, &forwarder] {
        assert_eq!(warnings(&bridge.log()), Vec::<&str>::new());
    }
}

#[test]
fn psql_through_forward_and_serve_logs_no_warning() {
    let url = common::url();
    let (server, queue) = serve(&url, "127.0.0.1:5432".parse().unwrap());
    let (forwarder, port) = forward(&url, &queue);
    for _ in 0..5 {
        let out = run_ok(Command::new("psql").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atc",
            "select 1",
        ]));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    }
    for bridge in [&server, &forwarder] {
        // PostgreSQL may reset its end once psql has said goodbye: a
        // normal end, logged as closed or reset at info.
        common::eventually(BOUND, "every psql connection logged", || {
            let log = bridge.log();
            match log.matches(" closed: ").count() + log.matches(" reset: ").count() {
                5 => Ok(()),
                n => Err(format!("{n} of 5; log:\n{log}")),
            }
        });
        assert_eq!(warnings(&bridge.log()), Vec::<&str>::new());
    }
}

#[test]
fn redis_cli_and_redis_benchmark_with_50_clients_through_forward_and_serve() {
    let url = common::url();
    let (server, queue) = serve(&url, "127.0.0.1:6379".parse().unwrap());
    let (forwarder, port) = forward(&url, &queue);
    let port = port.port().to_string();
    let key = common::queue("key");
    let redis = |args: &[&str]| {
        let out = run_ok(Command::new("redis-cli").args(["-p", &port]).args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(redis(&["set", &key, "through the broker"]), "OK");
    assert_eq!(redis(&["get", &key]), "through the broker");
    assert_eq!(redis(&["del", &key]), "1");
    let out = run_ok(
        Command::new("redis-benchmark")
            .args(["-p", &port, "-q", "-n", "2000", "-c", "50", "-t", "ping"]),
    );
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(text.contains("requests per second"), "{text}");
    for bridge in [&server, &forwarder] {
        assert_eq!(warnings(&bridge.log()), Vec::<&str>::new());
    }
}

#[test]
fn curl_through_the_http_front_door() {
    let web = http_service();
    let url = common::url();
    let (_server, queue) = serve(&url, web);
    let front = Bridge::start(&url, &["http", "--listen", "127.0.0.1:0"]);
    let port = harness::address_in(&front.wait_for("front door on"));
    let out = run_ok(Command::new("curl").args([
        "-sS",
        "--max-time",
        "30",
        "-H",
        &format!("X-AMQP-Server-Queue: {queue}"),
        &format!("http://{port}/hello"),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "you asked for GET /hello HTTP/1.1"
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{port}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}

#[test]
fn a_request_response_protocol_that_half_closes_logs_no_warning() {
    // The server reads the request to its end, answers and then resets,
    // as a database server may once its client has said goodbye.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let mut request = Vec::new();
            client.read_to_end(&mut request).unwrap();
            let _ = client.write_all(format!("{} bytes", request.len()).as_bytes());
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        }
    });
    let url = common::url();
    let (server, queue) = serve(&url, target);
    let (forwarder, port) = forward(&url, &queue);
    for round in 1..=5 {
        let mut client = TcpStream::connect(port).unwrap();
        client.set_read_timeout(Some(BOUND)).unwrap();
        client.write_all(&vec![b'q'; round * 1000]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = [0u8; 64];
        let n = client.read(&mut answer).unwrap();
        assert_eq!(&answer[..n], format!("{} bytes", round * 1000).as_bytes());
    }
    for bridge in [&server, &forwarder] {
        common::eventually(BOUND, "every connection logged", || {
            let log = bridge.log();
            match log.matches(" closed: ").count() + log.matches(" reset: ").count() {
                5 => Ok(()),
                n => Err(format!("{n} of 5; log:\n{log}")),
            }
        });
        assert_eq!(warnings(&bridge.log()), Vec::<&str>::new());
    }
}

/// A TCP service that sends `total` bytes to each client and then
/// closes (a download), or resets after `total` bytes when `reset`.
fn download_service(total: usize, reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            std::thread::spawn(move || {
                let chunk = vec![7u8; 64 << 10];
                let mut sent = 0;
                while sent < total {
                    let n = chunk.len().min(total - sent);
                    if client.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    sent += n;
                }
                if reset {
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
    addr
}

/// Reads from `client` until its end: the bytes read and how it ended.
fn read_until_the_end(client: &mut TcpStream) -> (usize, io::Result<()>) {
    client.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = vec![0; 64 << 10];
    let mut total = 0;
    loop {
        match client.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return (total, Err(err)),
        }
    }
}

/// Reads `n` bytes of a download through `port`, calls `fault`, then
/// reads on: the client must see a reset, never an end of data.
fn download_sees_a_reset(port: SocketAddr, total: usize, fault: impl FnOnce()) -> usize {
    let mut client = TcpStream::connect(port).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let mut first = vec![0; 1 << 20];
    client.read_exact(&mut first).unwrap();
    fault();
    let (rest, end) = read_until_the_end(&mut client);
    let received = first.len() + rest;
    let err = end.expect_err(&format!(
        "a clean end of data after {received} of {total} bytes: the fault must reach the client as a reset"
    ));
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(received < total, "{received} of {total}");
    received
}

const DOWNLOAD: usize = 100 << 20;

#[test]
fn cutting_forwards_broker_connection_mid_transfer_resets_the_client() {
    let (server, queue) = serve(&common::url(), download_service(DOWNLOAD, false));
    let relay = Relay::to_broker();
    let (forwarder, port) = forward(&relay.url(), &queue);
    let received = download_sees_a_reset(port, DOWNLOAD, || relay.cut());
    forwarder.wait_for("closed with an error");
    common::summary::record(
        "bridge: forward's broker connection cut mid-download",
        "100 MiB download",
        "relay cut",
        &format!("client reset after {received} bytes"),
        received as u64,
    );
    drop(server);
}

#[test]
fn cutting_serves_broker_connection_mid_transfer_resets_the_client() {
    let relay = Relay::to_broker();
    let (server, queue) = serve(&relay.url(), download_service(DOWNLOAD, false));
    let (_forwarder, port) = forward(&common::url(), &queue);
    let received = download_sees_a_reset(port, DOWNLOAD, || relay.cut());
    server.wait_for("closed with an error");
    common::summary::record(
        "bridge: serve's broker connection cut mid-download",
        "100 MiB download",
        "relay cut",
        &format!("client reset after {received} bytes"),
        received as u64,
    );
}

#[test]
fn a_target_that_resets_resets_the_client() {
    let total = 8 << 20;
    let (_server, queue) = serve(&common::url(), download_service(total, true));
    let (_forwarder, port) = forward(&common::url(), &queue);
    let mut client = TcpStream::connect(port).unwrap();
    let (received, end) = read_until_the_end(&mut client);
    let err = end.expect_err(&format!("a clean end of data after {received} bytes"));
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn a_target_that_refuses_resets_the_client() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (server, queue) = serve(&common::url(), closed);
    let (_forwarder, port) = forward(&common::url(), &queue);
    let mut client = TcpStream::connect(port).unwrap();
    client.write_all(b"hello?").unwrap();
    let (received, end) = read_until_the_end(&mut client);
    assert_eq!(received, 0);
    let err = end.expect_err("an empty reply: a refused target must reset the client");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    server.wait_for("failed");
}

#[test]
fn connect_passes_on_output_without_a_newline_at_once() {
    // A service that greets without a newline and waits, as an SSH
    // server's version line and key exchange do.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            std::thread::spawn(move || {
                client.write_all(b"abc").unwrap();
                let mut rest = Vec::new();
                let _ = client.read_to_end(&mut rest);
            });
        }
    });
    let url = common::url();
    let (_server, queue) = serve(&url, target);
    let mut pipe = Bridge::start_logging(&url, &["connect", "--queue", &queue], "error");
    let stdin = pipe.stdin.take().unwrap();
    let mut stdout = pipe.stdout.take().unwrap();
    let (got_tx, got) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut greeting = [0u8; 3];
        let _ = got_tx.send(stdout.read_exact(&mut greeting).map(|()| greeting));
    });
    // Standard input stays open meanwhile.
    let greeting = got
        .recv_timeout(BOUND)
        .expect("abc came out while the stream was open")
        .unwrap();
    assert_eq!(&greeting, b"abc");
    pipe.signal("HUP");
    let status = pipe.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", pipe.log());
    assert_eq!(pipe.log(), "", "connect printed on standard error");
    drop(stdin);
}

#[test]
fn serve_restarted_at_once_after_sigterm_gets_its_queue_back_every_time() {
    let url = common::url();
    let queue = common::queue("bridge-restart");
    let target = download_service(0, false).to_string();
    let broker_log = BrokerLog::open();
    // Each serve's broker port, and where the broker's log stood when it
    // started: its close is the first for that port from there on (the
    // port may be reused by other connections later).
    let mut serves = Vec::new();
    for round in 1..=20 {
        let from = broker_log.as_ref().map_or(0, BrokerLog::end);
        let bridge = Bridge::start(&url, &["serve", "--queue", &queue, "--to", &target]);
        let port = broker_port(&bridge);
        serves.push((port, from));
        bridge.wait_for("serving queue");
        bridge.signal("TERM");
        let status = bridge.wait_exit();
        assert!(
            status.success(),
            "round {round}: {status}; log:\n{}",
            bridge.log()
        );
    }
    // Each closed its broker connection properly: the broker logs the
    // close at info, not "client unexpectedly closed TCP connection".
    if let Some(broker_log) = broker_log {
        for (port, from) in &serves {
            broker_log.assert_closed_properly(port, *from);
        }
    }
    common::summary::record(
        "bridge: serve restarted on its queue at once after SIGTERM",
        "20 restarts",
        "SIGTERM",
        "queue taken back every time (never exit 5)",
        0,
    );
}

#[test]
fn connections_still_open_when_the_grace_period_ends_are_reset_on_both_sides() {
    // The target reports how its connection ended.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let (ended_tx, ended) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let ended_tx = ended_tx.clone();
            std::thread::spawn(move || {
                let _ = ended_tx.send(read_until_the_end(&mut client).1.map_err(|e| e.kind()));
            });
        }
    });
    let url = common::url();
    let (_server, queue) = serve(&url, target);
    let broker_log = BrokerLog::open();
    let from = broker_log.as_ref().map_or(0, BrokerLog::end);
    let (forwarder, broker_port, port) = forward_with_short_grace(&url, &queue);
    let mut client = TcpStream::connect(port).unwrap();
    client.write_all(b"still talking").unwrap();
    forwarder.signal("TERM");
    let (_, end) = read_until_the_end(&mut client);
    let err = end.expect_err("a clean end of data from a bridge that stopped mid-connection");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(
        ended
            .recv_timeout(BOUND)
            .expect("the target's connection ended"),
        Err(ErrorKind::ConnectionReset),
        "the target's side"
    );
    assert!(forwarder.wait_exit().success(), "{}", forwarder.log());
    forwarder.wait_for("resetting 1 connection(s) still open");
    // The reset stream's worker may still hold the broker connection as
    // the process exits: the bridge closes it properly all the same.
    if let Some(broker_log) = broker_log {
        broker_log.assert_closed_properly(&broker_port, from);
    }
}

#[test]
fn a_bridge_stopped_with_a_stream_mid_handshake_closes_its_broker_connection_properly() {
    // A queue that takes connection requests and never answers them: the
    // forwarded client's stream is still in its handshake (30 s) when the
    // bridge exits, its worker thread holding the broker connection.
    let url = common::url();
    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let queue = common::queue("bridge-mute");
    let exclusive = amiquip::QueueDeclareOptions {
        exclusive: true,
        ..amiquip::QueueDeclareOptions::default()
    };
    channel.queue_declare(queue.as_str(), exclusive).unwrap();
    let broker_log = BrokerLog::open();
    let from = broker_log.as_ref().map_or(0, BrokerLog::end);
    let (forwarder, broker_port, port) = forward_with_short_grace(&url, &queue);
    let _client = TcpStream::connect(port).unwrap();
    common::eventually(
        BOUND,
        "the connection request reaches the queue",
        || match channel.queue_declare_passive(queue.as_str()) {
            Ok(q) if q.declared_message_count() == Some(1) => Ok(()),
            other => Err(format!("{:?}", other.map(|q| q.declared_message_count()))),
        },
    );
    forwarder.signal("TERM");
    assert!(forwarder.wait_exit().success(), "{}", forwarder.log());
    forwarder.wait_for("exiting with 1 connection(s) still open");
    if let Some(broker_log) = broker_log {
        broker_log.assert_closed_properly(&broker_port, from);
    }
    raw.close().unwrap();
}

/// Runs the bridge to its end as users run it (no `RUST_LOG`): its exit
/// code and everything it printed on standard error.
fn run_plain(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let bridge = Bridge::start_logging(url, args, "");
    let status = bridge.wait_exit();
    bridge.wait_for("amqp-bridge: ");
    (status.code(), bridge.log())
}

#[test]
fn arguments_are_checked_before_the_broker_is_contacted_and_errors_are_one_line() {
    // Nothing listens on this broker port: a bridge that contacted it
    // would fail with exit code 3 instead.
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", common::free_port());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &["forward", "--listen", "nowhere", "--queue", "q"],
            2,
            "ADDR:PORT",
        ),
        (
            &["forward", "--listen", "127.0.0.1:0", "--queue", ""],
            2,
            "cannot be empty",
        ),
        (&["http", "--listen", &taken], 5, "cannot listen on"),
        (
            &["forward", "--listen", &taken, "--queue", "q"],
            5,
            "cannot listen on",
        ),
        (
            &["connect", "--queue", "q", "--connect-timeout", "-1"],
            2,
            "0 or more",
        ),
        (
            &[
                "serve",
                "--queue",
                "q",
                "--to",
                "127.0.0.1:1",
                "--grace",
                "soon",
            ],
            2,
            "not a number",
        ),
    ];
    for (args, code, message) in cases {
        let (got, log) = run_plain(&nowhere, args);
        assert_eq!(got, Some(code), "{args:?}: {log}");
        assert_eq!(log.lines().count(), 1, "{args:?}: not one line:\n{log}");
        assert!(
            log.starts_with("amqp-bridge: ") && log.contains(message),
            "{args:?}: {log}"
        );
    }

    // A queue served elsewhere: one line, none of amiquip's own.
    let url = common::url();
    let (_server, queue) = serve(&url, download_service(0, false));
    let (code, log) = run_plain(&url, &["serve", "--queue", &queue, "--to", "127.0.0.1:1"]);
    assert_eq!(code, Some(5), "{log}");
    assert!(!log.contains("Close {"), "amiquip's raw message: {log}");
    assert_eq!(warnings(&log), Vec::<&str>::new());
    assert!(
        log.lines()
            .last()
            .unwrap()
            .contains("already has a listener"),
        "{log}"
    );
}

/// The machine's broker's log file (`None` when `rabbitmq-diagnostics`
/// cannot say where it is, or the tests use a broker elsewhere).
struct BrokerLog {
    path: String,
}

impl BrokerLog {
    fn open() -> Option<BrokerLog> {
        let url = common::url();
        if !(url.contains("@127.0.0.1:") || url.contains("@localhost:")) {
            return None;
        }
        let out = Command::new("rabbitmq-diagnostics")
            .args(["-q", "log_location"])
            .output()
            .ok()?;
        let path = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .to_string();
        std::fs::metadata(&path).ok()?;
        Some(BrokerLog { path })
    }

    /// Where the log ends now.
    fn end(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The broker's first "closing AMQP connection" line, after `from`,
    /// of a connection from 127.0.0.1:`port`.
    fn first_close(&self, port: &str, from: u64) -> Option<String> {
        let mut file = std::fs::File::open(&self.path).unwrap();
        io::Seek::seek(&mut file, io::SeekFrom::Start(from)).unwrap();
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let needle = format!("(127.0.0.1:{port} -> ");
        text.lines()
            .find(|line| line.contains("closing AMQP connection") && line.contains(&needle))
            .map(String::from)
    }

    /// Waits until the broker logs the close of the connection from
    /// 127.0.0.1:`port` (the first after `from`) and checks that it was a
    /// proper AMQP close (`[info]`), not "client unexpectedly closed TCP
    /// connection" (`[warning]`).
    fn assert_closed_properly(&self, port: &str, from: u64) {
        common::eventually(BOUND, "the broker logs the close", || {
            match self.first_close(port, from) {
                Some(line) => {
                    assert!(line.contains("[info]"), "closed abruptly: {line}");
                    Ok(())
                }
                None => Err(format!("no close of 127.0.0.1:{port} logged")),
            }
        });
    }
}

/// The local port of a bridge's broker connection, from its "connected
/// to" line (the port the broker's log names it by).
fn broker_port(bridge: &Bridge) -> String {
    let connected = bridge.wait_for("connected to");
    connected.rsplit(':').next().unwrap().trim().to_string()
}

/// Starts `forward` to `queue` with a grace period of one second; returns
/// it, its broker connection's local port and its listening address.
fn forward_with_short_grace(url: &str, queue: &str) -> (Bridge, String, SocketAddr) {
    let forwarder = Bridge::start(
        url,
        &[
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            queue,
            "--grace",
            "1",
        ],
    );
    let port = broker_port(&forwarder);
    let listening = harness::address_in(&forwarder.wait_for("forwarding"));
    (forwarder, port, listening)
}
