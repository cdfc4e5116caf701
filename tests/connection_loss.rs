//! A broker connection cut under a `Connector` (through a test relay):
//! the connector reports it, and its streams and listeners fail instead
//! of hanging.

mod common;

use amqp_stream::Connector;
use common::relay::Relay;
use common::summary::record;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

/// Long enough for any of this to happen on a loaded machine; the
/// failures themselves come within a round trip.
const BOUND: Duration = Duration::from_secs(20);

#[test]
fn a_cut_connection_is_reported_and_fails_its_streams() {
    let relay = Relay::to_broker();
    let connector = Connector::open(&relay.url()).unwrap();
    let queue = common::queue("cut");
    let listener = connector.bind(&queue).unwrap();
    let client = Connector::open(&common::url()).unwrap();
    let mut stream = client.connect(&queue).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    assert!(!connector.is_closed());
    assert!(!connector.wait_closed_timeout(Duration::from_millis(50)));

    // The accepted stream and the listener block in their own threads.
    let mut writer = accepted.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        (&accepted).read(&mut buf)
    });
    let accepting = std::thread::spawn(move || listener.accept().map(|_| ()));

    relay.cut();
    assert!(connector.wait_closed_timeout(BOUND), "cut not noticed");
    assert!(connector.is_closed());

    let read = reader.join().unwrap();
    assert_eq!(read.unwrap_err().kind(), ErrorKind::ConnectionAborted);
    let accept = accepting.join().unwrap();
    assert_eq!(accept.unwrap_err().kind(), ErrorKind::ConnectionAborted);
    // Requests queued to the stream's worker as it ends are answered
    // (they used to wait for ever): flush and shutdown fail at once.
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let flush = writer.flush();
        let shutdown = writer.shutdown(Shutdown::Write);
        let _ = done_tx.send((flush, shutdown));
    });
    let (flush, shutdown) = done_rx
        .recv_timeout(BOUND)
        .expect("flush or shutdown hangs");
    // Nothing was written, so a worker that has not yet noticed the cut
    // may rightly answer Ok; an error must say the broker was lost.
    for result in [flush, shutdown] {
        if let Err(err) = result {
            assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
        }
    }
    let connect = connector.connect(&queue).unwrap_err();
    assert_eq!(connect.kind(), ErrorKind::ConnectionAborted);

    // The far end, on a healthy connection, learns its peer is gone.
    stream.set_read_timeout(Some(BOUND)).expect("read timeout");
    let mut buf = [0u8; 16];
    let err = stream.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(!client.is_closed());
    record(
        "broker connection cut",
        "1 stream, blocked read and accept",
        "relay cuts the listener's connection",
        "ConnectionAborted here, ConnectionReset at the peer",
        0,
    );
}

#[test]
fn shutdown_right_after_a_lost_connection_fails_instead_of_hanging() {
    // The window is narrow (about one try in four hit it before the fix),
    // so try many times.
    for _ in 0..20 {
        shutdown_as_the_connection_is_lost();
    }
}

fn shutdown_as_the_connection_is_lost() {
    let relay = Relay::to_broker();
    let server = Connector::open(&common::url()).unwrap();
    let queue = common::queue("cut-shutdown");
    let listener = server.bind(&queue).unwrap();
    let mut stream = Connector::open(&relay.url())
        .unwrap()
        .connect(&queue)
        .unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").unwrap();
    (&accepted).read_exact(&mut buf).unwrap();
    (&accepted).write_all(b"pong").unwrap();
    stream.read_exact(&mut buf).unwrap();
    let reader = stream.try_clone().unwrap();
    let reading = std::thread::spawn(move || (&reader).read(&mut [0u8; 4]));

    relay.cut();
    // The read fails as soon as the consumer goes, while the stream's
    // worker may still be winding down: a FIN queued to it then must be
    // answered all the same.
    assert_eq!(
        reading.join().unwrap().unwrap_err().kind(),
        ErrorKind::ConnectionAborted
    );
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = done_tx.send(stream.shutdown(Shutdown::Both));
    });
    let shutdown = done_rx.recv_timeout(BOUND).expect("shutdown hangs");
    // A worker that has not yet noticed may still hand the FIN over.
    if let Err(err) = shutdown {
        assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    }
}

/// A connection that goes silent (stalled, or half-open: the broker's
/// side gone, ours still open) is noticed by AMQP heartbeats (1 s here):
/// the client's blocked read fails with `ConnectionAborted`, and the peer,
/// on a healthy connection, sees `ConnectionReset` once the broker has
/// dropped the silent connection and its queues.
fn a_silent_connection_is_noticed(fault: &str, break_it: impl FnOnce(&Relay)) {
    let relay = Relay::to_broker();
    let client = Connector::open(&format!("{}?heartbeat=1", relay.url())).unwrap();
    let server = Connector::open(&common::url()).unwrap();
    let queue = common::queue("silent");
    let listener = server.bind(&queue).unwrap();
    let mut near = client.connect(&queue).unwrap();
    let (mut far, _) = listener.accept().unwrap();
    let mut byte = [0u8; 1];
    near.write_all(b"?").unwrap();
    far.read_exact(&mut byte).unwrap();
    far.write_all(b"!").unwrap();
    near.read_exact(&mut byte).unwrap();
    // A read that hung would fail with WouldBlock after BOUND instead.
    for stream in [&near, &far] {
        stream.set_read_timeout(Some(BOUND)).unwrap();
    }
    let reading = |stream: amqp_stream::Stream| {
        std::thread::spawn(move || {
            let result = (&stream).read(&mut [0u8; 16]);
            (result, std::time::Instant::now())
        })
    };
    let (near_read, far_read) = (reading(near), reading(far));

    let broken = std::time::Instant::now();
    break_it(&relay);
    let (near_result, near_at) = near_read.join().unwrap();
    let (far_result, far_at) = far_read.join().unwrap();
    let near_err = near_result.unwrap_err();
    assert_eq!(near_err.kind(), ErrorKind::ConnectionAborted, "{near_err}");
    let far_err = far_result.unwrap_err();
    assert_eq!(far_err.kind(), ErrorKind::ConnectionReset, "{far_err}");
    assert!(
        client.wait_closed_timeout(BOUND),
        "the client never noticed"
    );
    assert!(!server.is_closed());
    let (near_after, far_after) = (near_at - broken, far_at - broken);
    eprintln!("{fault}: noticed here after {near_after:?}, at the peer after {far_after:?}");
    record(
        &format!("broker connection {fault}"),
        "1 stream, blocked reads at both ends",
        &format!("relay {fault}, heartbeat 1 s"),
        &format!(
            "ConnectionAborted here after {near_after:.1?}, ConnectionReset at the peer after {far_after:.1?}"
        ),
        2,
    );
}

#[test]
fn a_stalled_connection_is_noticed_by_both_ends() {
    a_silent_connection_is_noticed("stalled", Relay::stall);
}

#[test]
fn a_half_open_connection_is_noticed_by_both_ends() {
    a_silent_connection_is_noticed("half-open", Relay::half_open);
}
