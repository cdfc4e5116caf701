//! `amqp-bridge` with end-to-end keys, as child processes over real TCP
//! and the real broker: data intact with a key (16 MiB, 50 concurrent
//! clients); a client without a key, with a wrong key, or pinning
//! another server's key refused before `serve` connects its target; a
//! client with keys and a server without fails without sending the
//! target anything; only ciphertext on the wire to the broker; an
//! abortive end still a TCP reset.

mod common;
#[path = "bridge/harness.rs"]
mod harness;

use harness::{BOUND, Bridge, address_in, assert_same, warnings};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BRIDGE: &str = env!("CARGO_BIN_EXE_amqp-bridge");

/// A fresh directory for one test's key files.
fn key_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bridge-secure-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// `amqp-bridge keygen ARGS` in `dir`; its standard output.
fn keygen(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BRIDGE)
        .arg("keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Key files for a server and an accepted client, and a stranger's:
/// server.key(.pub), client.key(.pub), stranger.key(.pub), clients (the
/// authorized keys: the client's only), psk and other.psk.
fn keys() -> PathBuf {
    let dir = key_dir();
    keygen(&dir, &["server.key"]);
    let client_line = keygen(&dir, &["client.key", "--comment", "client@test"]);
    keygen(&dir, &["stranger.key"]);
    keygen(&dir, &["--psk", "psk"]);
    keygen(&dir, &["--psk", "other.psk"]);
    std::fs::write(dir.join("clients"), format!("# accepted\n{client_line}")).unwrap();
    dir
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// A TCP service that echoes each connection until its end, counting
/// the connections it accepted and the bytes it received.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

fn echo_service() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counting, counting_bytes) = (Arc::clone(&accepted), Arc::clone(&received));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            counting.fetch_add(1, Ordering::SeqCst);
            let received = Arc::clone(&counting_bytes);
            std::thread::spawn(move || {
                let mut reader = client.try_clone().unwrap();
                let mut writer = client;
                let mut buf = vec![0; 64 << 10];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => {
                            let _ = writer.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            received.fetch_add(n, Ordering::SeqCst);
                            if writer.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    Echo {
        addr,
        accepted,
        received,
    }
}

/// `serve` for a fresh queue in front of `target`, with `keys` options.
fn serve(url: &str, target: SocketAddr, keys: &[String]) -> (Bridge, String) {
    let queue = common::queue("secure");
    let mut args = vec![
        "serve".to_string(),
        "--queue".into(),
        queue.clone(),
        "--to".into(),
        target.to_string(),
    ];
    args.extend(keys.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let bridge = Bridge::start(url, &args);
    bridge.wait_for("serving queue");
    (bridge, queue)
}

/// `forward` from a free port to `queue`, with `keys` options.
fn forward(url: &str, queue: &str, keys: &[String]) -> (Bridge, SocketAddr) {
    let mut args = vec![
        "forward".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--queue".into(),
        queue.to_string(),
    ];
    args.extend(keys.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let bridge = Bridge::start(url, &args);
    let line = bridge.wait_for("forwarding");
    (bridge, address_in(&line))
}

fn server_keys(dir: &Path) -> Vec<String> {
    vec![
        "--key".into(),
        path(dir, "server.key"),
        "--authorized-keys".into(),
        path(dir, "clients"),
    ]
}

fn client_keys(dir: &Path, key: &str) -> Vec<String> {
    vec![
        "--key".into(),
        path(dir, key),
        "--peer-key".into(),
        path(dir, "server.key.pub"),
    ]
}

/// Sends `data` through `port` to the echo service, half-closes, and
/// returns what came back.
fn echo_through(port: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
    let client = TcpStream::connect(port)?;
    client.set_read_timeout(Some(BOUND))?;
    let mut writer = client.try_clone()?;
    let sent = data.to_vec();
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut got = Vec::new();
    let end = (&client).read_to_end(&mut got);
    sender.join().unwrap()?;
    end.map(|_| got)
}

#[test]
fn with_keys_16_mib_and_50_concurrent_clients_arrive_intact() {
    let url = common::url();
    let dir = keys();
    let echo = echo_service();
    let (server, queue) = serve(&url, echo.addr, &server_keys(&dir));
    let (client, port) = forward(&url, &queue, &client_keys(&dir, "client.key"));

    let big = common::random_bytes(16 << 20, 1);
    assert_same("16 MiB", &big, &echo_through(port, &big).unwrap());

    let clients: Vec<_> = (0..50u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = common::random_bytes(100_000 + i as usize * 1000, 100 + i);
                let got = echo_through(port, &data).unwrap();
                assert_same(&format!("client {i}"), &data, &got);
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 51);
    assert_eq!(warnings(&server.log()), Vec::<&str>::new());
    assert_eq!(warnings(&client.log()), Vec::<&str>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pre_shared_key_carries_data_too_and_a_wrong_one_is_refused() {
    let url = common::url();
    let dir = keys();
    let echo = echo_service();
    let psk = |name: &str| vec!["--psk-file".to_string(), path(&dir, name)];
    let (server, queue) = serve(&url, echo.addr, &psk("psk"));
    let (_good, port) = forward(&url, &queue, &psk("psk"));
    let data = common::random_bytes(1 << 20, 2);
    assert_same("1 MiB", &data, &echo_through(port, &data).unwrap());
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);

    let (_bad, port) = forward(&url, &queue, &psk("other.psk"));
    let err = echo_through(port, b"let me in").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let line = server.wait_for(" refused: ");
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("pre-shared key"), "{line}");
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        1,
        "the target saw the refused client"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_a_key_or_with_a_wrong_one_the_target_never_sees_a_connection() {
    let url = common::url();
    let dir = keys();
    let echo = echo_service();
    let mut options = server_keys(&dir);
    options.extend(["--handshake-timeout".to_string(), "3".to_string()]);
    let (server, queue) = serve(&url, echo.addr, &options);
    let server_key_hex = std::fs::read_to_string(dir.join("server.key")).unwrap();
    let server_key_hex = server_key_hex
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap();

    // A client with a key the server does not list.
    let (stranger, port) = forward(&url, &queue, &client_keys(&dir, "stranger.key"));
    let err = echo_through(port, b"let me in").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    // The client's side says why.
    let line = stranger.wait_for("refused this end's key");
    assert!(line.contains(" WARN "), "{line}");
    let line = server.wait_for(" refused: ");
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("stream amqp-stream."),
        "no stream address: {line}"
    );
    assert!(line.contains("not among the authorized keys"), "{line}");

    // A client without keys: what it sends is no handshake.
    let (_plain, port) = forward(&url, &queue, &[]);
    let result = echo_through(port, b"SELECT secrets FROM everything;\n");
    assert!(
        !matches!(&result, Ok(got) if got.ends_with(b"everything;\n")),
        "a client without a key was answered: {result:?}"
    );
    let line = server.wait_for(" refused: ");
    assert!(line.contains("did not start a secure handshake"), "{line}");

    // A client that pins another server's key (or, the same, a server
    // that is not the one it pinned).
    let mut pinned_wrong = client_keys(&dir, "client.key");
    pinned_wrong[3] = path(&dir, "stranger.key.pub");
    let (_wrong_pin, port) = forward(&url, &queue, &pinned_wrong);
    let err = echo_through(port, b"let me in").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let line = server.wait_for(" refused: ");
    assert!(line.contains("public key"), "{line}");

    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        0,
        "the target saw a connection"
    );
    assert!(
        !server.log().contains(server_key_hex),
        "key material in the log"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_client_with_keys_sends_nothing_to_a_server_without() {
    let url = common::url();
    let dir = keys();
    let echo = echo_service();
    let (_server, queue) = serve(&url, echo.addr, &[]);
    let mut options = client_keys(&dir, "client.key");
    options.extend(["--handshake-timeout".to_string(), "1".to_string()]);
    let (client, port) = forward(&url, &queue, &options);
    let err = echo_through(port, b"for the target's eyes only").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let line = client.wait_for(" failed: ");
    assert!(line.contains("handshake"), "{line}");
    // The plain server connected its target, which got nothing.
    assert_eq!(echo.received.load(Ordering::SeqCst), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A TCP relay that records everything that goes through it.
fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recording = Arc::clone(&seen);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(broker) = TcpStream::connect(target) else {
                continue;
            };
            for (from, to) in [
                (client.try_clone().unwrap(), broker.try_clone().unwrap()),
                (broker, client),
            ] {
                let seen = Arc::clone(&recording);
                std::thread::spawn(move || copy_recording(from, to, &seen));
            }
        }
    });
    (addr, seen)
}

fn copy_recording(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<Vec<u8>>) {
    let mut buf = vec![0; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Carries `marker` (many times over) through a `forward` whose broker
/// connection is recorded: whether the recording holds it in clear.
fn marker_seen_on_the_wire(dir: &Path, keys: bool) -> bool {
    let url = common::url();
    let broker: amqp_stream::BrokerUrl = url.parse().unwrap();
    let broker_addr = std::net::ToSocketAddrs::to_socket_addrs(&(broker.host(), broker.port()))
        .unwrap()
        .next()
        .unwrap();
    let (relay, seen) = recording_relay(broker_addr);
    let relayed_url = url.replacen(
        &format!("{}:{}", broker.host(), broker.port()),
        &relay.to_string(),
        1,
    );
    assert_ne!(relayed_url, url, "the URL did not go through the relay");
    let echo = echo_service();
    let (server_options, client_options) = if keys {
        (server_keys(dir), client_keys(dir, "client.key"))
    } else {
        (Vec::new(), Vec::new())
    };
    let (_server, queue) = serve(&url, echo.addr, &server_options);
    let (_client, port) = forward(&relayed_url, &queue, &client_options);
    let marker = b"MARKER-the-broker-must-not-read-this-".repeat(1000);
    assert_same("marker", &marker, &echo_through(port, &marker).unwrap());
    let seen = seen.lock().unwrap();
    let needle = b"MARKER-the-broker-must-not-read-this-";
    assert!(
        seen.len() > marker.len(),
        "the relay saw only {} bytes",
        seen.len()
    );
    seen.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_broker_sees_only_ciphertext() {
    let dir = keys();
    // The recording works: without keys the marker is there to find.
    assert!(marker_seen_on_the_wire(&dir, false));
    assert!(
        !marker_seen_on_the_wire(&dir, true),
        "plaintext on the broker"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_abortive_end_is_still_a_reset_both_ways() {
    let url = common::url();
    let dir = keys();
    // Sends 4 MiB, then resets.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let _ = client.write_all(&vec![7u8; 4 << 20]);
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        }
    });
    let (_server, queue) = serve(&url, target, &server_keys(&dir));
    let (_client, port) = forward(&url, &queue, &client_keys(&dir, "client.key"));
    let mut client = TcpStream::connect(port).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = vec![0; 64 << 10];
    let mut received = 0;
    let err = loop {
        match client.read(&mut buf) {
            Ok(0) => panic!("a clean end of data after {received} bytes: the reset was lost"),
            Ok(n) => received += n,
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    // The other way: a client that resets mid-upload; the target must
    // see a reset, not an end of data.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let (ended_tx, ended) = crossbeam_channel::unbounded();
    let (arrived_tx, arrived) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        let (mut upload, _) = listener.accept().unwrap();
        upload.set_read_timeout(Some(BOUND)).unwrap();
        let mut buf = vec![0; 64 << 10];
        let mut received = 0;
        let end = loop {
            match upload.read(&mut buf) {
                Ok(0) => break Ok(received),
                Ok(n) => {
                    received += n;
                    let _ = arrived_tx.send(());
                }
                Err(err) => break Err(err.kind()),
            }
        };
        ended_tx.send(end).unwrap();
    });
    let (_server, queue) = serve(&url, target, &server_keys(&dir));
    let (_client, port) = forward(&url, &queue, &client_keys(&dir, "client.key"));
    let mut client = TcpStream::connect(port).unwrap();
    client.write_all(&vec![9u8; 1 << 20]).unwrap();
    // Mid-upload: the target is connected and has data.
    arrived.recv_timeout(BOUND).unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let end = ended.recv_timeout(BOUND).unwrap();
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "the target saw {end:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keygen_never_replaces_a_file_and_bad_key_files_are_bad_arguments() {
    let dir = key_dir();
    let line = keygen(&dir, &["id", "--comment", "me@here"]);
    assert!(line.starts_with("amqp-stream-x25519 "), "{line}");
    assert!(line.trim_end().ends_with(" me@here"), "{line}");
    assert_eq!(std::fs::read_to_string(dir.join("id.pub")).unwrap(), line);
    let private = std::fs::read_to_string(dir.join("id")).unwrap();
    let out = Command::new(BRIDGE)
        .args(["keygen", "id"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(dir.join("id")).unwrap(), private);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A public key where the private key goes: exit 2, the file named,
    // nothing of the key printed.
    let out = Command::new(BRIDGE)
        .args(["forward", "--listen", "127.0.0.1:0", "--queue", "q"])
        .args([
            "--key",
            &path(&dir, "id.pub"),
            "--peer-key",
            &path(&dir, "id.pub"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("id.pub"), "{stderr}");
    assert!(
        !stderr.contains(&line.split(' ').nth(1).unwrap()[..16]),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn connect_and_http_take_the_client_keys_too() {
    let url = common::url();
    let dir = keys();
    let echo = echo_service();
    let (_server, queue) = serve(&url, echo.addr, &server_keys(&dir));
    let mut args = vec!["connect".to_string(), "--queue".into(), queue.clone()];
    args.extend(client_keys(&dir, "client.key"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut connect = Bridge::start(&url, &args);
    let data = common::random_bytes(1 << 20, 3);
    let mut stdin = connect.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent).unwrap());
    let mut got = Vec::new();
    connect
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    writer.join().unwrap();
    assert_same("connect", &data, &got);
    assert!(connect.wait_exit().success(), "{}", connect.log());

    let web = harness::http_service();
    let (_web_server, web_queue) = serve(&url, web, &server_keys(&dir));
    let mut args = vec!["http".to_string(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(client_keys(&dir, "client.key"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let front = Bridge::start(&url, &args);
    let port = address_in(&front.wait_for("front door on"));
    let mut client = TcpStream::connect(port).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    write!(
        client,
        "GET /secret HTTP/1.1\r\nHost: x\r\nX-AMQP-Server-Queue: {web_queue}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.ends_with("you asked for GET /secret HTTP/1.1"),
        "{answer}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// docs/bridge.md's recipe: a database reachable only with a key (the
/// machine's PostgreSQL, as `bridge_users` uses it).
#[test]
fn psql_reaches_the_database_only_with_a_key() {
    let url = common::url();
    let dir = keys();
    let postgres: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let (server, queue) = serve(&url, postgres, &server_keys(&dir));
    let (with_key, port) = forward(&url, &queue, &client_keys(&dir, "client.key"));
    let psql = |port: SocketAddr| {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.port().to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atc", "select 6 * 7"])
            .output()
            .unwrap()
    };
    for _ in 0..3 {
        let out = psql(port);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    }
    let (_stranger, port) = forward(&url, &queue, &client_keys(&dir, "stranger.key"));
    let out = psql(port);
    assert!(!out.status.success(), "a stranger got in");
    server.wait_for(" refused: ");
    for bridge in [&server, &with_key] {
        // PostgreSQL may reset its end once psql has said goodbye: a
        // normal end, logged as closed or reset at info.
        common::eventually(BOUND, "every psql connection logged", || {
            let log = bridge.log();
            match log.matches(" closed: ").count() + log.matches(" reset: ").count() {
                3 => Ok(()),
                n => Err(format!("{n} of 3; log:\n{log}")),
            }
        });
    }
    assert_eq!(warnings(&with_key.log()), Vec::<&str>::new());
    let server_log = server.log();
    let server_warnings = warnings(&server_log);
    assert_eq!(server_warnings.len(), 1, "{server_warnings:?}");
    assert!(server_warnings[0].contains("not among the authorized keys"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `amqp-bridge ARGS` with `keys` appended, started and waited for
/// until it logs `ready`; the address in that line.
fn start_with_keys(url: &str, args: &[&str], keys: &[String], ready: &str) -> (Bridge, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(keys.iter().map(String::as_str));
    let bridge = Bridge::start(url, &all);
    let line = bridge.wait_for(ready);
    (bridge, line)
}

#[test]
fn socks_with_a_key_reaches_an_allow_serve_and_without_one_is_refused_before_any_connect() {
    let url = common::url();
    let dir = keys();
    let target = harness::http_service();
    let queue = common::queue("secure-socks");
    let rule = format!("127.0.0.1:{}", target.port());
    let (_serve, _) = start_with_keys(
        &url,
        &["serve", "--queue", &queue, "--allow", &rule],
        &server_keys(&dir),
        "serving queue",
    );
    let curl = |proxy: SocketAddr| {
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "--socks5-hostname"])
            .arg(proxy.to_string())
            .arg(format!("http://{target}/through"))
            .output()
            .expect("run curl")
    };
    let socks_args = ["socks", "--listen", "127.0.0.1:0", "--queue", &queue];
    let (_with, line) = start_with_keys(
        &url,
        &socks_args,
        &client_keys(&dir, "client.key"),
        "SOCKS5 proxy on",
    );
    let out = curl(address_in(&line));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "you asked for GET /through HTTP/1.1"
    );

    // A stranger's key: refused in the secure handshake, before serve
    // reads any request; the SOCKS client is told the proxy failed.
    let (stranger, line) = start_with_keys(
        &url,
        &socks_args,
        &client_keys(&dir, "stranger.key"),
        "SOCKS5 proxy on",
    );
    let out = curl(address_in(&line));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(1)"),
        "general failure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = stranger.wait_for("refused this end's key");
    assert!(refused.contains(" WARN "), "{refused}");
}
