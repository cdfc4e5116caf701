//! Failures get the io::ErrorKind that std::net would give, promptly.

mod common;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::{broker_channels_of, eventually, free_port, queue, raw_connection, url};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

#[test]
fn no_listener_is_connection_refused_at_once() {
    // Timed from the request: logging in to the broker is not the point.
    let connector = Connector::open(&url()).unwrap();
    let started = Instant::now();
    let err = connector.connect(&queue("nobody")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn second_bind_is_addr_in_use() {
    let q = queue("inuse");
    let _first = Listener::bind(&url(), &q).unwrap();
    let err = Listener::bind(&url(), &q).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains(&q), "{err}");
}

#[test]
fn wrong_password_is_permission_denied_and_never_printed() {
    let err = Stream::connect("amqp://guest:not-the-password@127.0.0.1:5672/%2f", "x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("not-the-password"), "{text}");
}

#[test]
fn malformed_urls_are_invalid_input() {
    for bad in [
        "http://127.0.0.1/",
        "amqp://u:secret@h/a/b",
        "amqp://h/?heartbeat=soon",
        "::",
    ] {
        let err = Stream::connect(bad, "x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

#[test]
fn unreachable_broker_fails_fast() {
    // A port with nothing behind it.
    let port = free_port();
    let err = Stream::connect(&format!("amqp://127.0.0.1:{port}"), "x").unwrap_err();
    // Not ConnectionRefused: that is a broker with nobody on the queue.
    assert_eq!(err.kind(), io::ErrorKind::HostUnreachable, "{err}");
    assert!(err.to_string().contains("cannot reach the broker"), "{err}");
}

#[test]
fn unanswered_handshakes_time_out_and_free_their_resources() {
    const TRIES: usize = 10;
    // A queue that exists but that no listener serves: the requests are
    // routed, never answered.
    let q = queue("silent");
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    channel
        .queue_declare(
            q.clone(),
            amiquip::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    let connector = Connector::open_with(&url(), StreamOptions::new().prepared_streams(0)).unwrap();
    let port = connector.local_socket_addr().port();
    for _ in 0..TRIES {
        let started = Instant::now();
        let err = connector
            .connect_timeout(&q, Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Each try's channel is closed, and its queue (named in the request
    // it left behind) deleted with it.
    eventually(
        Duration::from_secs(10),
        "channels left behind",
        || match broker_channels_of(port) {
            Some(0) => Ok(()),
            other => Err(format!("{other:?} channels on the connection")),
        },
    );
    // The requests expired with their clients' timeouts: none is left in
    // the queue for a listener to answer later.
    assert!(
        channel.basic_get(q.clone(), true).unwrap().is_none(),
        "a request outlived its client's handshake timeout"
    );
    raw.close().unwrap();
}

#[test]
fn read_timeout_is_would_block_and_zero_timeouts_are_refused() {
    let q = queue("rto");
    let listener = Listener::bind(&url(), &q).unwrap();
    let accepted = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut client = Stream::connect(&url(), &q).unwrap();
    let _server = accepted.join().unwrap().unwrap();
    assert_eq!(
        client
            .set_read_timeout(Some(Duration::ZERO))
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        client
            .set_write_timeout(Some(Duration::ZERO))
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert_eq!(
        client.read_timeout().unwrap(),
        Some(Duration::from_millis(100))
    );
    let err = client.read(&mut [0; 16]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    client
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(
        client.write_timeout().unwrap(),
        Some(Duration::from_secs(1))
    );
}

/// A virtual host of this test's own, with a limit on its queues,
/// deleted when dropped.
struct LimitedVhost {
    name: String,
}

impl LimitedVhost {
    fn new(max_queues: usize) -> LimitedVhost {
        let name = queue("vhost");
        let vhost = LimitedVhost { name };
        let limits = format!("{{\"max-queues\": {max_queues}}}");
        for args in [
            vec!["add_vhost", vhost.name.as_str()],
            vec![
                "set_permissions",
                "-p",
                &vhost.name,
                "guest",
                ".*",
                ".*",
                ".*",
            ],
            vec!["set_vhost_limits", "-p", &vhost.name, &limits],
        ] {
            rabbitmqctl(&args);
        }
        vhost
    }

    /// The test broker's URL, on this virtual host.
    fn url(&self) -> String {
        let broker = url();
        let base = broker.rsplit_once('/').map_or(broker.as_str(), |(b, _)| b);
        format!("{base}/{}", self.name)
    }
}

impl Drop for LimitedVhost {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (scripts/ensure-broker.sh installs it)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
}

/// Sends `text` and reads it back through an echo server.
fn echoes(stream: &mut Stream, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, text.as_bytes());
}

/// Echoes every stream it accepts, each in its own thread, until the
/// listener ends; returns how many it accepted.
fn echo_all(listener: Listener) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            served += 1;
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut &stream);
            });
        }
        served
    })
}

/// Connects, retrying while the broker still counts the queues of
/// streams just dropped (it deletes them on its own time).
fn connect_once_freed(connector: &Connector, q: &str) -> Stream {
    let mut stream = None;
    eventually(
        Duration::from_secs(10),
        "a connection once queues are freed",
        || match connector.connect(q) {
            Ok(s) => {
                stream = Some(s);
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        },
    );
    stream.unwrap()
}

#[test]
fn a_queue_limit_fails_one_stream_and_not_the_listener_or_the_connector() {
    common::capture_logs();
    // The listener's queue, then two per stream.
    let vhost = LimitedVhost::new(4);
    // Version 2: a version-3 stream declares no queue to be refused.
    let options = StreamOptions::new()
        .prepared_streams(0)
        .protocol_version(Some(ProtocolVersion::V2))
        .handshake_timeout(Some(Duration::from_secs(20)));
    let server_side = Connector::open_with(&vhost.url(), options.clone()).unwrap();
    let q = queue("limited");
    let server = echo_all(server_side.bind(&q).unwrap());
    let client_side = Connector::open_with(&vhost.url(), options).unwrap();
    let mut first = client_side.connect(&q).unwrap();
    echoes(&mut first, "first");

    // The fourth queue is the client's; the listener's side of the stream
    // would be the fifth: that one client is refused, at once.
    let started = Instant::now();
    let err = client_side.connect(&q).unwrap_err();
    let warnings: Vec<String> = common::logs()
        .into_iter()
        .filter(|l| l.starts_with("WARN"))
        .collect();
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionRefused,
        "{err}; {warnings:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    echoes(&mut first, "still there");

    // Once a stream is gone, the listener serves the next client.
    drop(first);
    let mut second = connect_once_freed(&client_side, &q);
    echoes(&mut second, "second");

    // The client's own queue over the limit: a clear error from the
    // broker, and the connector goes on.
    let mut raw = amiquip::Connection::insecure_open(&vhost.url()).unwrap();
    let channel = raw.open_channel(None).unwrap();
    channel
        .queue_declare(
            queue("filler"),
            amiquip::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    let err = client_side.connect(&q).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    assert!(!err.to_string().contains("lost"), "{err}");
    raw.close().unwrap();
    echoes(&mut second, "connector usable");
    drop(second);
    let mut third = connect_once_freed(&client_side, &q);
    echoes(&mut third, "third");
    drop((third, client_side, server_side));
    drop(server);
}

#[test]
fn a_queue_name_amqp_cannot_carry_is_invalid_input_and_harms_no_other_stream() {
    let q = queue("names");
    let connector = Connector::open(&url()).unwrap();
    let server = echo_all(connector.bind(&q).unwrap());
    let mut live = connector.connect(&q).unwrap();
    echoes(&mut live, "before");
    let too_long = "q".repeat(256);
    for bad in ["", too_long.as_str()] {
        let errors = [
            connector.connect(bad).unwrap_err(),
            connector
                .connect_timeout(bad, Duration::from_secs(5))
                .unwrap_err(),
            Stream::connect(&url(), bad).unwrap_err(),
            Stream::connect_timeout(&url(), bad, Duration::from_secs(5)).unwrap_err(),
            Stream::connect_with(&url(), bad, StreamOptions::new()).unwrap_err(),
            Listener::bind(&url(), bad).unwrap_err(),
        ];
        for err in errors {
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains("255"), "{err}");
        }
    }
    // The connection, and the stream on it, are untouched.
    echoes(&mut live, "after");
    assert!(!connector.is_closed());
    drop(live);
    drop(server);
}

/// `Duration::MAX` as a timeout is no limit, as `TcpStream` takes it;
/// nothing panics.
fn duration_max_is_no_limit(check_stream_timeouts: bool) {
    let forever = StreamOptions::new()
        .handshake_timeout(Some(Duration::MAX))
        .linger(Duration::MAX);
    let q = queue("forever");
    let connector = Connector::open_with(
        &format!("{}?connection_timeout={}", url(), u64::MAX),
        forever,
    )
    .unwrap();
    let server = echo_all(connector.bind(&q).unwrap());
    let mut streams = vec![
        connector.connect(&q).unwrap(),
        connector.connect_timeout(&q, Duration::MAX).unwrap(),
    ];
    if check_stream_timeouts {
        streams.push(Stream::connect_timeout(&url(), &q, Duration::MAX).unwrap());
    }
    for stream in &mut streams {
        if check_stream_timeouts {
            stream.set_read_timeout(Some(Duration::MAX)).unwrap();
            stream.set_write_timeout(Some(Duration::MAX)).unwrap();
            assert_eq!(stream.read_timeout().unwrap(), Some(Duration::MAX));
        }
        echoes(stream, "no limit");
    }
    assert!(!connector.wait_closed_timeout(Duration::from_millis(10)));
    // A wait with no limit ends when the connection does.
    let relay = common::relay::Relay::to_broker();
    let cut = Connector::open(&relay.url()).unwrap();
    let waiting = std::thread::spawn({
        let cut = cut.clone();
        move || cut.wait_closed_timeout(Duration::MAX)
    });
    relay.cut();
    assert!(waiting.join().unwrap());
    drop(streams);
    drop(server);
}

#[test]
fn duration_max_is_no_limit_for_connectors_and_listeners() {
    duration_max_is_no_limit(false);
}

#[test]
fn duration_max_is_no_limit_for_streams_too() {
    duration_max_is_no_limit(true);
}
