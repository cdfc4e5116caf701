//! The listener survives bad requests, and nothing is left on the broker
//! once every stream and listener is dropped.

mod common;

use amiquip::{AmqpProperties, Publish};
use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::raw::{RawClient, next};
use common::{
    broker_channels_of, capture_logs, eventually, holds_tcp_socket_from, logs, queue, queue_state,
    raw_connection, url,
};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

#[test]
fn malformed_requests_are_rejected_logged_and_skipped() {
    capture_logs();
    let q = queue("robust");
    let listener = Listener::bind(&url(), &q).unwrap();

    // A raw peer sends three bad requests, then a good client connects.
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    let with_body = Publish::with_properties(
        b"not empty",
        q.clone(),
        AmqpProperties::default().with_reply_to("somewhere".to_string()),
    );
    channel.basic_publish("", with_body).unwrap();
    channel
        .basic_publish("", Publish::new(b"", q.clone()))
        .unwrap();
    let to_nowhere = Publish::with_properties(
        b"",
        q.clone(),
        AmqpProperties::default().with_reply_to(format!("no-such-queue-{q}")),
    );
    channel.basic_publish("", to_nowhere).unwrap();
    // The broker has queued all three before the good client asks.
    let mut smoother = amiquip::ConfirmSmoother::new();
    let mut acked = 0;
    while acked < 3 {
        acked += smoother.process(confirms.recv().unwrap()).count();
    }

    let good = std::thread::spawn({
        let q = q.clone();
        move || {
            let mut s = Stream::connect(&url(), &q).unwrap();
            s.write_all(b"ping").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        }
    });
    let (mut stream, _) = listener.accept().unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).unwrap();
    assert_eq!(got, "ping");
    stream.write_all(b"pong").unwrap();
    drop(stream);
    assert_eq!(good.join().unwrap(), "pong");

    // The bad requests are checked in order, before the good one; the
    // answer to the missing queue fails side by side with the good
    // client's handshake, and may be logged after it.
    eventually(Duration::from_secs(10), "warnings logged", || {
        let warnings: Vec<String> = logs()
            .into_iter()
            .filter(|l| l.starts_with("WARN") && l.contains(&q))
            .collect();
        let logged = |what: &str| warnings.iter().any(|l| l.contains(what));
        if logged("9 bytes") && logged("reply_to") && logged("no-such-queue") {
            Ok(())
        } else {
            Err(format!("{warnings:#?}"))
        }
    });
    raw.close().unwrap();
}

#[test]
fn dropping_everything_leaves_no_queue_and_no_channel() {
    // Nothing prepared ahead, so every channel belongs to a stream or the
    // listener (`prepared_streams_close_with_their_owner` covers those);
    // version 2, whose streams have queues and channels of their own
    // (version 3's have none: see tests/protocol_v3.rs).
    let options = StreamOptions::new()
        .prepared_streams(0)
        .protocol_version(Some(ProtocolVersion::V2));
    let connector = Connector::open_with(&url(), options).unwrap();
    let q = queue("cleanup");
    let listener = connector.bind(&q).unwrap();
    let mut names = vec![q.clone()];
    for i in 0..3 {
        let accepted = std::thread::scope(|s| {
            let server = s.spawn(|| listener.accept().unwrap().0);
            let mut client = connector.connect(&q).unwrap();
            let mut server = server.join().unwrap();
            client.write_all(format!("stream {i}").as_bytes()).unwrap();
            if i == 0 {
                // A full, clean close from both sides.
                client.shutdown(Shutdown::Write).unwrap();
                let mut got = String::new();
                server.read_to_string(&mut got).unwrap();
                server.shutdown(Shutdown::Write).unwrap();
                client.read_to_string(&mut got).unwrap();
            }
            (client, server)
        });
        names.push(accepted.0.local_addr().unwrap().queue().to_string());
        names.push(accepted.1.local_addr().unwrap().queue().to_string());
        // i > 0: dropped with unread data and no shutdown.
    }
    drop(listener);

    // Every queue goes (the streams' workers finish on their own time):
    // a passive declare from another connection says 404.
    let mut raw = raw_connection();
    for name in &names {
        eventually(Duration::from_secs(10), "queues left behind", || {
            let channel = raw.open_channel(None).unwrap();
            match channel.queue_declare_passive(name.clone()) {
                Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => Ok(()),
                other => Err(format!(
                    "queue {name} still exists: {:?}",
                    other.map(|q| q.name().to_string())
                )),
            }
        });
    }
    raw.close().unwrap();

    // And the shared connection holds no channel any more.
    eventually(
        Duration::from_secs(10),
        "channels left open",
        || match broker_channels_of(connector.local_socket_addr().port()) {
            Some(0) => Ok(()),
            other => Err(format!("{other:?} channels on the broker connection")),
        },
    );
}

