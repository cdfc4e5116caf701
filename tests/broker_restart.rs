//! A broker restart, on a RabbitMQ node of the suite's own: a listener
//! created with `reconnect` comes back and accepts new streams; one
//! without it fails `accept`; streams that were open end with an error,
//! never a hang. On protocol version 2 (a queue per stream) and on
//! version 3 (every stream of a connection on its one queue).

mod common;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::node::TestNode;
use common::queue;
use common::summary::record;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// How long the listener may take to be back once the node is.
const BACK_WITHIN: Duration = Duration::from_secs(60);

/// Writes `message` one way and reads it back the other, both ways.
fn check_both_ways(client: &mut Stream, server: &mut Stream, message: &[u8]) {
    client.write_all(message).unwrap();
    client.flush().unwrap();
    let mut got = vec![0; message.len()];
    server.read_exact(&mut got).unwrap();
    assert_eq!(got, message);
    server.write_all(message).unwrap();
    server.flush().unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, message);
}

/// Reads from `stream` until it fails: what it read before must be a
/// prefix of `unread` (what the peer wrote after `check_both_ways`); a
/// clean end is a failure, and so is a hang (a 30 s read timeout would
/// show as `WouldBlock`).
fn assert_fails(end: &str, stream: &mut Stream, unread: &[u8]) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 64];
    let err = loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!("the {end} ended cleanly after {got:?} when its broker went"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => break err,
        }
    };
    assert!(
        unread.starts_with(&got),
        "the {end} read {got:?}, not a prefix of {unread:?}"
    );
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
        ),
        "the {end} read failed with {:?}: {err}",
        err.kind()
    );
}

