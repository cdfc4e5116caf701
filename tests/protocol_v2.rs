//! Protocol version 2 between two of our own streams: negotiation and
//! pinning, and reset on an abortive close.

mod common;

use amqp_stream::{Listener, ProtocolVersion, Stream, StreamOptions};
use common::{queue, url};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

/// Options under which only a reset can fail a stream quickly: no
/// keepalive for a minute.
fn slow_keepalive() -> StreamOptions {
    StreamOptions::new().keepalive_interval(Duration::from_secs(60))
}

fn echo_once(listener: Listener) -> thread::JoinHandle<ProtocolVersion> {
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let version = stream.protocol_version();
        io::copy(&mut &stream, &mut &stream).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        version
    })
}

fn round_trip(stream: &mut Stream) -> String {
    stream.write_all(b"over the broker").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = String::new();
    stream.read_to_string(&mut back).unwrap();
    back
}

#[test]
fn versions_are_negotiated_and_can_be_pinned() {
    let v1 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V1));
    let v2 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V2));
    let cases = [
        (
            StreamOptions::new(),
            StreamOptions::new(),
            ProtocolVersion::V2,
        ),
        (StreamOptions::new(), v1.clone(), ProtocolVersion::V1),
        (v1.clone(), StreamOptions::new(), ProtocolVersion::V1),
        (v1.clone(), v1.clone(), ProtocolVersion::V1),
        (v2.clone(), v2.clone(), ProtocolVersion::V2),
    ];
    for (server, client, expected) in cases {
        let q = queue("version");
        let server_side = echo_once(Listener::bind_with(&url(), &q, server.clone()).unwrap());
        let mut stream = Stream::connect_with(&url(), &q, client.clone()).unwrap();
        assert_eq!(stream.protocol_version(), expected);
        assert_eq!(round_trip(&mut stream), "over the broker");
        assert_eq!(server_side.join().unwrap(), expected);
    }
}

#[test]
fn a_listener_pinned_to_version_2_refuses_version_1_clients() {
    let v1 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V1));
    let v2 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V2));
    let q = queue("pinned");
    let listener = Listener::bind_with(&url(), &q, v2.clone()).unwrap();
    let err = Stream::connect_with(&url(), &q, v1.clone()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    // It keeps serving version-2 clients.
    let server_side = echo_once(listener);
    let mut stream = Stream::connect(&url(), &q).unwrap();
    assert_eq!(round_trip(&mut stream), "over the broker");
    server_side.join().unwrap();
}

#[test]
fn dropping_a_stream_with_unread_data_fails_the_peers_blocked_read() {
    let q = queue("reset-read");
    let listener = Listener::bind_with(&url(), &q, slow_keepalive()).unwrap();
    let mut client = Stream::connect_with(&url(), &q, slow_keepalive()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"more than one byte").unwrap();
    let mut first = [0u8; 1];
    server.read_exact(&mut first).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let blocked = thread::spawn(move || {
        let result = client.read(&mut [0u8; 16]);
        (client, result)
    });
    drop(server); // 17 bytes unread: abortive
    let (client, result) = blocked.join().unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    // Writing fails too.
    let err = (&client).write_all(b"x").and_then(|()| (&client).flush());
    assert_eq!(err.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn a_reset_fails_a_write_blocked_on_the_window() {
    let options = slow_keepalive().window(64 * 1024);
    let q = queue("reset-write");
    let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let client = Stream::connect_with(&url(), &q, options.clone()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let writer = thread::spawn(move || {
        let chunk = vec![1u8; 8 * 1024];
        loop {
            if let Err(err) = (&client).write_all(&chunk) {
                return err;
            }
        }
    });
    // Once data has arrived, the writer is (or soon is) blocked on the
    // window, which the server never opens.
    server.read_exact(&mut [0u8; 1]).unwrap();
    drop(server);
    let err = writer.join().unwrap();
    // The reset, or (when the writer still had window and published into
    // the queue the server deleted as it closed) the return: as a TCP
    // write after a reset gets ECONNRESET or EPIPE.
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
}

#[test]
fn a_clean_close_after_reading_everything_is_no_reset() {
    let q = queue("no-reset");
    let listener = Listener::bind(&url(), &q).unwrap();
    let mut client = Stream::connect(&url(), &q).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut request = Vec::new();
    server.read_to_end(&mut request).unwrap();
    server.write_all(b"answer").unwrap();
    drop(server);
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "answer");
}
