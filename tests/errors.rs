//! Failures get the io::ErrorKind that std::net would give, promptly.

mod common;

use amqp_stream::{Connector, Listener, Stream, StreamOptions};
use common::{broker_channels_of, eventually, free_port, queue, raw_connection, url};
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
    // A port with nothing behind it.
    let port = free_port();
    let err = Stream::connect(&format!("amqp://127.0.0.1:{port}"), "x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
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
    let mut reply_queues = Vec::new();
    while let Some(request) = channel.basic_get(q.clone(), true).unwrap() {
        reply_queues.push(request.delivery.properties.reply_to().clone().unwrap());
    }
    assert_eq!(reply_queues.len(), TRIES);
    for reply_queue in reply_queues {
        let probe = raw.open_channel(None).unwrap();
        match probe.queue_declare_passive(reply_queue.clone()) {
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {}
            Ok(_) => panic!("queue {reply_queue} is still there"),
            Err(err) => panic!("probing {reply_queue}: {err}"),
        }
    }
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
