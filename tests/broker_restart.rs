//! A broker restart, on a RabbitMQ node of the suite's own: a listener
//! created with `reconnect` comes back and accepts new streams; one
//! without it fails `accept`; streams that were open end with an error,
//! never a hang.

mod common;

use amqp_stream::{Listener, Stream, StreamOptions};
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

#[test]
fn a_reconnecting_listener_accepts_again_after_a_broker_restart() {
    let node = TestNode::start("");
    let url = node.url("");
    let q = queue("restart");
    let plain_q = queue("restart-plain");
    let reconnecting =
        Listener::bind_with(&url, &q, &StreamOptions::new().reconnect(true)).unwrap();
    let plain = Listener::bind(&url, &plain_q).unwrap();

    let mut client = Stream::connect(&url, &q).unwrap();
    let (mut server, _) = reconnecting.accept().unwrap();
    check_both_ways(&mut client, &mut server, b"before the restart");

    node.crash_and_restart();

    // The streams of the old connection end with an error; a 30 s read
    // timeout would show as WouldBlock if they hung instead.
    for (end, stream) in [("client", &mut client), ("server", &mut server)] {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let err = stream
            .read(&mut [0; 16])
            .expect_err("a stream outlived its broker");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
            ),
            "the {end} read failed with {:?}: {err}",
            err.kind()
        );
    }
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