/// The channel count of our connection, which must be listed.
fn channels_of(connector: &Connector) -> u32 {
    broker_channels_of(connector.local_socket_addr().port())
        .expect("rabbitmqctl lists our connection (scripts/ensure-broker.sh installs it)")
}

#[test]
fn prepared_streams_serve_connections_and_close_with_their_owner() {
    // Version 2: prepared streams are for streams with a queue of their own.
    let prepared = StreamOptions::new()
        .prepared_streams(3)
        .protocol_version(Some(ProtocolVersion::V2));
    let server_side = Connector::open_with(&url(), prepared.clone()).unwrap();
    let client_side = Connector::open_with(&url(), prepared).unwrap();
    let q = queue("prepared");
    let listener = server_side.bind(&q).unwrap();

    // More connections than are prepared, each checked end to end.
    let mut kept = Vec::new();
    for i in 0..8u8 {
        let mut client = client_side.connect(&q).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[i]).unwrap();
        client.flush().unwrap();
        let mut got = [0u8; 1];
        server.read_exact(&mut got).unwrap();
        server.write_all(&got).unwrap();
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, [i]);
        kept.push((client, server));
    }
    let (client, server) = kept.pop().unwrap();
    drop(kept);

    // Dropping the listener closes its prepared streams before it
    // returns: the server side keeps only the accepted stream's channel.
    // (The streams dropped above close their channels on their own time.)
    drop(listener);
    eventually(
        Duration::from_secs(10),
        "listener's prepared streams",
        || match channels_of(&server_side) {
            1 => Ok(()),
            n => Err(format!("{n} channels")),
        },
    );

    // Likewise for the connector: the client stream keeps the connection
    // open, and its channel is the only one left.
    let probe = client.try_clone().unwrap();
    let port = client_side.local_socket_addr().port();
    drop(client_side);
    eventually(
        Duration::from_secs(10),
        "connector's prepared streams",
        || match broker_channels_of(port) {
            Some(1) => Ok(()),
            other => Err(format!("{other:?} channels")),
        },
    );
    drop((probe, client, server));
}

#[test]
fn dropping_a_closed_listener_returns_once_its_thread_has_let_go_of_the_connection() {
    // As a server stops: close, its accepting thread sees `accept` fail,
    // then the listener and the connector are dropped. The listener's
    // thread ends its `accept` before it closes its prepared streams;
    // the drop must still wait for it, or the connection outlives its
    // last handle (a process exiting then cuts it without a close). Many
    // rounds, one schedule each.
    for round in 1..=20 {
        let connector = Connector::open(&url()).unwrap();
        let port = connector.local_socket_addr().port();
        let listener = connector.bind(&queue("drop-waits")).unwrap();
        listener.close();
        assert!(
            listener.accept().is_err(),
            "round {round}: accept after close"
        );
        drop(listener);
        drop(connector);
        assert!(
            !holds_tcp_socket_from(port),
            "round {round}: the connection from port {port} is still open after its last handle went"
        );
    }
}

#[test]
fn connector_close_closes_the_connection_under_the_streams_and_listeners_on_it() {
    let server_side = Connector::open(&url()).unwrap();
    let client_side = Connector::open(&url()).unwrap();
    let port = server_side.local_socket_addr().port();
    let q = queue("connector-close");
    let listener = server_side.bind(&q).unwrap();
    let mut client = client_side.connect(&q).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"before").unwrap();
    let mut got = [0u8; 6];
    server.read_exact(&mut got).unwrap();

    // Closed with a listener, a stream and prepared streams still on it:
    // the socket is gone when `close` returns, not when they are.
    server_side.close().unwrap();
    assert!(!holds_tcp_socket_from(port), "the socket outlives close");
    assert!(server_side.is_closed());
    server_side.close().unwrap();
    // Everything on it fails, loudly.
    assert!(listener.accept().is_err());
    let written = server.write_all(b"after").and_then(|()| server.flush());
    assert!(
        written.is_err(),
        "a write on a closed connection: {written:?}"
    );
    assert!(server_side.connect(&q).is_err());
    // The peer sees an abortive end, never a clean one.
    let read = client
        .write_all(b"anyone?")
        .and_then(|()| client.flush())
        .and_then(|()| client.read(&mut got));
    assert!(
        read.is_err(),
        "the peer of a closed connection reads {read:?}"
    );
}

