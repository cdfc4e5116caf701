//! End-to-end tests of `amqp-bridge` run as a service (issue 21): signals
//! during transfers, key files changed while it runs, metrics across
//! reloads, a broker that is down at start, readiness notification,
//! shell completion, password files, and what a client without keys is
//! told by a serve with keys. The binary runs as a child process against
//! the real broker (and a RabbitMQ node of the test's own), with real TCP
//! clients and services.

mod common;
#[path = "bridge/harness.rs"]
mod harness;

use common::node::TestNode;
use harness::{BOUND, Bridge, address_in, assert_same, echo_service, round_trip};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file of its own for one test, removed at the end.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}-{name}", uuid::Uuid::new_v4()));
        let file = TempFile(path);
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

impl Drop for TempFile {
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

fn stop(bridge: &Bridge) {
    bridge.signal("TERM");
    let status = bridge.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", bridge.log());
}

/// A connection through the bridge with half of `data` sent and echoed
/// back; [`finish`] sends the rest and checks all of it came back.
struct HalfDone {
    tcp: TcpStream,
    back: Vec<u8>,
}

fn start_transfer(mut tcp: TcpStream, data: &[u8], prefix: &[u8]) -> HalfDone {
    tcp.set_read_timeout(Some(BOUND)).unwrap();
    tcp.write_all(prefix).unwrap();
    tcp.write_all(&data[..data.len() / 2]).unwrap();
    let mut back = vec![0; prefix.len() + data.len() / 2];
    tcp.read_exact(&mut back).unwrap();
    HalfDone { tcp, back }
}

fn finish(what: &str, mut half: HalfDone, data: &[u8], prefix: &[u8]) {
    let writer = {
        let mut tcp = half.tcp.try_clone().unwrap();
        let rest = data[data.len() / 2..].to_vec();
        std::thread::spawn(move || {
            tcp.write_all(&rest).unwrap();
            tcp.shutdown(Shutdown::Write).unwrap();
        })
    };
    // A clean end of data comes only after every byte.
    half.tcp.read_to_end(&mut half.back).unwrap();
    writer.join().unwrap();
    let mut sent = prefix.to_vec();
    sent.extend_from_slice(data);
    assert_same(what, &sent, &half.back);
}

/// A SOCKS5 CONNECT to `target` through the proxy at `proxy`.
fn socks_connect(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy).unwrap();
    tcp.set_read_timeout(Some(BOUND)).unwrap();
    tcp.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 0]);
    let SocketAddr::V4(v4) = target else {
        panic!("IPv4 target")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&v4.ip().octets());
    request.extend_from_slice(&v4.port().to_be_bytes());
    tcp.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    tcp.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS reply {}", reply[1]);
    tcp
}

#[test]
fn sighup_reloads_every_long_running_subcommand_and_transfers_go_on() {
    let url = common::url();
    let echo = echo_service();
    let (fixed, chosen) = (common::queue("hup-fixed"), common::queue("hup-chosen"));
    let serve = Bridge::start(
        &url,
        &["serve", "--queue", &fixed, "--to", &echo.to_string()],
    );
    let allow = format!("127.0.0.1:{}", echo.port());
    let serve_allow = Bridge::start(&url, &["serve", "--queue", &chosen, "--allow", &allow]);
    serve.wait_for("serving queue");
    serve_allow.wait_for("serving queue");
    let forward = Bridge::start(
        &url,
        &["forward", "--listen", "127.0.0.1:0", "--queue", &fixed],
    );
    let http = Bridge::start(&url, &["http", "--listen", "127.0.0.1:0"]);
    let socks = Bridge::start(
        &url,
        &["socks", "--listen", "127.0.0.1:0", "--queue", &chosen],
    );
    let forward_port = address_in(&forward.wait_for("forwarding"));
    let http_port = address_in(&http.wait_for("front door on"));
    let socks_port = address_in(&socks.wait_for("SOCKS5 proxy on"));

    // Three transfers, each half done, through all five processes.
    let data = common::random_bytes(4 << 20, 21);
    let head = format!("POST /up HTTP/1.1\r\nX-AMQP-Server-Queue: {fixed}\r\n\r\n").into_bytes();
    let via_forward = start_transfer(TcpStream::connect(forward_port).unwrap(), &data, b"");
    let via_http = start_transfer(TcpStream::connect(http_port).unwrap(), &data, &head);
    let via_socks = start_transfer(socks_connect(socks_port, echo), &data, b"");

    // A closing terminal sends SIGHUP: every one of them reloads.
    let all = [&serve, &serve_allow, &forward, &http, &socks];
    for bridge in all {
        bridge.signal("HUP");
    }
    for bridge in all {
        bridge.wait_for("SIGHUP: tunnel ");
        assert!(bridge.is_running(), "ended on SIGHUP:\n{}", bridge.log());
    }

    // Nothing was cut: every byte comes back, then the end of data.
    finish("through forward", via_forward, &data, b"");
    finish("through http", via_http, &data, &head);
    finish("through socks", via_socks, &data, b"");
    // And new connections still work.
    let again = common::random_bytes(100_000, 22);
    assert_same("after", &again, &round_trip(forward_port, again.clone()));
    for bridge in all {
        stop(bridge);
    }
}

