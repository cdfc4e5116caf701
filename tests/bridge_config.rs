//! End-to-end tests of `amqp-bridge run --config FILE` (many tunnels in
//! one process, SIGHUP reloads), `--metrics` and `completions`, with the
//! binary as a child process, real TCP clients and services and the real
//! broker.

mod common;
#[path = "bridge/harness.rs"]
mod harness;

use harness::{BOUND, Bridge, address_in, assert_same, echo_service, round_trip};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;

/// A config file of its own for one test.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!("amqp-bridge-{}.toml", uuid::Uuid::new_v4()));
        let file = ConfigFile(path);
        file.write(text);
        file
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The first log line so far that contains `needle`, waiting for it.
fn line_with(bridge: &Bridge, needle: &str) -> String {
    let mut found = None;
    common::eventually(BOUND, &format!("a log line with {needle:?}"), || {
        found = bridge
            .log()
            .lines()
            .find(|line| line.contains(needle))
            .map(str::to_string);
        found.as_ref().map(drop).ok_or_else(|| bridge.log())
    });
    found.unwrap()
}

/// How many log lines so far contain `needle`.
fn count_lines(bridge: &Bridge, needle: &str) -> usize {
    bridge.log().lines().filter(|l| l.contains(needle)).count()
}

/// The local port a `forward` to `queue` listens on.
fn forward_port(bridge: &Bridge, queue: &str) -> SocketAddr {
    address_in(&line_with(bridge, &format!("to queue {queue:?}")))
}

/// Whether the broker has a queue named `queue` (a passive declare: an
/// exclusive queue of another connection answers RESOURCE_LOCKED, one
/// that is gone NOT_FOUND).
fn queue_exists(queue: &str) -> bool {
    let mut raw = common::raw_connection();
    let exists = match raw.open_channel(None).unwrap().queue_declare_passive(queue) {
        Ok(_) => true,
        Err(err) => !err.to_string().contains("NOT_FOUND"),
    };
    let _ = raw.close();
    exists
}

fn stop(bridge: &Bridge) {
    bridge.signal("TERM");
    let status = bridge.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", bridge.log());
}

#[test]
fn three_tunnels_from_one_file_all_work() {
    let queue = common::queue("config-three");
    let file = ConfigFile::new(&format!(
        r#"
[serve.echo]
queue = "{queue}"
to = "{}"

[forward.echo]
listen = "127.0.0.1:0"
queue = "{queue}"

[http.front]
listen = "127.0.0.1:0"
"#,
        echo_service()
    ));
    let bridge = Bridge::start(&common::url(), &["run", "--config", file.path()]);
    bridge.wait_for("running 3 tunnel(s)");

    let data = common::random_bytes(4 << 20, 3);
    let port = forward_port(&bridge, &queue);
    assert_same("forward", &data, &round_trip(port, data.clone()));

    // The HTTP front door reaches the same echo service: the request
    // comes back as it was sent.
    let front = address_in(&line_with(&bridge, "front door on"));
    let request = format!("GET /three HTTP/1.1\r\nHost: x\r\nX-AMQP-Server-Queue: {queue}\r\n\r\n");
    let echoed = round_trip(front, request.clone().into_bytes());
    assert_same("http", request.as_bytes(), &echoed);
    stop(&bridge);
}