#[test]
fn close_wakes_a_blocked_accept_after_the_connected_streams() {
    let q = queue("close");
    let listener = std::sync::Arc::new(Listener::bind(&url(), &q).unwrap());
    let mut early = Stream::connect(&url(), &q).unwrap();
    early.write_all(b"early").unwrap();
    early.flush().unwrap();
    let accepting = std::sync::Arc::clone(&listener);
    let (results_tx, results) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        // Errors are logged and skipped, as a server would: the loop ends
        // only because `incoming` does.
        for stream in accepting.incoming() {
            results_tx.send(stream).unwrap();
        }
    });
    // The stream connected before the close is still handed out.
    let mut first = results.recv().unwrap().unwrap();
    let mut hello = [0u8; 5];
    first.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"early");
    // The next accept blocks until the listener is closed from here; then
    // `incoming` ends, without an error: it was asked to.
    listener.close();
    match results.recv_timeout(Duration::from_secs(10)) {
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        other => panic!("incoming goes on after close: {other:?}"),
    }
    server.join().unwrap();
    // `accept` fails, every time and at once.
    let started = Instant::now();
    for _ in 0..1000 {
        let err = listener.accept().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    listener.close();
    let refused = Stream::connect(&url(), &q).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// What one client of a listener that goes away ends with: refused at
/// connect, or connected and then reset (an abortive end, never a clean
/// EOF), and how long it took from the drop.
fn connect_and_read(
    q: &str,
    options: &StreamOptions,
    connected: impl FnOnce(),
) -> Result<std::io::ErrorKind, String> {
    let started = Instant::now();
    let outcome = match Stream::connect_with(&url(), q, options.clone()) {
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(err.kind()),
        Err(err) => Err(format!("connect failed with {:?}: {err}", err.kind())),
        Ok(mut stream) => {
            connected();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            match stream.read(&mut [0u8; 16]) {
                Ok(0) => Err("a clean EOF from a listener that went away".to_string()),
                Ok(n) => Err(format!("{n} bytes from nowhere")),
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(err.kind()),
                Err(err) => Err(format!("read failed with {:?}: {err}", err.kind())),
            }
        }
    };
    outcome.map_err(|why| format!("{why} (after {:?})", started.elapsed()))
}

/// Clients that wait a minute for their handshake: a test that sees them
/// end sooner knows it was told, not timed out.
fn patient() -> StreamOptions {
    StreamOptions::new()
        .handshake_timeout(Some(Duration::from_secs(60)))
        .keepalive_interval(Duration::from_millis(200))
}

#[test]
fn dropping_a_shared_listener_refuses_every_waiting_client_at_once() {
    const CLIENTS: usize = 3;
    let q = queue("shared-refuse-all");
    let listener = Listener::bind_with(&url(), &q, StreamOptions::new().shared(true)).unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || connect_and_read(&q, &patient(), || {}))
        })
        .collect();
    // One request held by the listener (nobody accepts), the others ready
    // in the queue behind it.
    eventually(
        Duration::from_secs(30),
        "requests queued",
        || match queue_state(&q) {
            Some((ready, 1, 1)) if ready == CLIENTS as u64 - 1 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let dropped = Instant::now();
    drop(listener);
    for client in clients {
        let kind = client.join().unwrap().unwrap();
        assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);
    }
    assert!(
        dropped.elapsed() < Duration::from_secs(10),
        "refused after {:?}",
        dropped.elapsed()
    );
}

/// Streams connected (in the backlog) but never accepted end abortively
/// when the listener goes, as TCP resets a closed listener's backlog.
fn dropping_a_listener_resets_its_backlog(version: ProtocolVersion) {
    const CLIENTS: usize = 3;
    let q = queue("backlog-reset");
    let listener = Listener::bind(&url(), &q).unwrap();
    let options = patient().protocol_version(Some(version));
    let (connected_tx, connected) = crossbeam_channel::unbounded();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let q = q.clone();
            let options = options.clone();
            let connected_tx = connected_tx.clone();
            std::thread::spawn(move || {
                let mut stream = Stream::connect_with(&url(), &q, options.clone()).unwrap();
                connected_tx.send(()).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let started = Instant::now();
                (stream.read(&mut [0u8; 16]), started.elapsed())
            })
        })
        .collect();
    for _ in 0..CLIENTS {
        connected.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    drop(listener);
    for client in clients {
        let (read, took) = client.join().unwrap();
        let err = read.expect_err("a read from a stream the listener dropped fails");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        assert!(took < Duration::from_secs(10), "reset after {took:?}");
    }
}