#[test]
fn sigquit_resets_open_connections_at_once_and_sigusr1_is_ignored() {
    let url = common::url();
    let echo = echo_service();
    let queue = common::queue("quit");
    let serve = Bridge::start(
        &url,
        &["serve", "--queue", &queue, "--to", &echo.to_string()],
    );
    serve.wait_for("serving queue");
    let forward = Bridge::start(
        &url,
        &[
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            &queue,
            "--grace",
            "60",
        ],
    );
    let port = address_in(&forward.wait_for("forwarding"));
    let data = common::random_bytes(1 << 20, 23);
    let mut half = start_transfer(TcpStream::connect(port).unwrap(), &data, b"");

    forward.signal("USR1");
    forward.wait_for("SIGUSR1: ignored");
    half.tcp.write_all(b"still").unwrap();
    let mut echoed = [0u8; 5];
    half.tcp.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"still");

    // SIGQUIT does not wait for the 60 s of grace: the client is reset,
    // never told its transfer ended.
    forward.signal("QUIT");
    let err = half.tcp.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let status = forward.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", forward.log());
    forward.wait_for("resetting 1 open connection(s) now");
    stop(&serve);
}

#[test]
fn a_killed_forward_leaves_its_client_reset_not_ended() {
    let url = common::url();
    let echo = echo_service();
    let queue = common::queue("killed");
    let serve = Bridge::start(
        &url,
        &["serve", "--queue", &queue, "--to", &echo.to_string()],
    );
    serve.wait_for("serving queue");
    let forward = Bridge::start(
        &url,
        &["forward", "--listen", "127.0.0.1:0", "--queue", &queue],
    );
    let port = address_in(&forward.wait_for("forwarding"));
    let data = common::random_bytes(1 << 20, 24);
    let mut half = start_transfer(TcpStream::connect(port).unwrap(), &data, b"");
    // A signal nothing can handle: the kernel closes the sockets, and
    // they were made abortive until their transfer ends.
    forward.signal("KILL");
    let err = half.tcp.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    stop(&serve);
}

