//! Hostile review of protocol version 3: what version 2 noticed because a
//! stream's queue went with it, version 3 must notice although the
//! connection's queue outlives every stream on it.

mod common;

use amqp_stream::{Connector, ProtocolVersion, StreamOptions};
use common::{queue, url};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

fn pinned(version: ProtocolVersion) -> StreamOptions {
    StreamOptions::new()
        .protocol_version(Some(version))
        .keepalive_interval(Duration::from_millis(200))
}

/// The kinds a stream fails loudly with.
fn is_loud(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidData
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// The listener's end closes (cleanly: FIN) and is gone; the client reads
/// the FIN, then keeps writing. Nobody will ever read those bytes: as a TCP
/// socket after the peer's close (and as version 2, whose peer's queue is
/// deleted), the writer must fail loudly, not write into the void until
/// its credit runs out and then block for ever.
fn writing_after_the_peer_closed_fails(version: ProtocolVersion) {
    let q = queue("v3r-write-after-close");
    let server = Connector::open_with(&url(), pinned(version)).unwrap();
    let listener = server.bind(&q).unwrap();
    let client = Connector::open_with(&url(), pinned(version)).unwrap();
    let stream = client.connect(&q).unwrap();
    assert_eq!(stream.protocol_version(), version);
    let (accepted, _) = listener.accept().unwrap();
    drop(accepted);
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    stream
        .set_write_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let chunk = vec![7u8; 64 << 10];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut written = 0u64;
    let failure = loop {
        let result = (&stream).write_all(&chunk).and_then(|()| (&stream).flush());
        match result {
            Ok(()) => written += chunk.len() as u64,
            Err(err) => break err,
        }
        assert!(
            Instant::now() < deadline,
            "{version}: {written} bytes written and flushed to a peer that closed, no error"
        );
    };
    assert!(
        is_loud(failure.kind()),
        "{version}: after {written} bytes to a closed peer the writer got {:?}: {failure}",
        failure.kind()
    );
}

#[test]
fn v2_writing_after_the_peer_closed_fails() {
    writing_after_the_peer_closed_fails(ProtocolVersion::V2);
}

#[test]
fn v3_writing_after_the_peer_closed_fails() {
    writing_after_the_peer_closed_fails(ProtocolVersion::V3);
}

/// Clients that give up connecting before the listener's answer arrives
/// (a connect timeout) while their connection lives on. The listener
/// still accepts those streams (it cannot know); each must then find its
/// peer gone within a few keepalive intervals, as version 2's does (its
/// answer comes back: the client's queue went with it). A stream that
/// reads for ever from a peer that is not there is a leak and a hang.
fn streams_of_clients_that_gave_up_fail(version: ProtocolVersion) {
    let q = queue("v3r-gave-up");
    let server = Connector::open_with(&url(), pinned(version)).unwrap();
    let listener = server.bind(&q).unwrap();
    let client = Connector::open_with(&url(), pinned(version)).unwrap();
    // One stream that connects, so the client's connection (and in
    // version 3 its queue) is set up and stays.
    let kept = client.connect(&q).unwrap();
    let (_kept_accepted, _) = listener.accept().unwrap();
    let mut gave_up = 0;
    let mut connected = Vec::new();
    for _ in 0..40 {
        match client.connect_timeout(&q, Duration::from_millis(1)) {
            Err(err) if err.kind() == ErrorKind::TimedOut => gave_up += 1,
            Err(err) => panic!("{version}: connect failed: {err}"),
            Ok(stream) => connected.push(stream),
        }
    }
    assert!(gave_up > 0, "{version}: no connect timed out");
    let mut zombies = Vec::new();
    // Everything the listener will accept, it has accepted within a second
    // or so: the clients' SYNs are all on its queue.
    let accept_deadline = Instant::now() + Duration::from_secs(3);
    let (tx, rx) = crossbeam_channel::unbounded();
    let accepting = std::thread::spawn(move || {
        while let Ok((stream, _)) = listener.accept() {
            if tx.send(stream).is_err() {
                break;
            }
        }
    });
    while let Ok(stream) = rx.recv_deadline(accept_deadline) {
        zombies.push(stream);
    }
    let accepted = zombies.len();
    assert!(
        accepted >= connected.len(),
        "{version}: {accepted} accepted"
    );
    // Those whose client is connected are alive: leave them out by
    // dropping the connected clients first (they send their FIN).
    let connected_count = connected.len();
    drop(connected);
    let mut hung = 0;
    let mut clean_eof = 0;
    for stream in &zombies {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        loop {
            match (&*stream).read(&mut buf) {
                Ok(0) => {
                    clean_eof += 1;
                    break;
                }
                Ok(_) => continue,
                Err(err) if is_loud(err.kind()) => break,
                Err(err) if matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                    hung += 1;
                    break;
                }
                Err(err) => panic!("{version}: read failed oddly: {err}"),
            }
        }
    }
    // Clean EOFs are the connected clients' (they closed cleanly).
    assert!(
        clean_eof <= connected_count,
        "{version}: {clean_eof} clean EOFs from {connected_count} clients that closed"
    );
    assert_eq!(
        hung, 0,
        "{version}: {hung} of {accepted} accepted streams ({gave_up} clients gave up) \
         still read from a vanished client after 5 s (keepalive 200 ms)"
    );
    drop(kept);
    drop(zombies);
    drop(accepting);
}

#[test]
fn v2_streams_of_clients_that_gave_up_fail() {
    streams_of_clients_that_gave_up_fail(ProtocolVersion::V2);
}

#[test]
fn v3_streams_of_clients_that_gave_up_fail() {
    streams_of_clients_that_gave_up_fail(ProtocolVersion::V3);
}
