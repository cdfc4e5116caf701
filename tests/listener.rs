//! The listener survives bad requests, and nothing is left on the broker
//! once every stream and listener is dropped.

mod common;

use amiquip::{AmqpProperties, Publish};
use amqp_stream::{Connector, Listener, Stream, StreamOptions};
use common::{broker_channels_of, capture_logs, logs, queue, raw_connection, url};
use std::io::{Read, Write};
use std::net::Shutdown;

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

    let warnings: Vec<String> = logs()
        .into_iter()
        .filter(|l| l.starts_with("WARN") && l.contains(&q))
        .collect();
    assert!(
        warnings.iter().any(|l| l.contains("9 bytes")),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|l| l.contains("reply_to")),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|l| l.contains("no-such-queue")),
        "{warnings:#?}"
    );
    raw.close().unwrap();
}

#[test]
fn dropping_everything_leaves_no_queue_and_no_channel() {
    // Nothing prepared ahead, so every channel belongs to a stream or the
    // listener (`prepared_streams_close_with_their_owner` covers those).
    let options = StreamOptions::new().prepared_streams(0);
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

    // Every queue is gone: a passive declare from another connection says 404.
    let mut raw = raw_connection();
    for name in &names {
        let channel = raw.open_channel(None).unwrap();
        match channel.queue_declare_passive(name.clone()) {
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {}
            other => panic!(
                "queue {name} still exists: {:?}",
                other.map(|q| q.name().to_string())
            ),
        }
    }
    raw.close().unwrap();

    // And the shared connection holds no channel any more.
    if let Some(channels) = broker_channels_of(connector.local_socket_addr().port()) {
        assert_eq!(channels, 0, "channels left open on the broker connection");
    } else {
        eprintln!("rabbitmqctl not available: channel count not checked");
    }
}

/// The channel count of our connection, which must be listed.
fn channels_of(connector: &Connector) -> u32 {
    broker_channels_of(connector.local_socket_addr().port())
        .expect("rabbitmqctl lists our connection (scripts/ensure-broker.sh installs it)")
}

#[test]
fn prepared_streams_serve_connections_and_close_with_their_owner() {
    let prepared = StreamOptions::new().prepared_streams(3);
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
    drop(listener);
    assert_eq!(channels_of(&server_side), 1, "listener's prepared streams");

    // Likewise for the connector: the client stream keeps the connection
    // open, and its channel is the only one left.
    let probe = client.try_clone().unwrap();
    let port = client_side.local_socket_addr().port();
    drop(client_side);
    assert_eq!(
        broker_channels_of(port),
        Some(1),
        "connector's prepared streams"
    );
    drop((probe, client, server));
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
        for stream in accepting.incoming() {
            let failed = stream.is_err();
            results_tx.send(stream).unwrap();
            if failed {
                break;
            }
        }
    });
    // The stream connected before the close is still handed out.
    let mut first = results.recv().unwrap().unwrap();
    let mut hello = [0u8; 5];
    first.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"early");
    // The next accept blocks until the listener is closed from here.
    listener.close();
    let err = results
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("close wakes the blocked accept")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    server.join().unwrap();
    listener.close();
    let refused = Stream::connect(&url(), &q).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}