/// `amqp-bridge keygen ARGS` in `dir`; its standard output.
fn keygen(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .arg("keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn key_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bridge-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

#[test]
fn a_revoked_key_is_refused_at_once_and_its_open_connection_reset_without_a_restart() {
    let url = common::url();
    let dir = key_dir("revoke");
    keygen(&dir, &["server.key"]);
    let alice = keygen(&dir, &["alice.key"]);
    let bob = keygen(&dir, &["bob.key"]);
    let authorized = dir.join("authorized");
    std::fs::write(&authorized, format!("{alice}{bob}")).unwrap();
    let d = |file: &str| dir.join(file).to_str().unwrap().to_string();
    let queue = common::queue("revoke");
    let echo = echo_service();
    let serve = Bridge::start(
        &url,
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            &echo.to_string(),
            "--key",
            &d("server.key"),
            "--authorized-keys",
            &d("authorized"),
        ],
    );
    serve.wait_for("serving queue");
    let forward_as = |who: &str| {
        let bridge = Bridge::start(
            &url,
            &[
                "forward",
                "--listen",
                "127.0.0.1:0",
                "--queue",
                &queue,
                "--key",
                &d(&format!("{who}.key")),
                "--peer-key",
                &d("server.key.pub"),
            ],
        );
        let port = address_in(&bridge.wait_for("forwarding"));
        (bridge, port)
    };
    let (alice_bridge, alice_port) = forward_as("alice");
    let (bob_bridge, bob_port) = forward_as("bob");
    let data = common::random_bytes(200_000, 25);
    let mut open = start_transfer(TcpStream::connect(alice_port).unwrap(), &data, b"");

    // Alice's line goes; no signal, no restart.
    std::fs::write(&authorized, &bob).unwrap();
    // Her open connection is reset (within the second the serve looks at
    // its files), never ended cleanly...
    let err = open.tcp.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    // ... and her next one is refused.
    let mut refused = TcpStream::connect(alice_port).unwrap();
    refused.set_read_timeout(Some(BOUND)).unwrap();
    let _ = refused.write_all(b"let me in");
    let err = refused.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    serve.wait_for("its key is no longer authorized");
    // Bob still gets through.
    assert_same("bob", &data, &round_trip(bob_port, data.clone()));

    // SIGHUP reads them again and says what it found.
    serve.signal("HUP");
    let line = serve.wait_for("SIGHUP: tunnel serve");
    assert!(
        line.contains("key files read again: 1 authorized key(s)"),
        "{line}"
    );
    // A file broken mid-edit lets nobody new in, and is said once.
    std::fs::write(&authorized, "amqp-stream-x25519 not-hex\n").unwrap();
    let mut broken = TcpStream::connect(bob_port).unwrap();
    broken.set_read_timeout(Some(BOUND)).unwrap();
    let _ = broken.write_all(b"hello");
    let err = broken.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    serve.wait_for("the key files changed and do not read");
    // Mended: Bob again.
    std::fs::write(&authorized, &bob).unwrap();
    assert_same("mended", &data, &round_trip(bob_port, data.clone()));
    for bridge in [&alice_bridge, &bob_bridge, &serve] {
        stop(bridge);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_keyless_connect_at_a_keyed_serve_says_a_key_is_required_on_one_line() {
    let url = common::url();
    let dir = key_dir("keyless");
    keygen(&dir, &["--psk", "shared.psk"]);
    let queue = common::queue("keyless");
    let psk = dir.join("shared.psk");
    let serve = Bridge::start(
        &url,
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            &echo_service().to_string(),
            "--psk-file",
            psk.to_str().unwrap(),
        ],
    );
    serve.wait_for("serving queue");
    // As ssh runs its ProxyCommand: no RUST_LOG, standard input open.
    let connect = Bridge::start_logging(&url, &["connect", "--queue", &queue], "");
    let status = connect.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", connect.log());
    // Its standard error is read on a thread of the harness: wait for it.
    connect.wait_for("this serve requires a key (--key/--psk-file)");
    let log = connect.log();
    assert_eq!(log.lines().count(), 1, "{log}");
    // A keyless forward logs it at warn.
    let forward = Bridge::start(
        &url,
        &["forward", "--listen", "127.0.0.1:0", "--queue", &queue],
    );
    let port = address_in(&forward.wait_for("forwarding"));
    let mut client = TcpStream::connect(port).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let err = client.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let line = forward.wait_for("this serve requires a key");
    assert!(line.contains(" WARN "), "{line}");
    stop(&forward);
    stop(&serve);
    std::fs::remove_dir_all(&dir).unwrap();
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
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    check_with_promtool(&body);
    body
}

/// `promtool check metrics` on `text`, where Debian's prometheus package
/// is installed (scripts/ensure-test-tools.sh installs it).
fn check_with_promtool(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool is not installed: the exposition is not checked by it");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Lint warnings (exit 3) are not format errors; anything else is.
    let report =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() || out.status.code() == Some(3) && !report.contains("error"),
        "promtool: {report}\n{text}"
    );
}

/// Every sample of `series` (name and labels) in `text`.
fn samples(text: &str, series: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .collect()
}

/// The one sample of `series`: there must be exactly one.
fn one(text: &str, series: &str) -> f64 {
    let found = samples(text, series);
    assert_eq!(found.len(), 1, "{series}: {found:?} in\n{text}");
    found[0]
}

#[test]
fn a_changed_tunnel_keeps_one_series_whose_counters_never_go_back() {
    let queue = common::queue("metrics-reload");
    let echo = echo_service();
    let serve = format!("[serve.s]\nqueue = \"{queue}\"\nto = \"{echo}\"\n");
    let port = common::free_port();
    let extra = |grace: u32| {
        format!(
            "[forward.extra]\nlisten = \"127.0.0.1:{port}\"\nqueue = \"{queue}\"\ngrace = {grace}\n"
        )
    };
    let file = TempFile::new("metrics.toml", &format!("{serve}{}", extra(10)));
    let bridge = Bridge::start(
        &common::url(),
        &["run", "--config", file.path(), "--metrics", "127.0.0.1:0"],
    );
    bridge.wait_for("running 2 tunnel(s)");
    let endpoint = address_in(
        &line_with(&bridge, "metrics on http://")
            .replace("http://", "")
            .replace("/metrics", ""),
    );
    let labels = "kind=\"forward\",tunnel=\"extra\"";
    let open = format!("amqp_bridge_open_connections{{{labels}}}");
    let total = format!("amqp_bridge_connections_total{{{labels}}}");
    let sent = format!("amqp_bridge_bytes_total{{{labels},direction=\"to_broker\"}}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let data = common::random_bytes(300_000, 26);
    let old = start_transfer(TcpStream::connect(addr).unwrap(), &data, b"");
    let before = scrape(endpoint);
    assert_eq!(one(&before, &open), 1.0);
    assert_eq!(one(&before, &total), 1.0);

    // The tunnel changes (its grace): a new instance takes its port, the
    // old one's connection goes on.
    file.write(&format!("{serve}{}", extra(20)));
    bridge.signal("HUP");
    bridge.wait_for("1 started, 1 stopped, 1 unchanged, 0 failed");
    let during = scrape(endpoint);
    assert_eq!(one(&during, &open), 1.0, "the old instance's connection");
    let new = start_transfer(TcpStream::connect(addr).unwrap(), &data, b"");
    common::eventually(BOUND, "both instances' connections counted", || {
        let text = scrape(endpoint);
        match (one(&text, &open), one(&text, &total)) {
            (2.0, 2.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let sent_during = one(&scrape(endpoint), &sent);

    // The old instance ends with its last connection: nothing goes back.
    finish("old", old, &data, b"");
    bridge.wait_for("tunnel forward \"extra\" removed: its last connection has ended");
    let after = scrape(endpoint);
    assert_eq!(one(&after, &open), 1.0);
    assert_eq!(one(&after, &total), 2.0);
    assert!(one(&after, &sent) >= sent_during, "{after}");
    finish("new", new, &data, b"");
    // Counted closed once its thread has let go (after the client's end).
    common::eventually(BOUND, "the new instance's connection closed", || {
        let end = scrape(endpoint);
        match (one(&end, &open), one(&end, &sent)) {
            (0.0, bytes) if bytes == 2.0 * data.len() as f64 => Ok(()),
            other => Err(format!("{other:?}\n{end}")),
        }
    });
    stop(&bridge);
}

#[test]
fn run_serves_the_tunnels_it_can_and_the_others_once_their_broker_appears() {
    let url = common::url();
    let echo = echo_service();
    let (up, later) = (common::queue("up"), common::queue("later"));
    let node_port = common::free_port();
    let node_url = format!("amqp://guest:guest@127.0.0.1:{node_port}/");
    let file = TempFile::new(
        "down.toml",
        &format!(
            "[serve.up]\nqueue = \"{up}\"\nto = \"{echo}\"\n\n\
             [forward.up]\nlisten = \"127.0.0.1:0\"\nqueue = \"{up}\"\n\n\
             [serve.later]\nurl = \"{node_url}\"\nqueue = \"{later}\"\nto = \"{echo}\"\n"
        ),
    );
    let bridge = Bridge::start(&url, &["run", "--config", file.path()]);
    bridge.wait_for("running 3 tunnel(s)");
    line_with(&bridge, "cannot reach the broker");
    // The others serve meanwhile.
    let port = address_in(&line_with(&bridge, &format!("to queue {up:?}")));
    let data = common::random_bytes(100_000, 27);
    assert_same("up", &data, &round_trip(port, data.clone()));

    // Its broker appears: it serves, without a signal or a restart.
    let node = TestNode::start_on(node_port, "");
    line_with(&bridge, &format!("serving queue {later:?}"));
    let connector = amqp_stream::Connector::open(&node.url("")).unwrap();
    let mut stream = connector.connect(&later).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream.write_all(b"here at last").unwrap();
    let mut got = [0u8; 12];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"here at last");
    drop(stream);
    drop(connector);
    stop(&bridge);
}

#[test]
fn a_standalone_tunnel_waits_for_its_broker_unless_told_to_fail_fast() {
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/", common::free_port());
    let queue = common::queue("nowhere");
    let forward = Bridge::start(
        &nowhere,
        &["forward", "--listen", "127.0.0.1:0", "--queue", &queue],
    );
    forward.wait_for("cannot reach the broker");
    forward.wait_for("cannot reach the broker yet");
    assert!(forward.is_running(), "{}", forward.log());
    stop(&forward);

    // A serve waiting for its broker stops at once when told to.
    let serve = Bridge::start(
        &nowhere,
        &["serve", "--queue", &queue, "--to", "127.0.0.1:1"],
    );
    serve.wait_for("cannot reach the broker yet");
    stop(&serve);

    let fast = Bridge::start(
        &nowhere,
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            "127.0.0.1:1",
            "--fail-fast",
        ],
    );
    assert_eq!(fast.wait_exit().code(), Some(3), "{}", fast.log());
}

#[test]
fn systemd_hears_when_the_tunnel_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let socket_path = std::env::temp_dir().join(format!("notify-{}", uuid::Uuid::new_v4()));
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(BOUND)).unwrap();
    let queue = common::queue("notify");
    let serve = Bridge::start_with_env(
        &common::url(),
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            &echo_service().to_string(),
        ],
        "info",
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("up"), "{ready}");
    // Ready means served: a client gets through at once.
    assert!(serve.log().contains("serving queue"), "{}", serve.log());
    serve.signal("HUP");
    let n = socket.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("RELOADING=1"));
    let n = socket.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    serve.signal("TERM");
    let n = socket.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(serve.wait_exit().success());
    let _ = std::fs::remove_file(&socket_path);
}

