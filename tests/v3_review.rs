//! Hostile review of protocol version 3: what version 2 noticed because a
//! stream's queue went with it, version 3 must notice although the
//! connection's queue outlives every stream on it.

mod common;

use amqp_stream::{Connector, ProtocolVersion, StreamOptions};
use common::{eventually, queue, url};
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
fn writing_after_the_peer_closed_fails(version: ProtocolVersion, one_connector: bool) {
    let q = queue("v3r-write-after-close");
    let server = Connector::open_with(&url(), pinned(version)).unwrap();
    let listener = server.bind(&q).unwrap();
    let other;
    let client = if one_connector {
        &server
    } else {
        other = Connector::open_with(&url(), pinned(version)).unwrap();
        &other
    };
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
    writing_after_the_peer_closed_fails(ProtocolVersion::V2, false);
}

#[test]
fn v3_writing_after_the_peer_closed_fails() {
    writing_after_the_peer_closed_fails(ProtocolVersion::V3, false);
}

/// Both ends on one connection: the peer's frames come back to the
/// writer's own connection queue.
#[test]
fn v3_writing_after_the_peer_on_the_same_connector_closed_fails() {
    writing_after_the_peer_closed_fails(ProtocolVersion::V3, true);
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
    // How soon the answer comes varies: try until enough clients gave up.
    for attempt in 0..400 {
        if gave_up >= 10 {
            break;
        }
        let timeout = Duration::from_micros(100 + 50 * (attempt % 20));
        match client.connect_timeout(&q, timeout) {
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

/// A peer that ignores the window floods a version-3 stream nobody is
/// reading at the moment. Version 2's consumer takes at most `prefetch`
/// messages from the broker; version 3 consumes its connection's queue
/// with no ack and no prefetch, and the demultiplexer hands every
/// delivery to the stream's unbounded channel, where it waits until a
/// reader, a writer waiting for credit or the worker's keepalive tick
/// sorts it. Until then the flood grows this process's memory as fast as
/// the broker delivers: it must stay bounded by about the window.
#[test]
fn v3_a_flood_into_a_stream_nobody_reads_stays_bounded() {
    const MIB: u64 = 1 << 20;
    const FRAMES: u64 = 160;
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .keepalive_interval(Duration::from_secs(60));
    let q = queue("v3r-flood");
    let server = Connector::open_with(&url(), options.clone()).unwrap();
    let listener = server.bind(&q).unwrap();
    let client = Connector::open_with(&url(), options).unwrap();
    let victim = client.connect(&q).unwrap();
    let (_peer, _) = listener.accept().unwrap();
    let local = victim.local_addr().unwrap();
    let (conn_queue, id) = local.queue().split_once('#').expect("QUEUE#ID");
    let (conn_queue, id) = (conn_queue.to_string(), id.to_string());
    let memory_before = common::resident_bytes();

    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    // The forger is in this process too: it waits for each frame's
    // confirm, so that what it buffers is not what is measured.
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    let body = vec![0x5au8; MIB as usize];
    for seq in 1..=FRAMES {
        let properties = amiquip::AmqpProperties::default()
            .with_type_("data".to_string())
            .with_message_id(seq.to_string())
            .with_correlation_id(id.clone())
            .with_app_id("forger".to_string());
        common::raw::publish_with(&channel, &conn_queue, &body, properties);
        match confirms.recv_timeout(Duration::from_secs(10)) {
            Ok(amiquip::Confirm::Ack(_)) => {}
            other => panic!("frame {seq} not confirmed: {other:?}"),
        }
    }
    // Everything published has left the broker for our process.
    common::eventually(
        Duration::from_secs(60),
        "the flood delivered",
        || match common::queue_depth(&conn_queue) {
            Some((0, _)) => Ok(()),
            other => Err(format!("{conn_queue:?} holds {other:?}")),
        },
    );
    let grown = common::resident_bytes().saturating_sub(memory_before);
    eprintln!(
        "flood of {FRAMES} MiB into a stream with a 1 MiB window nobody reads: memory +{} MiB",
        grown / MIB
    );
    assert!(
        grown < 48 * MIB,
        "memory grew {} MiB while {FRAMES} MiB were forged into a 1 MiB window",
        grown / MIB
    );
    // And the stream fails as the flood demands.
    victim
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let failure = (&victim).read_to_end(&mut sink).unwrap_err();
    assert_eq!(failure.kind(), ErrorKind::InvalidData, "{failure}");
    drop(raw.close());
}

/// A listener's queue that a connector learned takes version 3 is served
/// next by a raw version-1 (Go-like) server, which answers each SYN to its
/// `reply_to` and knows nothing of stream ids. The connector's remembered
/// version-3 SYN is answered with a SYN-ACK that names no stream: it must
/// be recognised as an older listener's answer at once (not wait out the
/// handshake timeout), the connector must ask again as version 2 and get
/// a working stream, and the raw server's stream for the first SYN, which
/// no client will ever use, must end (a FIN) rather than be held for ever.
#[test]
fn a_remembered_version_3_connect_to_a_restarted_raw_v1_server_works() {
    use amiquip::{AmqpProperties, ConsumerOptions};
    use common::raw::{exclusive_auto_delete, next, publish_with};
    let q = queue("v3r-raw-v1-restart");
    // Far longer than `next` waits for the second SYN: one that comes only
    // after the first handshake timed out fails the test.
    let client = Connector::open_with(
        &url(),
        StreamOptions::new().handshake_timeout(Some(Duration::from_secs(120))),
    )
    .unwrap();
    {
        let listener = amqp_stream::Listener::bind(&url(), &q).unwrap();
        for expected in [ProtocolVersion::V2, ProtocolVersion::V3] {
            let s = client.connect(&q).unwrap();
            assert_eq!(s.protocol_version(), expected);
            let (accepted, _) = listener.accept().unwrap();
            drop(accepted);
        }
    }
    // The raw version-1 server on the same queue: it answers every SYN.
    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    common::eventually(
        Duration::from_secs(20),
        "the old listener's queue goes",
        || match common::queue_depth(&q) {
            None => Ok(()),
            Some(depth) => Err(format!("{q:?} still there: {depth:?}")),
        },
    );
    let requests = channel
        .queue_declare(q.clone(), exclusive_auto_delete())
        .unwrap()
        .consume(ConsumerOptions::default())
        .unwrap();
    let connecting = std::thread::spawn({
        let q = q.clone();
        move || client.connect(&q)
    });
    // Answers the next SYN as a version-1 server: its queue S, consumed,
    // named in an empty SYN-ACK to the client's `reply_to`.
    let accept = || {
        let syn = next(requests.receiver());
        assert!(syn.body.is_empty(), "a SYN has an empty body");
        let c_name = syn.properties.reply_to().clone().expect("reply_to");
        requests.ack(syn).unwrap();
        let s = channel.queue_declare("", exclusive_auto_delete()).unwrap();
        let data = s
            .consume(ConsumerOptions {
                exclusive: true,
                ..Default::default()
            })
            .unwrap();
        publish_with(
            &channel,
            &c_name,
            b"",
            AmqpProperties::default().with_reply_to(s.name().to_string()),
        );
        (c_name, data)
    };
    let (first_c, first) = accept();
    assert!(
        first_c.starts_with("amqp-stream.conn."),
        "the first SYN is the remembered version-3 one, from the connection's queue: {first_c}"
    );
    // The second SYN comes at once, as version 2 from a queue of its own.
    let (second_c, second) = accept();
    assert_ne!(second_c, first_c);
    let stream = connecting
        .join()
        .unwrap()
        .expect("connect to a raw v1 server after a restart");
    assert_eq!(stream.protocol_version(), ProtocolVersion::V1);
    // The first SYN-ACK's stream is ended: a FIN (empty body), nothing else.
    let fin = next(first.receiver());
    assert!(fin.body.is_empty(), "the unused stream got {:?}", fin.body);
    first.ack(fin).unwrap();
    // The stream works both ways.
    (&stream).write_all(b"hello v1").unwrap();
    (&stream).flush().unwrap();
    let data = next(second.receiver());
    assert_eq!(&data.body[..], b"hello v1");
    second.ack(data).unwrap();
    publish_with(&channel, &second_c, b"back", AmqpProperties::default());
    let mut back = [0; 4];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&stream).read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back");
    drop(stream);
    raw.close().unwrap();
}

/// As above, with a listener built before version 3 taking the queue
/// over (played by a raw peer): it takes the remembered version-3 SYN
/// for a version-2 one (it knows nothing of stream ids) and answers its
/// `reply_to`, the client connection's queue, with a version-2 SYN-ACK
/// (version and window headers) that names no stream. That answer must
/// count as a refusal at once, as a version-1 one does: the connector
/// asks again as version 2 and gets a working stream, rather than wait
/// out its handshake timeout; and the old listener's stream for the
/// first SYN, which no client will use, is reset.
#[test]
fn a_remembered_version_3_connect_to_a_listener_built_before_version_3_falls_back_at_once() {
    use amiquip::{AmqpProperties, AmqpValue, ConsumerOptions, FieldTable};
    use common::raw::{exclusive_auto_delete, next, publish_with};
    let q = queue("v3r-raw-old-v2");
    // Far longer than `next` waits for the second SYN.
    let client = Connector::open_with(
        &url(),
        StreamOptions::new().handshake_timeout(Some(Duration::from_secs(120))),
    )
    .unwrap();
    {
        let listener = amqp_stream::Listener::bind(&url(), &q).unwrap();
        for expected in [ProtocolVersion::V2, ProtocolVersion::V3] {
            let s = client.connect(&q).unwrap();
            assert_eq!(s.protocol_version(), expected);
            drop(listener.accept().unwrap());
        }
    }
    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    eventually(
        Duration::from_secs(20),
        "the old listener's queue goes",
        || match common::queue_depth(&q) {
            None => Ok(()),
            Some(depth) => Err(format!("{q:?} still there: {depth:?}")),
        },
    );
    let requests = channel
        .queue_declare(q.clone(), exclusive_auto_delete())
        .unwrap()
        .consume(ConsumerOptions::default())
        .unwrap();
    let connecting = std::thread::spawn({
        let q = q.clone();
        move || client.connect(&q)
    });
    // A version-2 SYN-ACK as a listener built before version 3 sends it.
    let v2_answer = |own: &str| {
        let mut headers = FieldTable::new();
        headers.insert(
            "x-amqp-stream-version".to_string(),
            AmqpValue::LongLongInt(2),
        );
        headers.insert(
            "x-amqp-stream-window".to_string(),
            AmqpValue::LongLongInt(1 << 20),
        );
        AmqpProperties::default()
            .with_reply_to(own.to_string())
            .with_headers(headers)
    };
    let accept = || {
        let syn = next(requests.receiver());
        let c_name = syn.properties.reply_to().clone().expect("reply_to");
        requests.ack(syn).unwrap();
        let s = channel.queue_declare("", exclusive_auto_delete()).unwrap();
        let data = s
            .consume(ConsumerOptions {
                exclusive: true,
                ..Default::default()
            })
            .unwrap();
        publish_with(&channel, &c_name, b"", v2_answer(s.name()));
        (c_name, data)
    };
    let (first_c, first) = accept();
    assert!(
        first_c.starts_with("amqp-stream.conn."),
        "the first SYN is the remembered version-3 one: {first_c}"
    );
    // The second SYN comes at once, as version 2 from a queue of its own.
    let (second_c, second) = accept();
    assert_ne!(second_c, first_c);
    let stream = connecting
        .join()
        .unwrap()
        .expect("connect to a listener built before version 3");
    assert_eq!(stream.protocol_version(), ProtocolVersion::V2);
    // The first SYN-ACK's stream is reset.
    let reset = next(first.receiver());
    assert_eq!(
        reset.properties.type_().as_deref(),
        Some("reset"),
        "the unused stream got {reset:?}"
    );
    first.ack(reset).unwrap();
    // The stream works.
    (&stream).write_all(b"hello v2").unwrap();
    (&stream).flush().unwrap();
    // Keepalives may come first: the unused stream's end waits a few
    // seconds (untied answers' grace).
    let data = loop {
        let delivery = next(second.receiver());
        if delivery.properties.type_().as_deref() != Some("keepalive") {
            break delivery;
        }
        second.ack(delivery).unwrap();
    };
    assert_eq!(data.properties.type_().as_deref(), Some("data"));
    assert_eq!(&data.body[..], b"hello v2");
    second.ack(data).unwrap();
    std::mem::forget(stream);
    raw.close().unwrap();
}

/// Two streams of one connector that remembered version 3 connect at
/// once to a raw version-1 server: its SYN-ACKs name no stream, so
/// nothing tells which of the two each answers. Both must ask again as
/// version 2 at once (neither waits out its handshake timeout), both get
/// a working stream, and each of the version-1 server's streams set up
/// for a version-3 SYN is ended with a FIN.
#[test]
fn two_remembered_version_3_connects_at_once_to_a_raw_v1_server_both_fall_back() {
    use amiquip::{AmqpProperties, ConsumerOptions};
    use common::raw::{exclusive_auto_delete, next, publish_with};
    use std::collections::HashMap;
    let q = queue("v3r-raw-v1-two");
    let client = Connector::open_with(
        &url(),
        StreamOptions::new().handshake_timeout(Some(Duration::from_secs(120))),
    )
    .unwrap();
    {
        let listener = amqp_stream::Listener::bind(&url(), &q).unwrap();
        for expected in [ProtocolVersion::V2, ProtocolVersion::V3] {
            let s = client.connect(&q).unwrap();
            assert_eq!(s.protocol_version(), expected);
            drop(listener.accept().unwrap());
        }
    }
    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    common::eventually(
        Duration::from_secs(20),
        "the old listener's queue goes",
        || match common::queue_depth(&q) {
            None => Ok(()),
            Some(depth) => Err(format!("{q:?} still there: {depth:?}")),
        },
    );
    let requests = channel
        .queue_declare(q.clone(), exclusive_auto_delete())
        .unwrap()
        .consume(ConsumerOptions::default())
        .unwrap();
    let connecting: Vec<_> = (0..2)
        .map(|_| {
            let (client, q) = (client.clone(), q.clone());
            std::thread::spawn(move || client.connect(&q))
        })
        .collect();
    // Two version-3 SYNs (from the connection's queue) and two version-2
    // ones (each from a queue of its own), in whatever order they come.
    let mut answered = HashMap::new();
    for _ in 0..4 {
        let syn = next(requests.receiver());
        let c_name = syn.properties.reply_to().clone().expect("reply_to");
        requests.ack(syn).unwrap();
        let s = channel.queue_declare("", exclusive_auto_delete()).unwrap();
        let data = s
            .consume(ConsumerOptions {
                exclusive: true,
                ..Default::default()
            })
            .unwrap();
        publish_with(
            &channel,
            &c_name,
            b"",
            AmqpProperties::default().with_reply_to(s.name().to_string()),
        );
        answered.entry(c_name).or_insert_with(Vec::new).push(data);
    }
    let streams: Vec<_> = connecting
        .into_iter()
        .map(|c| c.join().unwrap().expect("a fallen-back connect"))
        .collect();
    // The version-3 SYNs shared the connection's queue as `reply_to`.
    let unused: Vec<_> = answered
        .iter()
        .filter(|(c_name, _)| c_name.starts_with("amqp-stream.conn."))
        .flat_map(|(_, consumers)| consumers)
        .collect();
    assert_eq!(unused.len(), 2, "two version-3 SYNs: {:?}", answered.keys());
    for consumer in unused {
        let fin = next(consumer.receiver());
        assert!(fin.body.is_empty(), "an unused stream got {:?}", fin.body);
    }
    for (n, stream) in streams.iter().enumerate() {
        assert_eq!(stream.protocol_version(), ProtocolVersion::V1);
        let own = stream.local_addr().unwrap().queue().to_string();
        let consumers = &answered[&own];
        assert_eq!(consumers.len(), 1, "one SYN from {own:?}");
        let said = format!("stream {n}");
        (&*stream).write_all(said.as_bytes()).unwrap();
        (&*stream).flush().unwrap();
        let data = next(consumers[0].receiver());
        assert_eq!(data.body, said.as_bytes());
    }
    // Closed while every raw consumer is still there: amiquip fails the
    // whole connection when a delivery comes for a consumer dropped first.
    raw.close().unwrap();
    drop(streams);
}

/// An operator deletes a connection's stream queue while its streams
/// carry data: every stream on that connection fails loudly, so do their
/// peers (their frames now come back), and the connector's next stream
/// gets a new queue and works.
#[test]
fn deleting_a_connections_queue_fails_its_streams_on_both_ends_and_the_next_stream_works() {
    let q = queue("v3r-queue-deleted");
    let server = Connector::open_with(&url(), pinned(ProtocolVersion::V3)).unwrap();
    let listener = server.bind(&q).unwrap();
    let client = Connector::open_with(&url(), pinned(ProtocolVersion::V3)).unwrap();
    let stream = client.connect(&q).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    (&stream).write_all(b"before").unwrap();
    let mut got = [0u8; 6];
    (&accepted).read_exact(&mut got).unwrap();
    let local = stream.local_addr().unwrap();
    let conn_queue = local.queue().split_once('#').unwrap().0.to_string();
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", &conn_queue])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for (end, s) in [("client", &stream), ("server", &accepted)] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        let err = (&*s).read_to_end(&mut rest).unwrap_err();
        assert!(is_loud(err.kind()), "{end}: {:?}: {err}", err.kind());
    }
    let again = client.connect(&q).unwrap();
    let (accepted_again, _) = listener.accept().unwrap();
    (&again).write_all(b"after").unwrap();
    let mut got = [0u8; 5];
    (&accepted_again).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
    assert_ne!(
        again
            .local_addr()
            .unwrap()
            .queue()
            .split_once('#')
            .unwrap()
            .0,
        conn_queue
    );
}

/// A version-3 stream's broker connection is cut, stalled or left
/// half-open (through a relay, heartbeat 1 s) while both ends block in a
/// read: this end fails ConnectionAborted, the peer on a healthy
/// connection ConnectionReset (the lost connection's queue is gone, so
/// its keepalives come back), both within the bound.
fn a_lost_version_3_connection_is_noticed(
    fault: &str,
    break_it: impl FnOnce(&common::relay::Relay),
) {
    const BOUND: Duration = Duration::from_secs(20);
    let relay = common::relay::Relay::to_broker();
    let options = pinned(ProtocolVersion::V3);
    let client =
        Connector::open_with(&format!("{}?heartbeat=1", relay.url()), options.clone()).unwrap();
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("v3r-lost");
    let listener = server.bind(&q).unwrap();
    let near = client.connect(&q).unwrap();
    let (far, _) = listener.accept().unwrap();
    assert_eq!(near.protocol_version(), ProtocolVersion::V3);
    let mut byte = [0u8; 1];
    (&near).write_all(b"?").unwrap();
    (&far).read_exact(&mut byte).unwrap();
    (&far).write_all(b"!").unwrap();
    (&near).read_exact(&mut byte).unwrap();
    for stream in [&near, &far] {
        stream.set_read_timeout(Some(BOUND)).unwrap();
    }
    let reading = |stream: amqp_stream::Stream| {
        std::thread::spawn(move || {
            let result = (&stream).read(&mut [0u8; 16]);
            (result, Instant::now())
        })
    };
    let (near_read, far_read) = (reading(near), reading(far));
    let broken = Instant::now();
    break_it(&relay);
    let (near_result, near_at) = near_read.join().unwrap();
    let (far_result, far_at) = far_read.join().unwrap();
    let near_err = near_result.unwrap_err();
    assert_eq!(
        near_err.kind(),
        ErrorKind::ConnectionAborted,
        "{fault}: {near_err}"
    );
    let far_err = far_result.unwrap_err();
    assert_eq!(
        far_err.kind(),
        ErrorKind::ConnectionReset,
        "{fault}: {far_err}"
    );
    eprintln!(
        "v3 {fault}: noticed here after {:?}, at the peer after {:?}",
        near_at - broken,
        far_at - broken
    );
}

#[test]
fn a_cut_version_3_connection_is_noticed_by_both_ends() {
    a_lost_version_3_connection_is_noticed("cut", common::relay::Relay::cut);
}

#[test]
fn a_stalled_version_3_connection_is_noticed_by_both_ends() {
    a_lost_version_3_connection_is_noticed("stalled", common::relay::Relay::stall);
}

#[test]
fn a_half_open_version_3_connection_is_noticed_by_both_ends() {
    a_lost_version_3_connection_is_noticed("half-open", common::relay::Relay::half_open);
}

/// Both ends close cleanly (each sends its FIN), but this end's reader
/// has not taken the peer's FIN yet while the peer's stream is already
/// gone. Its worker must not keep sending keepalives to the gone stream
/// (version 3 answers those with a reset, which would turn the clean
/// close into a failed flush); the FIN waiting in the inbox is enough to
/// know the peer sends nothing more.
#[test]
fn v3_a_clean_close_stays_clean_while_the_reader_is_slow() {
    common::capture_logs();
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .keepalive_interval(Duration::from_millis(50));
    let q = queue("v3r-slow-clean-close");
    let server = Connector::open_with(&url(), options.clone()).unwrap();
    let listener = server.bind(&q).unwrap();
    let client = Connector::open_with(&url(), options).unwrap();
    let near = client.connect(&q).unwrap();
    let (far, _) = listener.accept().unwrap();
    let far_name = far.local_addr().unwrap().queue().to_string();
    let far_id = far_name.split_once('#').unwrap().1.to_string();
    (&near).write_all(b"ping").unwrap();
    near.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    (&far).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ping");
    (&far).write_all(b"pong").unwrap();
    far.shutdown(std::net::Shutdown::Write).unwrap();
    drop(far);
    let closed = format!("stream {far_name} closed");
    eventually(Duration::from_secs(10), "the far end closes", || {
        common::logs()
            .iter()
            .any(|line| line.contains(&closed))
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    // Twenty keepalive intervals in which our reader takes nothing.
    let stray = format!("a frame for stream {far_id:?}");
    let quiet_until = Instant::now() + Duration::from_secs(1);
    let mut strays = 0;
    while Instant::now() < quiet_until && strays == 0 {
        strays = common::logs()
            .iter()
            .filter(|line| line.contains(&stray))
            .count();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(strays, 0, "frames went to the closed far end");
    let mut back = Vec::new();
    (&near).read_to_end(&mut back).unwrap();
    assert_eq!(back, b"pong");
    (&near).flush().unwrap();
}