#[test]
fn a_reconnecting_listener_accepts_again_after_a_broker_restart() {
    let node = TestNode::start("");
    let url = node.url("");
    let q = queue("restart");
    let plain_q = queue("restart-plain");
    let reconnecting = Listener::bind_with(&url, &q, StreamOptions::new().reconnect(true)).unwrap();
    let plain = Listener::bind(&url, &plain_q).unwrap();

    let mut client = Stream::connect(&url, &q).unwrap();
    assert_eq!(client.protocol_version(), ProtocolVersion::V2);
    let (mut server, _) = reconnecting.accept().unwrap();
    check_both_ways(&mut client, &mut server, b"before the restart");

    node.crash_and_restart();

    // The streams of the old connection end with an error, never a hang.
    assert_fails("client", &mut client, b"");
    assert_fails("server", &mut server, b"");
    // A listener without `reconnect` reports the loss.
    let err = plain
        .accept()
        .expect_err("accept after the broker went away");
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");

    // The reconnecting listener comes back: connecting is refused (or the
    // broker unreachable) until it has declared its queue again.
    let restarted = Instant::now();
    let mut client = loop {
        match Stream::connect_timeout(&url, &q, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(err) => {
                assert!(
                    restarted.elapsed() < BACK_WITHIN,
                    "the listener was not back within {BACK_WITHIN:?}: {err}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let back_after = restarted.elapsed();
    eprintln!("listener back {back_after:?} after the node");
    let (mut server, _) = reconnecting.accept().unwrap();
    check_both_ways(&mut client, &mut server, b"after the restart");

    // And it goes on accepting.
    let mut another = Stream::connect(&url, &q).unwrap();
    let (mut accepted, _) = reconnecting.accept().unwrap();
    check_both_ways(&mut another, &mut accepted, b"and again");
    record(
        "broker restart",
        "2 listeners, 1 open stream",
        "SIGKILL and restart of a RabbitMQ node",
        &format!(
            "streams and plain listener fail; reconnecting listener back {:.1?} after the node",
            back_after
        ),
        2 * (18 + 17 + 9),
    );
}

/// Version-3 streams pinned on a connector of their own.
fn v3() -> StreamOptions {
    StreamOptions::new().protocol_version(Some(ProtocolVersion::V3))
}

/// How many version-3 streams share the client's connection.
const V3_STREAMS: usize = 3;

#[test]
fn version_3_streams_fail_on_a_broker_restart_and_a_reconnecting_listener_accepts_version_3_again()
{
    let node = TestNode::start("");
    let url = node.url("");
    let q = queue("restart-v3");
    // The listener takes any version; the clients pin version 3, so every
    // accepted stream is on the listener's connection queue.
    let reconnecting = Listener::bind_with(&url, &q, StreamOptions::new().reconnect(true)).unwrap();
    let connector = Connector::open_with(&url, v3()).unwrap();
    let mut pairs = Vec::new();
    for n in 0..V3_STREAMS {
        let mut client = connector.connect(&q).unwrap();
        let (mut server, _) = reconnecting.accept().unwrap();
        assert_eq!(client.protocol_version(), ProtocolVersion::V3);
        assert_eq!(server.protocol_version(), ProtocolVersion::V3);
        check_both_ways(&mut client, &mut server, format!("before {n}").as_bytes());
        pairs.push((client, server));
    }
    // One client has written data (the broker has it) that its server
    // has not read yet: that stream too fails, never ends cleanly.
    const UNREAD: &[u8] = b"not read before the crash";
    pairs[0].0.write_all(UNREAD).unwrap();
    pairs[0].0.flush().unwrap();

    node.crash_and_restart();

    for (n, (client, server)) in pairs.iter_mut().enumerate() {
        assert_fails(&format!("client {n}"), client, b"");
        let unread = if n == 0 { UNREAD } else { b"" };
        assert_fails(&format!("server {n}"), server, unread);
    }
    // Writes fail too, on both ends.
    for (n, (client, server)) in pairs.iter_mut().enumerate() {
        for (end, stream) in [("client", client), ("server", server)] {
            let wrote = stream.write_all(b"after").and_then(|()| stream.flush());
            assert!(wrote.is_err(), "the {end} {n} wrote after its broker went");
        }
    }
    assert!(connector.wait_closed_timeout(Duration::from_secs(30)));

    // The reconnecting listener comes back and takes version 3 again: a
    // new connector (the old one's connection is gone) until it answers.
    let restarted = Instant::now();
    let (connector, mut client) = loop {
        let attempt = Connector::open_with(&url, v3()).and_then(|connector| {
            let stream = connector.connect_timeout(&q, Duration::from_secs(2))?;
            Ok((connector, stream))
        });
        match attempt {
            Ok(connected) => break connected,
            Err(err) => {
                assert!(
                    restarted.elapsed() < BACK_WITHIN,
                    "the listener was not back within {BACK_WITHIN:?}: {err}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let back_after = restarted.elapsed();
    eprintln!("listener back {back_after:?} after the node");
    let (mut server, _) = reconnecting.accept().unwrap();
    assert_eq!(client.protocol_version(), ProtocolVersion::V3);
    assert_eq!(server.protocol_version(), ProtocolVersion::V3);
    check_both_ways(&mut client, &mut server, b"after the restart");

    // And it goes on accepting version 3 on the same connections.
    let mut another = connector.connect(&q).unwrap();
    let (mut accepted, _) = reconnecting.accept().unwrap();
    assert_eq!(another.protocol_version(), ProtocolVersion::V3);
    assert_eq!(accepted.protocol_version(), ProtocolVersion::V3);
    check_both_ways(&mut another, &mut accepted, b"and again");
    record(
        "broker restart (version 3)",
        &format!("1 reconnecting listener, {V3_STREAMS} open version-3 streams on one connection"),
        "SIGKILL and restart of a RabbitMQ node",
        &format!(
            "every stream fails on both ends; listener back {:.1?} after the node, version 3 again",
            back_after
        ),
        (2 * V3_STREAMS * 8 + 10 + 2 * (17 + 9)) as u64,
    );
}