#[test]
fn the_password_can_stay_out_of_the_command_line_and_the_url_needs_no_vhost() {
    let password = TempFile::new("password", "guest\n");
    let echo = echo_service();
    let queue = common::queue("password-file");
    // amqp://USER@HOST:PORT without a path: the default virtual host,
    // nothing for ssh's ProxyCommand to mangle.
    let url = "amqp://guest@127.0.0.1:5672";
    let serve = Bridge::start(
        url,
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            &echo.to_string(),
            "--password-file",
            password.path(),
        ],
    );
    serve.wait_for("serving queue");
    assert!(!serve.log().contains("warning"), "{}", serve.log());
    let forward = Bridge::start_with_env(
        url,
        &["forward", "--listen", "127.0.0.1:0", "--queue", &queue],
        "info",
        &[("AMQP_PASSWORD_FILE", password.path())],
    );
    let port = address_in(&forward.wait_for("forwarding"));
    let data = common::random_bytes(50_000, 28);
    assert_same("password file", &data, &round_trip(port, data.clone()));

    // A password on the command line works, and is warned about.
    let exposed = Bridge::start(
        "",
        &[
            "--url",
            "amqp://guest:guest@127.0.0.1:5672",
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            &queue,
        ],
    );
    let line = exposed.wait_for("warning");
    assert!(line.contains("--password-file"), "{line}");
    assert!(!line.contains("guest:guest"), "{line}");
    exposed.wait_for("forwarding");
    for bridge in [&exposed, &forward, &serve] {
        stop(bridge);
    }
}

