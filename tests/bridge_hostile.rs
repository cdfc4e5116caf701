//! `amqp-bridge` against hostile and careless inputs, as child processes
//! over real TCP and the real broker: key material given where it does
//! not belong, clients that never finish their target request or SOCKS5
//! handshake, many refused clients at once, replayed and injected
//! stream messages.

mod common;
#[path = "bridge/harness.rs"]
mod harness;

use amiquip::AmqpProperties;
use amqp_stream::secure::{self, Channel, ClientConfig, KeyPair, PresharedKey, PublicKey};
use amqp_stream::{Connector, Stream};
use crossbeam_channel::Sender;
use harness::{Bridge, address_in};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BRIDGE: &str = env!("CARGO_BIN_EXE_amqp-bridge");

/// A fresh directory for one test's key files.
/// The keys notice a `serve` with keys sends ahead of the secure
/// handshake (see `carry/keys_notice.rs`).
const KEYS_NOTICE: &[u8; 9] = b"\0AMQPBRK\x01";

/// Reads a keyed serve's notice off `stream`, for the library's
/// `secure::client` to run the handshake that follows.
fn take_keys_notice(mut stream: impl Read) {
    let mut notice = [0u8; 9];
    stream.read_exact(&mut notice).unwrap();
    assert_eq!(&notice, KEYS_NOTICE);
}

fn key_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bridge-hostile-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// `amqp-bridge keygen ARGS` in `dir`.
fn keygen(dir: &Path, args: &[&str]) {
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
}

