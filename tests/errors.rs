//! Failures get the io::ErrorKind that std::net would give, promptly.

mod common;

use amqp_stream::{Listener, Stream};
use common::{queue, raw_connection, url};
use std::io::{self, Read};
use std::time::{Duration, Instant};

#[test]
fn no_listener_is_connection_refused_at_once() {
    let started = Instant::now();
    let err = Stream::connect(&url(), &queue("nobody")).unwrap_err();
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
    // A port with nothing behind it: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Stream::connect(&format!("amqp://127.0.0.1:{port}"), "x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn unanswered_handshake_times_out() {
    // A queue that exists but that no listener serves: the request is
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
    let started = Instant::now();
    let err = Stream::connect_timeout(&url(), &q, Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
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
