//! Protocol version 3: streams with no queue, channel or acknowledgement
//! of their own, addressed by their connection's queue and a stream id.

mod common;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::{broker_channels_of, queue, queues_owned_by, random_bytes, url};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::thread;

fn v3() -> StreamOptions {
    StreamOptions::new().protocol_version(Some(ProtocolVersion::V3))
}

/// Echoes the first `count` streams the listener accepts; each reports
/// its version.
fn echo(listener: Listener, count: usize) -> thread::JoinHandle<Vec<ProtocolVersion>> {
    thread::spawn(move || {
        let mut echoers = Vec::new();
        for stream in listener.incoming().take(count) {
            let stream = stream.unwrap();
            echoers.push(thread::spawn(move || {
                let version = stream.protocol_version();
                io::copy(&mut &stream, &mut &stream).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
                version
            }));
        }
        echoers.into_iter().map(|e| e.join().unwrap()).collect()
    })
}

/// Sends `data` through `stream`'s echo from a second thread and returns
/// what came back.
fn echoed(stream: Stream, data: Vec<u8>) -> Vec<u8> {
    let writer = stream.try_clone().unwrap();
    let sending = thread::spawn(move || {
        (&writer).write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&stream).read_to_end(&mut back).unwrap();
    sending.join().unwrap();
    back
}

#[test]
fn a_connector_learns_that_a_listener_takes_version_3() {
    let q = queue("v3-learn");
    let server = Connector::open(&url()).unwrap();
    let served = echo(server.bind(&q).unwrap(), 2);
    let client = Connector::open(&url()).unwrap();
    let first = client.connect(&q).unwrap();
    assert_eq!(
        first.protocol_version(),
        ProtocolVersion::V2,
        "it cannot know yet"
    );
    let second = client.connect(&q).unwrap();
    assert_eq!(second.protocol_version(), ProtocolVersion::V3);
    let data = random_bytes(3 << 20, 3);
    assert_eq!(echoed(second, data.clone()), data);
    assert_eq!(echoed(first, data.clone()), data);
    let versions = served.join().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions.contains(&ProtocolVersion::V3));
}

#[test]
fn version_3_streams_take_no_queue_or_channel_of_their_own() {
    let q = queue("v3-count");
    let server = Connector::open_with(&url(), v3()).unwrap();
    let served = echo(server.bind(&q).unwrap(), 50);
    let client = Connector::open_with(&url(), v3()).unwrap();
    let ports = [
        server.local_socket_addr().port(),
        client.local_socket_addr().port(),
    ];
    let streams: Vec<Stream> = (0..50).map(|_| client.connect(&q).unwrap()).collect();
    let queues = queues_owned_by(&ports);
    // The listener's queue and one queue per connection, whatever the
    // number of streams.
    assert_eq!(queues.len(), 3, "{queues:?}");
    for port in ports {
        let channels = broker_channels_of(port).unwrap();
        assert!(channels <= 4, "{channels} channels on one connection");
    }
    let echoes: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            assert_eq!(s.protocol_version(), ProtocolVersion::V3);
            thread::spawn(move || {
                let data = random_bytes(64 << 10, i as u64);
                assert_eq!(echoed(s, data.clone()), data);
            })
        })
        .collect();
    for e in echoes {
        e.join().unwrap();
    }
    assert_eq!(served.join().unwrap().len(), 50);
}

#[test]
fn both_ends_on_one_connection() {
    let q = queue("v3-same");
    let connector = Connector::open_with(&url(), v3()).unwrap();
    let served = echo(connector.bind(&q).unwrap(), 5);
    let data = random_bytes(1 << 20, 9);
    for _ in 0..5 {
        let s = connector.connect(&q).unwrap();
        assert_eq!(echoed(s, data.clone()), data);
    }
    assert_eq!(served.join().unwrap(), vec![ProtocolVersion::V3; 5]);
}

fn pinned(version: ProtocolVersion) -> StreamOptions {
    StreamOptions::new().protocol_version(Some(version))
}

#[test]
fn a_listener_below_version_3_refuses_a_version_3_client_at_once() {
    for listener_version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let q = queue("v3-refused");
        let _listener = Listener::bind_with(&url(), &q, pinned(listener_version)).unwrap();
        let started = std::time::Instant::now();
        let err = Stream::connect_with(&url(), &q, v3()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        // A refusal, not a handshake that ran out of time.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}

#[test]
fn a_listener_pinned_to_version_3_takes_only_version_3_requests() {
    let q = queue("v3-pinned");
    let listener = Listener::bind_with(&url(), &q, v3()).unwrap();
    let served = echo(listener, 1);
    // A first stream from a default client is a version-2 request.
    let err = Stream::connect(&url(), &q).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    let s = Stream::connect_with(&url(), &q, v3()).unwrap();
    assert_eq!(s.protocol_version(), ProtocolVersion::V3);
    assert_eq!(echoed(s, b"pinned".to_vec()), b"pinned");
    assert_eq!(served.join().unwrap(), vec![ProtocolVersion::V3]);
}

#[test]
fn a_connector_falls_back_when_its_listener_no_longer_takes_version_3() {
    let q = queue("v3-downgrade");
    let client = Connector::open(&url()).unwrap();
    {
        let served = echo(Listener::bind(&url(), &q).unwrap(), 2);
        for expected in [ProtocolVersion::V2, ProtocolVersion::V3] {
            let s = client.connect(&q).unwrap();
            assert_eq!(s.protocol_version(), expected);
            assert_eq!(echoed(s, b"before".to_vec()), b"before");
        }
        served.join().unwrap();
    }
    // The same queue, now served by a listener pinned to version 2: the
    // remembered version-3 request is refused, and the connector asks
    // again as version 2 within the same connect.
    let served = echo(
        Listener::bind_with(&url(), &q, pinned(ProtocolVersion::V2)).unwrap(),
        1,
    );
    let s = client.connect(&q).unwrap();
    assert_eq!(s.protocol_version(), ProtocolVersion::V2);
    assert_eq!(echoed(s, b"after".to_vec()), b"after");
    assert_eq!(served.join().unwrap(), vec![ProtocolVersion::V2]);
}

#[test]
fn writing_to_a_stream_whose_peer_closed_fails_with_a_reset_not_a_wait() {
    // The listener's end closes before any data reaches it (a clean close:
    // nothing unread yet), then the client writes more than the window.
    // Its frames reach a connection where that stream is gone: the
    // sender is reset, as TCP answers a segment for a closed socket.
    let q = queue("v3-closed-peer");
    let options = v3()
        .window(4096)
        .keepalive_interval(std::time::Duration::from_millis(200));
    let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let client = Stream::connect_with(&url(), &q, options.clone()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.shutdown(Shutdown::Both).unwrap();
    drop(server);
    client
        .set_write_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let err = (&client).write_all(&vec![7u8; 1 << 20]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}