/// The hex digits of the key line in a key file.
fn key_digits(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn a_secret_given_as_peer_key_is_refused_without_being_echoed() {
    let dir = key_dir();
    keygen(&dir, &["client.key"]);
    keygen(&dir, &["server.key"]);
    keygen(&dir, &["--psk", "psk"]);
    let client_key = dir.join("client.key").display().to_string();
    // What a careless user pastes: the private key file's content, its
    // key line, the pre-shared key's line, the bare digits.
    let server_private = std::fs::read_to_string(dir.join("server.key")).unwrap();
    let psk = std::fs::read_to_string(dir.join("psk")).unwrap();
    let server_digits = key_digits(&dir.join("server.key"));
    let psk_digits = key_digits(&dir.join("psk"));
    let pasted = [
        (server_private.clone(), &server_digits),
        (
            server_private.lines().last().unwrap().to_string(),
            &server_digits,
        ),
        (psk.lines().last().unwrap().to_string(), &psk_digits),
        (server_digits.clone(), &server_digits),
    ];
    for (value, secret) in pasted {
        let out = Command::new(BRIDGE)
            .args(["forward", "--listen", "127.0.0.1:0", "--queue", "q"])
            .args(["--key", &client_key, "--peer-key", &value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            !stderr.contains(&secret[..16]),
            "the secret is in the error: {stderr}"
        );
        assert!(stderr.contains("--peer-key"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes `bytes` to `to` one byte every `pace`, until `stop` says so or
/// a write fails; as a slowloris client does.
fn trickle(mut to: impl Write + Send + 'static, bytes: Vec<u8>, pace: Duration) -> Sender<()> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    std::thread::spawn(move || {
        for byte in bytes {
            if to.write_all(&[byte]).and_then(|()| to.flush()).is_err() {
                return;
            }
            if !matches!(
                stopped.recv_timeout(pace),
                Err(crossbeam_channel::RecvTimeoutError::Timeout)
            ) {
                return;
            }
        }
    });
    stop
}

/// A target request's bytes as `socks` sends them (see
/// src/bin/amqp-bridge/target_request.rs): an IPv4 address and a port.
fn target_request(addr: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(addr) = addr else {
        panic!("IPv4 only")
    };
    let mut bytes = b"\0AMQPBR?\x01\x01".to_vec();
    bytes.extend_from_slice(&addr.ip().octets());
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    bytes
}

/// The target request's time limit in `serve --allow` (10 s), and the
/// pace of a client that sends one byte just within it each time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_target_request_sent_a_byte_at_a_time_still_ends_at_the_request_timeout() {
    let url = common::url();
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    let queue = common::queue("hostile-slow-request");
    let rule = target.to_string();
    let serve = Bridge::start(&url, &["serve", "--queue", &queue, "--allow", &rule]);
    serve.wait_for("serving queue");

    let connector = Connector::open(&url).unwrap();
    let stream = connector.connect(&queue).unwrap();
    let started = Instant::now();
    // A byte every 4 s: each read of serve's gets something within its
    // 10 s, the request as a whole never comes.
    let _stop = trickle(
        stream.try_clone().unwrap(),
        target_request(target),
        Duration::from_secs(4),
    );
    common::eventually(
        REQUEST_TIMEOUT * 2,
        "serve gives up on the request",
        || match serve.log().contains("no target request within") {
            true => Ok(()),
            false => Err(serve.log()),
        },
    );
    let took = started.elapsed();
    assert!(
        took < REQUEST_TIMEOUT + Duration::from_secs(3),
        "serve held the stream {took:?}"
    );
}

/// The SOCKS5 handshake's time limit in `socks` (30 s).
const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn a_socks_greeting_sent_a_byte_at_a_time_still_ends_at_the_handshake_timeout() {
    let url = common::url();
    let queue = common::queue("hostile-slow-socks");
    let socks = Bridge::start(
        &url,
        &["socks", "--listen", "127.0.0.1:0", "--queue", &queue],
    );
    let proxy = address_in(&socks.wait_for("SOCKS5 proxy on"));
    let client = TcpStream::connect(proxy).unwrap();
    let started = Instant::now();
    // Greeting: version 5, 255 methods; a byte every 10 s.
    let mut greeting = vec![5u8, 255];
    greeting.extend(1..=255u8);
    let _stop = trickle(
        client.try_clone().unwrap(),
        greeting,
        Duration::from_secs(10),
    );
    // socks closes the connection when it gives up: our read ends.
    client
        .set_read_timeout(Some(SOCKS_HANDSHAKE_TIMEOUT + Duration::from_secs(10)))
        .unwrap();
    let ended = (&client).read(&mut [0u8; 16]);
    let took = started.elapsed();
    assert!(
        took < SOCKS_HANDSHAKE_TIMEOUT + Duration::from_secs(3),
        "socks held the client {took:?} ({ended:?})"
    );
}

/// An echo service counting the connections it accepted.
fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            counting.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &client, &mut &client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, accepted)
}

#[test]
fn a_hundred_clients_refused_at_once_leave_serve_working_for_a_key_holder() {
    let url = common::url();
    let dir = key_dir();
    keygen(&dir, &["--psk", "psk"]);
    let psk = PresharedKey::from_file(&dir.join("psk")).unwrap();
    let (target, accepted) = counting_echo();
    let queue = common::queue("hostile-many-refused");
    let psk_file = dir.join("psk").display().to_string();
    let serve = Bridge::start(
        &url,
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            &target.to_string(),
            "--psk-file",
            &psk_file,
        ],
    );
    serve.wait_for("serving queue");

    // 100 streams at once: half send garbage, half hold the handshake
    // open and say nothing (each costs serve a thread until its 10 s).
    let connector = Connector::open(&url).unwrap();
    let strangers: Vec<_> = (0..100)
        .map(|i| {
            let stream = connector.connect(&queue).unwrap();
            if i % 2 == 0 {
                (&stream).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            }
            stream
        })
        .collect();

    // Meanwhile a key holder gets through at once.
    let started = Instant::now();
    let stream = connector.connect(&queue).unwrap();
    let config = ClientConfig::psk(psk).handshake_timeout(Duration::from_secs(5));
    take_keys_notice(&stream);
    let mut secured = secure::client(stream, &config).unwrap();
    secured.write_all(b"still served").unwrap();
    let mut got = [0u8; 12];
    secured.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still served");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the key holder waited {took:?}"
    );

    common::eventually(
        Duration::from_secs(30),
        "every stranger refused",
        || match serve.log().matches(" refused: ").count() {
            100 => Ok(()),
            n => Err(format!("{n} of 100 refused")),
        },
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a stranger reached the target"
    );
    drop(strangers);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_handshake_timeout_of_zero_is_a_bad_argument_not_a_serve_that_refuses_everyone() {
    let dir = key_dir();
    keygen(&dir, &["--psk", "psk"]);
    let psk = dir.join("psk").display().to_string();
    for (command, extra) in [
        ("serve", ["--to", "127.0.0.1:1"]),
        ("forward", ["--listen", "127.0.0.1:0"]),
    ] {
        let out = Command::new(BRIDGE)
            .args([command, "--queue", "q"])
            .args(extra)
            .args(["--psk-file", &psk, "--handshake-timeout", "0"])
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("--handshake-timeout"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stream that keeps a copy of everything written to it: what an
/// attacker with the broker's view records.
struct Recorded {
    stream: Stream,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Read for Recorded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.stream).read(buf)
    }
}

impl Write for Recorded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&self.stream).write(buf)?;
        self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (&self.stream).flush()
    }
}