#[test]
fn dropping_a_listener_resets_its_backlog_v2() {
    dropping_a_listener_resets_its_backlog(ProtocolVersion::V2);
}

#[test]
fn dropping_a_listener_resets_its_backlog_v1() {
    dropping_a_listener_resets_its_backlog(ProtocolVersion::V1);
}

/// Clients connecting while the listener goes: every one is refused or
/// reset, none waits for its handshake timeout. A request on its way to
/// the queue as the broker deletes it is lost without a return, so only
/// a client that notices the deleted queue meets this.
#[test]
fn clients_connecting_while_the_listener_closes_are_refused_or_reset() {
    const CLIENTS: usize = 16;
    let q = queue("close-mid-handshake");
    let listener = Listener::bind(&url(), &q).unwrap();
    let (connected_tx, connected) = crossbeam_channel::unbounded();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let q = q.clone();
            let connected_tx = connected_tx.clone();
            std::thread::spawn(move || {
                connect_and_read(&q, &patient(), || {
                    let _ = connected_tx.send(());
                })
            })
        })
        .collect();
    connected.recv_timeout(Duration::from_secs(30)).unwrap();
    let dropped = Instant::now();
    drop(listener);
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.push(client.join().unwrap());
    }
    let took = dropped.elapsed();
    let failures: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    for l in logs() {
        eprintln!("LOG {l}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_stream_answered_when_its_listener_goes_is_reset_not_closed() {
    let options = StreamOptions::new().prepared_streams(0);
    let q = queue("answered-then-dropped");
    let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let client = RawClient::new(&channel);
    client.syn(&q, true);
    // The listener has answered; its handshake may still be in flight.
    client.syn_ack();
    drop(listener);
    loop {
        let frame = next(client.consumer.receiver());
        let kind = frame.properties.type_().clone().unwrap_or_default();
        client.consumer.ack(frame).unwrap();
        match kind.as_str() {
            "keepalive" | "window" => continue,
            "reset" => break,
            other => panic!("the stream ended with {other:?}, not a reset"),
        }
    }
    raw.close().unwrap();
}

#[test]
fn a_shared_listener_closed_mid_handshake_does_not_give_the_request_to_another() {
    let shared = StreamOptions::new().shared(true).prepared_streams(0);
    let q = queue("shared-once");
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    // The other listener holds a request already (nobody accepts on it),
    // so a request given back would wait in the queue, where it shows.
    let other = Listener::bind_with(&url(), &q, shared.clone()).unwrap();
    let held = RawClient::new(&channel);
    held.syn(&q, true);
    eventually(
        Duration::from_secs(30),
        "the other listener holds one",
        || match queue_state(&q) {
            Some((0, 1, 1)) => Ok(()),
            state => Err(format!("{state:?}")),
        },
    );
    let closing = std::sync::Arc::new(Listener::bind_with(&url(), &q, shared.clone()).unwrap());
    let accepting = std::thread::spawn({
        let closing = std::sync::Arc::clone(&closing);
        move || closing.accept().map(|(stream, _)| stream)
    });
    let client = RawClient::new(&channel);
    client.syn(&q, true);
    client.syn_ack();
    closing.close();
    // Served once (by the closing listener, whether or not it got as far
    // as handing the stream out), never again.
    let _ = accepting.join().unwrap();
    eventually(
        Duration::from_secs(30),
        "the closing listener gone",
        || match queue_state(&q) {
            Some((_, _, 1)) => Ok(()),
            state => Err(format!("{state:?}")),
        },
    );
    assert_eq!(
        queue_state(&q),
        Some((0, 1, 1)),
        "the answered request went back to the queue"
    );
    drop(other);
    raw.close().unwrap();
}

#[test]
fn incoming_ends_after_a_lost_connection_instead_of_spinning() {
    let relay = common::relay::Relay::to_broker();
    let connector = Connector::open(&relay.url()).unwrap();
    let listener = connector.bind(&queue("lost")).unwrap();
    relay.cut();
    assert!(connector.wait_closed_timeout(Duration::from_secs(20)));
    // A loop that logs errors and goes on: the loss once, then the end.
    let errors: Vec<std::io::Error> = listener
        .incoming()
        .take(100)
        .map(|s| s.unwrap_err())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(listener.incoming().next().is_none());
    let err = listener.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
}