/// What bash's completion offers for the command line `words` (the
/// cursor after the last one), with the script `completions bash` writes.
fn complete_in_bash(words: &[&str]) -> Vec<String> {
    let script = TempFile::new("complete.bash", &completion_script("bash"));
    let words_array: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source {script}\n\
         COMP_WORDS=({words})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _amqp__bridge amqp-bridge \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = script.path(),
        words = words_array.join(" "),
        cword = words.len() - 1,
    );
    let out = Command::new("bash")
        .args(["-c", &program])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn completion_script(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_completes_the_options_of_a_subcommand() {
    let offered = complete_in_bash(&["amqp-bridge", "serve", "--"]);
    for option in [
        "--queue",
        "--to",
        "--allow",
        "--authorized-keys",
        "--fail-fast",
    ] {
        assert!(offered.iter().any(|o| o == option), "{option}: {offered:?}");
    }
    let offered = complete_in_bash(&["amqp-bridge", "forward", "--li"]);
    assert_eq!(offered, ["--listen"]);
    let offered = complete_in_bash(&["amqp-bridge", "se"]);
    assert_eq!(offered, ["serve"]);
    // keygen never touches the broker: no --url there.
    let offered = complete_in_bash(&["amqp-bridge", "keygen", "--"]);
    assert!(!offered.iter().any(|o| o == "--url"), "{offered:?}");
}

#[test]
fn fish_and_zsh_take_their_scripts() {
    // fish completes a command line on its own (complete -C).
    if Command::new("fish").arg("--version").output().is_ok() {
        let script = TempFile::new("complete.fish", &completion_script("fish"));
        let out = Command::new("fish")
            .args([
                "-c",
                &format!(
                    "source {}; complete -C 'amqp-bridge serve --qu'",
                    script.path()
                ),
            ])
            .output()
            .unwrap();
        let offered = String::from_utf8_lossy(&out.stdout);
        assert!(
            offered.lines().any(|l| l.starts_with("--queue")),
            "{offered}"
        );
    } else {
        eprintln!("fish is not installed: its completion is not checked");
    }
    // zsh: the script loads into the completion system and is the one
    // registered for amqp-bridge (driving zsh's line editor needs a
    // terminal).
    if Command::new("zsh").arg("--version").output().is_ok() {
        let dir = key_dir("zsh-fpath");
        std::fs::write(dir.join("_amqp-bridge"), completion_script("zsh")).unwrap();
        let out = Command::new("zsh")
            .args([
                "-f",
                "-c",
                &format!(
                    "fpath=({} $fpath); autoload -U compinit; compinit -u -D; \
                     print -r -- $_comps[amqp-bridge]; autoload +X _amqp-bridge && \
                     print -r -- ok",
                    dir.display()
                ),
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("_amqp-bridge") && said.contains("ok"),
            "{out:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    } else {
        eprintln!("zsh is not installed: its completion is not checked");
    }
}

#[test]
fn mistakes_on_the_command_line_and_in_the_file_get_one_line() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["serve", "--queue", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--to") && err.contains("--allow"), "{err}");
    assert!(err.contains("amqp-bridge serve --help"), "{err}");
    let out = run(&["forward", "--lisen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");

    let empty = TempFile::new("empty.toml", "# nothing yet\n");
    let out = run(&["run", "--config", empty.path()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no tunnel in it"), "{err}");

    let dir = key_dir("pub-as-key");
    keygen(&dir, &["k"]);
    let public = dir.join("k.pub");
    let out = run(&[
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--queue",
        "q",
        "--key",
        public.to_str().unwrap(),
        "--peer-key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this is a public key"), "{err}");
    assert!(!err.contains("chmod"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    let help = String::from_utf8_lossy(&run(&["keygen", "--help"]).stdout).to_string();
    assert!(!help.contains("--url"), "{help}");
}

#[test]
fn keygen_comments_its_key_user_at_host_without_user_in_the_environment() {
    let dir = key_dir("keygen-comment");
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .args(["keygen", "k"])
        .current_dir(&dir)
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    let comment = line.split_whitespace().nth(2).unwrap_or_default();
    let (user, host) = comment.split_once('@').unwrap_or_default();
    assert!(!user.is_empty() && !host.is_empty(), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_reads_the_key_files_of_unchanged_tunnels_and_a_reload_with_a_bad_one_changes_nothing() {
    let dir = key_dir("run-keys");
    keygen(&dir, &["--psk", "shared.psk"]);
    let psk = dir.join("shared.psk");
    let queue = common::queue("run-keys");
    let tables = format!(
        "[serve.db]\nqueue = \"{queue}\"\nto = \"{echo}\"\npsk_file = \"{psk}\"\n\n\
         [forward.db]\nlisten = \"127.0.0.1:0\"\nqueue = \"{queue}\"\npsk_file = \"{psk}\"\n",
        echo = echo_service(),
        psk = psk.display()
    );
    let file = TempFile::new("keys.toml", &tables);
    let bridge = Bridge::start(&common::url(), &["run", "--config", file.path()]);
    bridge.wait_for("running 2 tunnel(s)");
    let port = address_in(&line_with(&bridge, &format!("to queue {queue:?}")));
    let data = common::random_bytes(100_000, 29);
    assert_same("before", &data, &round_trip(port, data.clone()));

    bridge.signal("HUP");
    let line = bridge.wait_for("SIGHUP: tunnel serve \"db\" reloaded");
    assert!(
        line.contains("key files read again: a pre-shared key"),
        "{line}"
    );
    bridge.wait_for("0 started, 0 stopped, 2 unchanged, 0 failed");

    // A tunnel added with a key file that is not there: nothing changes.
    file.write(&format!(
        "{tables}\n[forward.new]\nlisten = \"127.0.0.1:0\"\nqueue = \"{queue}\"\n\
         psk_file = \"{}\"\n",
        dir.join("missing.psk").display()
    ));
    bridge.signal("HUP");
    let line = bridge.wait_for("not reloaded");
    assert!(
        line.contains("forward \"new\"") && line.contains("missing.psk"),
        "{line}"
    );
    assert_same("after", &data, &round_trip(port, data.clone()));
    stop(&bridge);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The metrics endpoint a bridge logged.
fn metrics_endpoint(bridge: &Bridge) -> SocketAddr {
    address_in(
        &line_with(bridge, "metrics on http://")
            .replace("http://", "")
            .replace("/metrics", ""),
    )
}

#[test]
fn socks_and_serve_count_a_refused_target_under_the_same_reason() {
    let url = common::url();
    let queue = common::queue("reasons");
    let echo = echo_service();
    let allow = format!("127.0.0.1:{}", echo.port());
    let serve = Bridge::start(
        &url,
        &[
            "serve",
            "--queue",
            &queue,
            "--allow",
            &allow,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    serve.wait_for("serving queue");
    let socks = Bridge::start(
        &url,
        &[
            "socks",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            &queue,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let proxy = address_in(&socks.wait_for("SOCKS5 proxy on"));
    // A target outside the list: SOCKS reply 2.
    let mut tcp = TcpStream::connect(proxy).unwrap();
    tcp.set_read_timeout(Some(BOUND)).unwrap();
    tcp.write_all(&[5, 1, 0]).unwrap();
    tcp.read_exact(&mut [0u8; 2]).unwrap();
    tcp.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 1]).unwrap();
    let mut reply = [0u8; 10];
    tcp.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 2);
    for (bridge, kind) in [(&serve, "serve"), (&socks, "socks")] {
        let endpoint = metrics_endpoint(bridge);
        let series = format!(
            "amqp_bridge_refused_connections_total{{kind=\"{kind}\",tunnel=\"{queue}\",reason=\"not_allowed\"}}"
        );
        common::eventually(BOUND, &format!("{kind} counts the refusal"), || {
            let text = scrape(endpoint);
            match samples(&text, &series).as_slice() {
                [n] if *n == 1.0 => Ok(()),
                other => Err(format!("{other:?}\n{text}")),
            }
        });
    }
    stop(&socks);
    stop(&serve);
}