impl Channel for Recorded {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_write_timeout(timeout)
    }
    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Recorded {
            stream: self.stream.try_clone()?,
            written: Arc::clone(&self.written),
        })
    }
    fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
        self.stream.shutdown(how)
    }
}

#[test]
fn a_recorded_session_replayed_into_a_new_stream_never_reaches_the_target() {
    let url = common::url();
    let dir = key_dir();
    keygen(&dir, &["server.key"]);
    keygen(&dir, &["client.key"]);
    keygen(&dir, &["--psk", "psk"]);
    let client_line = std::fs::read_to_string(dir.join("client.key.pub")).unwrap();
    std::fs::write(dir.join("clients"), client_line).unwrap();
    let file = |name: &str| dir.join(name).display().to_string();
    let psk = PresharedKey::from_file(&dir.join("psk")).unwrap();
    let pair = || KeyPair::from_file(&dir.join("client.key")).unwrap();
    let server_public = PublicKey::from_file(&dir.join("server.key.pub")).unwrap();
    let modes: [(Vec<String>, ClientConfig); 2] = [
        (
            vec!["--psk-file".into(), file("psk")],
            ClientConfig::psk(psk),
        ),
        (
            vec![
                "--key".into(),
                file("server.key"),
                "--authorized-keys".into(),
                file("clients"),
            ],
            ClientConfig::key_pair(pair(), server_public),
        ),
    ];
    for (options, config) in modes {
        let (target, accepted) = counting_echo();
        let queue = common::queue("hostile-replay");
        let mut args = vec!["serve", "--queue", &queue, "--to"];
        let target_text = target.to_string();
        args.push(&target_text);
        args.extend(options.iter().map(String::as_str));
        let serve = Bridge::start(&url, &args);
        serve.wait_for("serving queue");
        let connector = Connector::open(&url).unwrap();

        // A real session, recorded.
        let written = Arc::new(Mutex::new(Vec::new()));
        let recorded = Recorded {
            stream: connector.connect(&queue).unwrap(),
            written: Arc::clone(&written),
        };
        let mut recorded = recorded;
        take_keys_notice(&mut recorded);
        let mut secured = secure::client(recorded, &config).unwrap();
        secured.write_all(b"SELECT secrets;").unwrap();
        let mut got = [0u8; 15];
        secured.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"SELECT secrets;");
        secured.close_write().unwrap();
        drop(secured);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // The same bytes, replayed into a new stream.
        let replay = connector.connect(&queue).unwrap();
        (&replay).write_all(&written.lock().unwrap()).unwrap();
        (&replay).flush().unwrap();
        let line = serve.wait_for(" refused: ");
        assert!(line.contains(" WARN "), "{line}");
        // Refused at the proof that the client is live: the handshake's
        // last message (key pairs) or the key confirmation (a PSK).
        assert!(
            line.contains("a replayed handshake") || line.contains("last handshake message"),
            "{line}"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the replay reached the target"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A target that reports how each connection to it ended: `Ok(bytes)`
/// for an end of data (FIN), the error kind otherwise.
fn ending_target() -> (
    SocketAddr,
    crossbeam_channel::Receiver<Result<usize, ErrorKind>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended_tx, ended) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let ended_tx = ended_tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut received = 0;
                let end = loop {
                    match client.read(&mut buf) {
                        Ok(0) => break Ok(received),
                        Ok(n) => received += n,
                        Err(err) => break Err(err.kind()),
                    }
                };
                let _ = ended_tx.send(end);
            });
        }
    });
    (addr, ended)
}