#[test]
fn sighup_removes_a_tunnel_and_leaves_the_others_and_all_open_connections_alone() {
    let (kept, removed) = (
        common::queue("config-kept"),
        common::queue("config-removed"),
    );
    let echo = echo_service();
    let kept_tables = format!(
        r#"
[serve.kept]
queue = "{kept}"
to = "{echo}"

[forward.kept]
listen = "127.0.0.1:0"
queue = "{kept}"
"#
    );
    let removed_table = format!("\n[serve.removed]\nqueue = \"{removed}\"\nto = \"{echo}\"\n");
    let file = ConfigFile::new(&format!("{kept_tables}{removed_table}"));
    let url = common::url();
    let bridge = Bridge::start(&url, &["run", "--config", file.path()]);
    bridge.wait_for("running 3 tunnel(s)");
    let port = forward_port(&bridge, &kept);

    // A transfer through the tunnels that stay, half done.
    let data = common::random_bytes(8 << 20, 5);
    let half = data.len() / 2;
    let mut client = TcpStream::connect(port).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    client.write_all(&data[..half]).unwrap();
    let mut back = vec![0; half];
    client.read_exact(&mut back).unwrap();
    // And a stream open on the tunnel that goes.
    let connector = amqp_stream::Connector::open(&url).unwrap();
    let mut on_removed = connector.connect(&removed).unwrap();
    on_removed.set_read_timeout(Some(BOUND)).unwrap();
    on_removed.write_all(b"before").unwrap();
    let mut word = [0u8; 6];
    on_removed.read_exact(&mut word).unwrap();
    assert_eq!(&word, b"before");

    // The new file drops one tunnel and adds another.
    let added: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let added_table = format!("\n[forward.added]\nlisten = \"{added}\"\nqueue = \"{kept}\"\n");
    file.write(&format!("{kept_tables}{added_table}"));
    bridge.signal("HUP");
    bridge.wait_for("1 started, 1 stopped, 2 unchanged, 0 failed");

    // The removed tunnel accepts nothing more: its queue is gone.
    common::eventually(BOUND, "the removed tunnel's queue is deleted", || {
        if queue_exists(&removed) {
            Err("still there".into())
        } else {
            Ok(())
        }
    });
    let refused = connector.connect(&removed).unwrap_err();
    assert_eq!(
        refused.kind(),
        io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    // Both open connections go on to their end, intact.
    client.write_all(&data[half..]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    client.read_to_end(&mut back).unwrap();
    assert_same("the transfer across the reload", &data, &back);
    on_removed.write_all(b"after!").unwrap();
    on_removed.read_exact(&mut word).unwrap();
    assert_eq!(&word, b"after!");
    on_removed.shutdown(Shutdown::Write).unwrap();
    assert_eq!(on_removed.read(&mut word).unwrap(), 0);
    // Its last connection ended: the removed tunnel is gone for good.
    bridge.wait_for("tunnel serve \"removed\" removed: its last connection has ended");

    // The kept tunnels were not restarted and still work.
    let again = common::random_bytes(1 << 20, 6);
    assert_same("after the reload", &again, &round_trip(port, again.clone()));
    assert_same(
        "the added tunnel",
        &again,
        &round_trip(added, again.clone()),
    );
    assert_eq!(count_lines(&bridge, "forwarding "), 2, "{}", bridge.log());
    assert_eq!(
        count_lines(&bridge, &format!("serving queue {kept:?}")),
        1,
        "{}",
        bridge.log()
    );
    assert!(queue_exists(&kept));
    stop(&bridge);
}

#[test]
fn sigterm_gives_each_tunnels_connections_its_own_grace() {
    let queue = common::queue("config-grace");
    let file = ConfigFile::new(&format!(
        r#"
[serve.echo]
queue = "{queue}"
to = "{}"

[forward.short]
listen = "127.0.0.1:0"
queue = "{queue}"
grace = 0.5

[forward.long]
listen = "127.0.0.1:0"
queue = "{queue}"
grace = 60
"#,
        echo_service()
    ));
    let bridge = Bridge::start(&common::url(), &["run", "--config", file.path()]);
    bridge.wait_for("running 3 tunnel(s)");
    let ports: Vec<SocketAddr> = bridge
        .log()
        .lines()
        .filter(|l| l.contains(&format!("to queue {queue:?}")))
        .map(address_in)
        .collect();
    assert_eq!(ports.len(), 2);
    let open = |port| {
        let mut client = TcpStream::connect(port).unwrap();
        client.set_read_timeout(Some(BOUND)).unwrap();
        client.write_all(b"hello").unwrap();
        let mut echoed = [0u8; 5];
        client.read_exact(&mut echoed).unwrap();
        client
    };
    let mut clients: Vec<TcpStream> = ports.iter().map(|&p| open(p)).collect();
    // Which client is on the short grace: the order of the log lines is
    // the order the tunnels started in, the file's.
    let mut long = clients.pop().unwrap();
    let mut short = clients.pop().unwrap();

    bridge.signal("TERM");
    let mut rest = Vec::new();
    let err = short.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    bridge.wait_for("resetting 1 connection(s) still open");
    // The other tunnel's connection goes on, and ends normally.
    long.write_all(b"still").unwrap();
    let mut echoed = [0u8; 5];
    long.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"still");
    long.shutdown(Shutdown::Write).unwrap();
    assert_eq!(long.read(&mut echoed).unwrap(), 0);
    let status = bridge.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", bridge.log());
    bridge.wait_for("all connections closed; exiting");
}

#[test]
fn a_changed_tunnel_restarts_with_its_new_options() {
    let queue = common::queue("config-changed");
    let serve = format!(
        "[serve.echo]\nqueue = \"{queue}\"\nto = \"{}\"\n",
        echo_service()
    );
    let forward =
        |port: u16| format!("[forward.x]\nlisten = \"127.0.0.1:{port}\"\nqueue = \"{queue}\"\n");
    let (before, after) = (common::free_port(), common::free_port());
    let file = ConfigFile::new(&format!("{serve}{}", forward(before)));
    let bridge = Bridge::start(&common::url(), &["run", "--config", file.path()]);
    bridge.wait_for("running 2 tunnel(s)");
    let data = common::random_bytes(100_000, 11);
    let old: SocketAddr = format!("127.0.0.1:{before}").parse().unwrap();
    assert_same("before", &data, &round_trip(old, data.clone()));

    file.write(&format!("{serve}{}", forward(after)));
    bridge.signal("HUP");
    bridge.wait_for("1 started, 1 stopped, 1 unchanged, 0 failed");
    let refused = TcpStream::connect(old).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    let new: SocketAddr = format!("127.0.0.1:{after}").parse().unwrap();
    assert_same("after", &data, &round_trip(new, data.clone()));
    stop(&bridge);
}

#[test]
fn a_bad_file_at_start_exits_2_naming_its_line() {
    let file = ConfigFile::new("# tunnels\n[serve.db]\nqueue = \"db\"\nto = \"127.0.0.1\"\n");
    let bridge = Bridge::start_logging(&common::url(), &["run", "--config", file.path()], "");
    let status = bridge.wait_exit();
    assert_eq!(status.code(), Some(2), "{}", bridge.log());
    let line = bridge.wait_for("amqp-bridge: ");
    assert!(
        line.starts_with(&format!(
            "amqp-bridge: {}:4: serve \"db\": --to: bad target address",
            file.path()
        )),
        "{line}"
    );
}

#[test]
fn a_bad_file_on_reload_keeps_the_tunnels_running() {
    let queue = common::queue("config-bad-reload");
    let file = ConfigFile::new(&format!(
        "[serve.echo]\nqueue = \"{queue}\"\nto = \"{}\"\n\n[forward.echo]\nlisten = \"127.0.0.1:0\"\nqueue = \"{queue}\"\n",
        echo_service()
    ));
    let bridge = Bridge::start(&common::url(), &["run", "--config", file.path()]);
    bridge.wait_for("running 2 tunnel(s)");
    let port = forward_port(&bridge, &queue);

    file.write(&format!(
        "[serve.echo]\nqueue = \"{queue}\"\nto = \"nowhere\"\n"
    ));
    bridge.signal("HUP");
    let line = bridge.wait_for("not reloaded");
    assert!(
        line.contains(&format!("{}:3: serve \"echo\": --to: ", file.path())),
        "{line}"
    );
    file.write("[serve.echo\n");
    bridge.signal("HUP");
    let line = bridge.wait_for("not reloaded");
    assert!(line.contains(&format!("{}:1: ", file.path())), "{line}");

    let data = common::random_bytes(1 << 20, 7);
    assert_same("after bad reloads", &data, &round_trip(port, data.clone()));
    assert_eq!(
        count_lines(&bridge, "stopped accepting"),
        0,
        "{}",
        bridge.log()
    );
    stop(&bridge);
}

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: SocketAddr) -> String {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of the series `series` (name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until every series in `expected` has its value.
fn assert_metrics(endpoint: SocketAddr, expected: &[(String, f64)]) {
    common::eventually(BOUND, "the metrics match the traffic", || {
        let text = scrape(endpoint);
        for (series, want) in expected {
            let got = value(&text, series);
            if got != Some(*want) {
                return Err(format!("{series}: {got:?}, not {want}\n{text}"));
            }
        }
        Ok(())
    });
}

#[test]
fn metrics_match_the_connections_and_bytes_sent() {
    let (queue, nowhere) = (
        common::queue("config-metrics"),
        common::queue("config-none"),
    );
    let file = ConfigFile::new(&format!(
        r#"
[serve.s]
queue = "{queue}"
to = "{}"

[forward.f]
listen = "127.0.0.1:0"
queue = "{queue}"

[forward.nowhere]
listen = "127.0.0.1:0"
queue = "{nowhere}"
"#,
        echo_service()
    ));
    let bridge = Bridge::start(
        &common::url(),
        &["run", "--config", file.path(), "--metrics", "127.0.0.1:0"],
    );
    bridge.wait_for("running 3 tunnel(s)");
    let endpoint = address_in(
        &line_with(&bridge, "metrics on http://")
            .replace("http://", "")
            .replace("/metrics", ""),
    );
    let port = forward_port(&bridge, &queue);
    let s = "kind=\"serve\",tunnel=\"s\"";
    let f = "kind=\"forward\",tunnel=\"f\"";

    // During a transfer: one connection open on each side, and the bytes
    // so far counted.
    let first = common::random_bytes(300_000, 8);
    let mut client = TcpStream::connect(port).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    client.write_all(&first).unwrap();
    let mut back = vec![0; first.len()];
    client.read_exact(&mut back).unwrap();
    let sent = first.len() as f64;
    assert_metrics(
        endpoint,
        &[
            (format!("amqp_bridge_open_connections{{{f}}}"), 1.0),
            (format!("amqp_bridge_open_connections{{{s}}}"), 1.0),
            (
                format!("amqp_bridge_bytes_total{{{f},direction=\"to_broker\"}}"),
                sent,
            ),
            (
                format!("amqp_bridge_bytes_total{{{f},direction=\"from_broker\"}}"),
                sent,
            ),
            (
                format!("amqp_bridge_bytes_total{{{s},direction=\"from_broker\"}}"),
                sent,
            ),
            (
                format!("amqp_bridge_bytes_total{{{s},direction=\"to_broker\"}}"),
                sent,
            ),
        ],
    );

    // After it: closed, every byte counted, one connection and one
    // handshake each.
    let second = common::random_bytes(200_000, 9);
    client.write_all(&second).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    back.clear();
    client.read_to_end(&mut back).unwrap();
    assert_same("echoed", &second, &back);
    let total = (first.len() + second.len()) as f64;
    let mut expected = Vec::new();
    for tunnel in [s, f] {
        expected.extend([
            (format!("amqp_bridge_open_connections{{{tunnel}}}"), 0.0),
            (format!("amqp_bridge_connections_total{{{tunnel}}}"), 1.0),
            (
                format!("amqp_bridge_bytes_total{{{tunnel},direction=\"to_broker\"}}"),
                total,
            ),
            (
                format!("amqp_bridge_bytes_total{{{tunnel},direction=\"from_broker\"}}"),
                total,
            ),
            (
                format!("amqp_bridge_handshake_seconds_count{{{tunnel}}}"),
                1.0,
            ),
            (
                format!("amqp_bridge_broker_reconnects_total{{{tunnel}}}"),
                0.0,
            ),
        ]);
    }

    // A client of a queue nobody serves is refused, and counted so.
    let nowhere_port = forward_port(&bridge, &nowhere);
    let mut refused = TcpStream::connect(nowhere_port).unwrap();
    refused.set_read_timeout(Some(BOUND)).unwrap();
    let mut byte = [0u8; 1];
    let err = refused.read(&mut byte).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    expected.push((
        "amqp_bridge_refused_connections_total{kind=\"forward\",tunnel=\"nowhere\",reason=\"connection_refused\"}"
            .to_string(),
        1.0,
    ));
    assert_metrics(endpoint, &expected);
    let text = scrape(endpoint);
    assert!(
        !text.contains("amqp_bridge_failed_connections_total{"),
        "nothing failed:\n{text}"
    );
    stop(&bridge);
}

#[test]
fn a_single_tunnel_command_serves_metrics_too() {
    let queue = common::queue("config-single");
    let bridge = Bridge::start(
        &common::url(),
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            &echo_service().to_string(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    bridge.wait_for("serving queue");
    let endpoint = address_in(
        &line_with(&bridge, "metrics on http://")
            .replace("http://", "")
            .replace("/metrics", ""),
    );
    let text = scrape(endpoint);
    let series = format!("amqp_bridge_connections_total{{kind=\"serve\",tunnel=\"{queue}\"}}");
    assert_eq!(value(&text, &series), Some(0.0), "{text}");
    stop(&bridge);
}

#[test]
fn completions_for_bash_name_the_subcommands() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let script = String::from_utf8(output.stdout).unwrap();
    assert!(!script.is_empty());
    for subcommand in [
        "serve",
        "forward",
        "connect",
        "http",
        "run",
        "completions",
        "--config",
    ] {
        assert!(script.contains(subcommand), "no {subcommand} in:\n{script}");
    }
}

/// `amqp-bridge keygen ARGS` in `dir`; its standard output.
fn keygen(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .arg("keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_config_file_takes_the_options_of_every_kind_socks_allow_lists_and_keys_too() {
    let dir = std::env::temp_dir().join(format!("bridge-config-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    keygen(&dir, &["server.key"]);
    let client_line = keygen(&dir, &["client.key"]);
    std::fs::write(dir.join("clients"), client_line).unwrap();
    let web = harness::http_service();
    let queue = common::queue("config-socks");
    let d = dir.display();
    let file = ConfigFile::new(&format!(
        r#"
[serve.lan]
queue = "{queue}"
allow = ["127.0.0.1:{port}"]
key = "{d}/server.key"
authorized_keys = "{d}/clients"

[socks.proxy]
listen = "127.0.0.1:0"
queue = "{queue}"
key = "{d}/client.key"
peer_key = "{d}/server.key.pub"
"#,
        port = web.port()
    ));
    let bridge = Bridge::start(&common::url(), &["run", "--config", file.path()]);
    bridge.wait_for("running 2 tunnel(s)");
    let proxy = address_in(&line_with(&bridge, "SOCKS5 proxy on"));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--socks5-hostname"])
        .arg(proxy.to_string())
        .arg(format!("http://{web}/configured"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "you asked for GET /configured HTTP/1.1"
    );
    stop(&bridge);
    let _ = std::fs::remove_dir_all(&dir);
}