#[test]
fn a_fin_or_reset_injected_into_a_secured_stream_is_a_reset_at_the_target_never_a_fin() {
    let url = common::url();
    let dir = key_dir();
    keygen(&dir, &["--psk", "psk"]);
    let psk = PresharedKey::from_file(&dir.join("psk")).unwrap();
    let (target, ended) = ending_target();
    let queue = common::queue("hostile-inject");
    let psk_file = dir.join("psk").display().to_string();
    let serve = Bridge::start(
        &url,
        &[
            "serve",
            "--queue",
            &queue,
            "--to",
            &target.to_string(),
            "--psk-file",
            &psk_file,
        ],
    );
    serve.wait_for("serving queue");
    let mut attacker = common::raw_connection();
    let channel = attacker.open_channel(None).unwrap();
    // A FIN with each sequence number near the real next one (one of
    // them is exactly it: the stream layer takes that one as a real
    // FIN), and a reset.
    let injections: Vec<(&str, Option<u64>)> = (1..=6)
        .map(|seq| ("fin", Some(seq)))
        .chain([("reset", None)])
        .collect();
    for (kind, seq) in injections {
        // A fresh connector: its first stream is version 2, whose
        // serve end is a queue of its own.
        let connector = Connector::open(&url).unwrap();
        let stream = connector.connect(&queue).unwrap();
        let serve_end = stream.peer_addr().unwrap().queue().to_string();
        take_keys_notice(&stream);
        let mut secured = secure::client(stream, &ClientConfig::psk(psk.clone())).unwrap();
        secured.write_all(b"half of a transfer").unwrap();
        secured.flush().unwrap();
        let mut properties = AmqpProperties::default().with_type_(kind.to_string());
        if let Some(seq) = seq {
            properties = properties.with_message_id(seq.to_string());
        }
        common::raw::publish_with(&channel, &serve_end, b"", properties);
        let end = ended
            .recv_timeout(Duration::from_secs(30))
            .expect("the target's connection ends");
        assert_eq!(
            end,
            Err(ErrorKind::ConnectionReset),
            "{kind} {seq:?} injected: the target saw {end:?}"
        );
        drop(secured);
    }
    drop(serve);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn socks_clients_sending_garbage_or_half_a_greeting_leave_the_proxy_working() {
    let url = common::url();
    let (target, accepted) = counting_echo();
    let queue = common::queue("hostile-socks-junk");
    let rule = target.to_string();
    let serve = Bridge::start(&url, &["serve", "--queue", &queue, "--allow", &rule]);
    serve.wait_for("serving queue");
    let socks = Bridge::start(
        &url,
        &["socks", "--listen", "127.0.0.1:0", "--queue", &queue],
    );
    let proxy = address_in(&socks.wait_for("SOCKS5 proxy on"));
    let junk: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",
        b"\x05",
        b"\x05\x03\x00",
        b"\x05\x01\x00\x05\x01\x00\x09",
        b"\x05\x01\x00\x05\x01\x00\x03\x10only-half",
    ];
    for (i, bytes) in junk.iter().cycle().take(60).enumerate() {
        let client = TcpStream::connect(proxy).unwrap();
        (&client).write_all(bytes).unwrap();
        if i % 2 == 0 {
            // Gone mid-handshake, abortively.
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
    // A proper client still gets through.
    let mut client = TcpStream::connect(proxy).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let SocketAddr::V4(v4) = target else { panic!() };
    let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
    hello.extend_from_slice(&v4.ip().octets());
    hello.extend_from_slice(&v4.port().to_be_bytes());
    client.write_all(&hello).unwrap();
    let mut answer = [0u8; 12];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[..4], &[5, 0, 5, 0], "{answer:?}");
    client.write_all(b"echo me").unwrap();
    let mut echoed = [0u8; 7];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"echo me");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "junk reached the target"
    );
}
