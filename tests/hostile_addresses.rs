//! Addresses a peer names (a SYN's or SYN-ACK's `reply_to`, a stray
//! frame's) that no peer of the protocol can own. RabbitMQ fails the whole
//! connection (internal error 541) that publishes to a malformed direct
//! reply-to name such as `amq.rabbitmq.reply-to.a.b`: one message from
//! anyone who may publish in the virtual host must not be a lever that
//! kills every stream on our connection. A raw amiquip peer sends the
//! messages.

mod common;

use amiquip::{AmqpProperties, AmqpValue, ConsumerOptions, FieldTable};
use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::raw::{exclusive_auto_delete, next, publish_with};
use common::{queue, raw_connection, url};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// The name that makes RabbitMQ close the connection that publishes to it.
const HOSTILE: &str = "amq.rabbitmq.reply-to.a.b";

/// A window as the raw peer offers it.
const WINDOW: i64 = 1 << 20;

fn pinned(version: ProtocolVersion) -> StreamOptions {
    StreamOptions::new()
        .protocol_version(Some(version))
        .handshake_timeout(Some(Duration::from_secs(20)))
}

/// One message each way between `a` and `b`, flushed: both ends' broker
/// connections still carry their streams.
fn round_trip(a: &Stream, b: &Stream, what: &str) {
    for (from, to) in [(a, b), (b, a)] {
        to.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let said = format!("{what}: {}", from.local_addr().unwrap());
        (&*from)
            .write_all(said.as_bytes())
            .unwrap_or_else(|err| panic!("{what}: write: {err}"));
        (&*from)
            .flush()
            .unwrap_or_else(|err| panic!("{what}: flush: {err}"));
        let mut heard = vec![0; said.len()];
        (&*to)
            .read_exact(&mut heard)
            .unwrap_or_else(|err| panic!("{what}: read: {err}"));
        assert_eq!(heard, said.as_bytes(), "{what}");
    }
}

/// Handshake headers: `version`, a window, a stream id if given.
fn headers(version: i64, stream_id: Option<&str>) -> FieldTable {
    let mut headers = FieldTable::new();
    headers.insert(
        "x-amqp-stream-version".to_string(),
        AmqpValue::LongLongInt(version),
    );
    headers.insert(
        "x-amqp-stream-window".to_string(),
        AmqpValue::LongLongInt(WINDOW),
    );
    if let Some(id) = stream_id {
        headers.insert(
            "x-amqp-stream-id".to_string(),
            AmqpValue::LongString(id.to_string()),
        );
    }
    headers
}

/// SYNs of every version whose `reply_to` is `HOSTILE`.
fn hostile_syns() -> Vec<AmqpProperties> {
    let base = AmqpProperties::default().with_reply_to(HOSTILE.to_string());
    vec![
        base.clone(),
        base.clone().with_headers(headers(2, None)),
        base.with_headers(headers(3, Some("0123456789abcdef0123456789abcdef"))),
    ]
}

/// A listener pinned to `version` with an accepted stream gets SYNs of
/// every version naming `HOSTILE` (each either answered or refused, both
/// to its `reply_to`): it keeps accepting, and the stream it accepted
/// before keeps working.
fn hostile_syns_leave_the_listener_running(version: ProtocolVersion) {
    let q = queue("hostile-syn");
    let listener = Listener::bind_with(&url(), &q, pinned(version)).unwrap();
    let connector = Connector::open_with(&url(), pinned(version)).unwrap();
    let client = connector.connect(&q).unwrap();
    let (server, _) = listener.accept().unwrap();
    assert_eq!(server.protocol_version(), version);
    round_trip(&client, &server, "before");
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    common::capture_logs();
    let syns = hostile_syns();
    for syn in &syns {
        publish_with(&channel, &q, b"", syn.clone());
    }
    // The listener says so when it rejects a request. Its queue is
    // exclusive to its connection: gone, the connection is.
    common::eventually(
        Duration::from_secs(20),
        "the listener rejects the hostile requests",
        || {
            assert!(
                common::queue_depth(&q).is_some(),
                "the listener's queue is gone: a hostile SYN killed its connection"
            );
            let rejected = common::logs()
                .iter()
                .filter(|line| line.contains(&format!("{q:?}: rejected")) && line.contains(HOSTILE))
                .count();
            match rejected {
                n if n == syns.len() => Ok(()),
                n => Err(format!("{n} of {} rejected", syns.len())),
            }
        },
    );
    for n in 0..2 {
        let next_client = connector
            .connect(&q)
            .unwrap_or_else(|err| panic!("connect {n} after the hostile SYNs: {err}"));
        let (next_server, _) = listener.accept().unwrap();
        round_trip(&next_client, &next_server, "a stream accepted after");
        round_trip(&client, &server, "the stream accepted before");
    }
    raw.close().unwrap();
}

#[test]
fn hostile_syn_reply_to_leaves_a_v1_listener_running() {
    hostile_syns_leave_the_listener_running(ProtocolVersion::V1);
}

#[test]
fn hostile_syn_reply_to_leaves_a_v2_listener_running() {
    hostile_syns_leave_the_listener_running(ProtocolVersion::V2);
}

#[test]
fn hostile_syn_reply_to_leaves_a_v3_listener_running() {
    hostile_syns_leave_the_listener_running(ProtocolVersion::V3);
}

/// A version-3 stream pair on two connections (listener's, client's).
fn v3_pair(tag: &str) -> (Listener, Connector, Stream, Stream) {
    let q = queue(tag);
    let options = pinned(ProtocolVersion::V3);
    let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let connector = Connector::open_with(&url(), options).unwrap();
    let client = connector.connect(&q).unwrap();
    let (server, _) = listener.accept().unwrap();
    round_trip(&client, &server, "before");
    (listener, connector, client, server)
}

/// The connection queue a version-3 stream receives on.
fn connection_queue(stream: &Stream) -> String {
    let addr = stream.local_addr().unwrap();
    let (queue, _id) = addr.queue().split_once('#').expect("QUEUE#ID");
    assert!(queue.starts_with("amqp-stream.conn."), "{queue}");
    queue.to_string()
}

/// Waits until the broker has confirmed the first `published` messages
/// of a channel, whose confirms `confirms` listens to (in any order, one
/// by one or several at once).
fn await_confirms(confirms: &crossbeam_channel::Receiver<amiquip::Confirm>, published: u64) {
    let mut confirmed = std::collections::BTreeSet::new();
    while (confirmed.len() as u64) < published {
        match confirms.recv_timeout(Duration::from_secs(60)).unwrap() {
            amiquip::Confirm::Ack(payload) if payload.multiple => {
                confirmed.extend(1..=payload.delivery_tag)
            }
            amiquip::Confirm::Ack(payload) => {
                confirmed.insert(payload.delivery_tag);
            }
            nack => panic!("the broker refused a message: {nack:?}"),
        }
    }
}

/// Publishes each of `messages` to both ends' connection queues, waits
/// for the broker's confirms (so whatever either end publishes next is
/// queued behind them), then checks that the stream pair still works.
fn both_ends_carry_on_after(tag: &str, messages: &[(Vec<u8>, AmqpProperties)]) {
    let (_listener, _connector, client, server) = v3_pair(tag);
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    let mut published = 0;
    for end in [&client, &server] {
        let conn_queue = connection_queue(end);
        for (body, properties) in messages {
            publish_with(&channel, &conn_queue, body, properties.clone());
            published += 1;
        }
    }
    await_confirms(&confirms, published);
    // Each connection's consumer has handled the messages before it hands
    // over what the round trips send; each answer it publishes goes
    // before the round trip's frames on its publishing channel.
    for n in 0..2 {
        round_trip(&client, &server, &format!("round trip {n} after"));
    }
    raw.close().unwrap();
}

/// A data frame for a stream id nobody holds, from a `reply_to` no peer
/// can own, to each end's connection queue: not answered there.
#[test]
fn a_stray_frame_naming_an_amq_reply_to_leaves_a_v3_connection_running() {
    let stray = AmqpProperties::default()
        .with_type_("data".to_string())
        .with_message_id("1".to_string())
        .with_correlation_id("0123456789abcdef0123456789abcdef".to_string())
        .with_app_id("fedcba9876543210fedcba9876543210".to_string())
        .with_reply_to(HOSTILE.to_string());
    both_ends_carry_on_after("hostile-stray", &[(b"x".to_vec(), stray)]);
}

/// An empty "version-1 answer" (empty body, `reply_to`, nothing else)
/// naming a queue no peer can own, to each end's connection queue: its
/// queue is not sent a FIN.
#[test]
fn an_empty_v1_answer_naming_an_amq_queue_leaves_a_v3_connection_running() {
    let answer = AmqpProperties::default().with_reply_to(HOSTILE.to_string());
    both_ends_carry_on_after("hostile-v1-answer", &[(Vec::new(), answer)]);
}

/// Stray frames are answered (a reset to their sender's connection queue)
/// at a bounded rate, at most 100 a second after a burst of 100, and only
/// to a queue named like a version-3 connection's: a flood of them makes
/// a connection publish neither a flood nor anything to a queue of
/// another kind.
#[test]
fn stray_frames_are_answered_at_a_bounded_rate_and_only_to_connection_queues() {
    const FLOOD: u64 = 2000;
    let (_listener, _connector, client, server) = v3_pair("stray-rate");
    let conn_queue = connection_queue(&client);
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    // Where the answers go: a queue named like a connection's, and ones
    // not (one only begins like it).
    let like_a_connection = format!("amqp-stream.conn.{}", uuid::Uuid::new_v4());
    let other = queue("stray-rate-other");
    let prefix_only = format!("amqp-stream.conn.not-a-uuid-{}", uuid::Uuid::new_v4());
    for name in [&like_a_connection, &other, &prefix_only] {
        channel
            .queue_declare(name.clone(), exclusive_auto_delete())
            .unwrap();
    }
    let stray = |reply_to: &str| {
        AmqpProperties::default()
            .with_type_("keepalive".to_string())
            .with_correlation_id("0123456789abcdef0123456789abcdef".to_string())
            .with_app_id("fedcba9876543210fedcba9876543210".to_string())
            .with_reply_to(reply_to.to_string())
    };
    let started = Instant::now();
    publish_with(&channel, &conn_queue, b"", stray(&other));
    publish_with(&channel, &conn_queue, b"", stray(&prefix_only));
    for _ in 0..FLOOD {
        publish_with(&channel, &conn_queue, b"", stray(&like_a_connection));
    }
    await_confirms(&confirms, FLOOD + 2);
    // The client's connection has handled the flood once it hands over
    // the server's next frame; its answers are published before the
    // client's reply, so they are queued once that is confirmed.
    round_trip(&server, &client, "after the flood");
    let elapsed = started.elapsed().as_secs_f64();
    let answered = common::queue_depth(&like_a_connection).unwrap().0;
    let bound = 100 + (100.0 * elapsed).ceil() as u64;
    eprintln!("{answered} of {FLOOD} stray frames answered in {elapsed:.2} s (bound {bound})");
    assert!(answered >= 1, "stray frames are answered");
    assert!(
        answered <= bound,
        "{answered} of {FLOOD} stray frames answered in {elapsed:.2} s: more than {bound}"
    );
    for name in [&other, &prefix_only] {
        assert_eq!(
            common::queue_depth(name).unwrap().0,
            0,
            "a stray frame's answer went to {name:?}, not named like a connection's queue"
        );
    }
    raw.close().unwrap();
}

/// A SYN-ACK's properties for a SYN.
type AnswerTo = dyn FnOnce(&amiquip::Delivery) -> AmqpProperties;

/// A hostile "listener": a raw peer on its own control queue that answers
/// the next SYN with `answer(syn)` as the SYN-ACK's properties.
fn hostile_listener_answers(
    connector: &Connector,
    answer: impl FnOnce(&amiquip::Delivery) -> AmqpProperties,
) -> std::io::Error {
    let q = queue("hostile-listener");
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let requests = channel
        .queue_declare(q.clone(), exclusive_auto_delete())
        .unwrap()
        .consume(ConsumerOptions::default())
        .unwrap();
    let connecting = std::thread::spawn({
        let (connector, q) = (connector.clone(), q.clone());
        move || {
            connector
                .connect(&q)
                .map(|stream| stream.protocol_version())
        }
    });
    let syn = next(requests.receiver());
    let client = syn.properties.reply_to().clone().expect("reply_to");
    let properties = answer(&syn);
    requests.ack(syn).unwrap();
    publish_with(&channel, &client, b"", properties);
    let outcome = connecting.join().unwrap();
    raw.close().unwrap();
    match outcome {
        Ok(version) => panic!("connected (version {version}) to a listener naming {HOSTILE:?}"),
        Err(err) => err,
    }
}

/// A connector with streams of version 2 and 3 to a real listener
/// connects to a hostile one whose SYN-ACK names `HOSTILE` as its queue:
/// the connect fails saying so, and the connector's other streams carry
/// on.
#[test]
fn a_hostile_listeners_syn_ack_naming_an_amq_queue_fails_only_that_connect() {
    let q = queue("hostile-listener-real");
    let listener = Listener::bind(&url(), &q).unwrap();
    let connector = Connector::open_with(
        &url(),
        StreamOptions::new().handshake_timeout(Some(Duration::from_secs(20))),
    )
    .unwrap();
    let mut pairs = Vec::new();
    for expected in [ProtocolVersion::V2, ProtocolVersion::V3] {
        let client = connector.connect(&q).unwrap();
        assert_eq!(client.protocol_version(), expected);
        let (server, _) = listener.accept().unwrap();
        round_trip(&client, &server, "before");
        pairs.push((client, server));
    }
    let v3 = Connector::open_with(&url(), pinned(ProtocolVersion::V3)).unwrap();
    let v3_client = v3.connect(&q).unwrap();
    let (v3_server, _) = listener.accept().unwrap();
    pairs.push((v3_client, v3_server));
    let answers: Vec<(&Connector, &str, Box<AnswerTo>)> = vec![
        (
            &connector,
            "a version-1 answer",
            Box::new(|_| AmqpProperties::default().with_reply_to(HOSTILE.to_string())),
        ),
        (
            &connector,
            "a version-2 answer",
            Box::new(|_| {
                AmqpProperties::default()
                    .with_reply_to(HOSTILE.to_string())
                    .with_headers(headers(2, None))
            }),
        ),
        (
            &v3,
            "a version-3 answer",
            Box::new(|syn: &amiquip::Delivery| {
                let id = match syn
                    .properties
                    .headers()
                    .as_ref()
                    .unwrap()
                    .get("x-amqp-stream-id")
                {
                    Some(AmqpValue::LongString(id)) => id.clone(),
                    other => panic!("a version-3 SYN names its stream: {other:?}"),
                };
                AmqpProperties::default()
                    .with_reply_to(HOSTILE.to_string())
                    .with_correlation_id(id)
                    .with_headers(headers(3, Some("fedcba9876543210fedcba9876543210")))
            }),
        ),
    ];
    for (connector, what, answer) in answers {
        let err = hostile_listener_answers(connector, answer);
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{what}: {err}");
        assert!(err.to_string().contains(HOSTILE), "{what}: {err}");
        for (n, (client, server)) in pairs.iter().enumerate() {
            round_trip(client, server, &format!("stream {n} after {what}"));
        }
    }
    // Both connectors still connect.
    for connector in [&connector, &v3] {
        let client = connector.connect(&q).unwrap();
        let (server, _) = listener.accept().unwrap();
        round_trip(&client, &server, "a new stream after");
    }
}

/// Answers that name no stream (an empty "version-1 SYN-ACK", or a
/// version-2 one) published by a stranger to a connection's queue while
/// no connect of it waits for an answer, or naming a queue no version-1
/// or version-2 stream has (a listener's, any application's): the
/// connection sends nothing there. Its "end that stream" would be a FIN
/// (an empty body, which a listener takes for a version-1 SYN from the
/// connection) or a reset, aimed wherever the stranger chose.
#[test]
fn an_answer_naming_no_stream_ends_nothing_a_stranger_picks() {
    let (_listener, _connector, client, server) = v3_pair("untied-target");
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    // A bystander's listener queue, and a queue named like a version-1
    // stream's that no connect of the victim is waiting on.
    let bystander = queue("untied-bystander");
    let stream_like = format!("amqp-stream.{}", uuid::Uuid::new_v4());
    for name in [&bystander, &stream_like] {
        channel
            .queue_declare(name.clone(), exclusive_auto_delete())
            .unwrap();
    }
    let v1_answer = |to: &str| AmqpProperties::default().with_reply_to(to.to_string());
    let v2_answer = |to: &str| {
        let mut headers = FieldTable::new();
        headers.insert(
            "x-amqp-stream-version".to_string(),
            AmqpValue::LongLongInt(2),
        );
        headers.insert(
            "x-amqp-stream-window".to_string(),
            AmqpValue::LongLongInt(WINDOW),
        );
        v1_answer(to).with_headers(headers)
    };
    let mut published = 0;
    for end in [&client, &server] {
        let conn_queue = connection_queue(end);
        for to in [&bystander, &stream_like] {
            publish_with(&channel, &conn_queue, b"", v1_answer(to));
            publish_with(&channel, &conn_queue, b"", v2_answer(to));
            published += 2;
        }
    }
    await_confirms(&confirms, published);
    // Each connection has handled the answers once it hands over the
    // round trip's frames, and anything it published for them went out
    // before its own frames and is queued once those are confirmed.
    round_trip(&client, &server, "after the answers");
    for name in [&bystander, &stream_like] {
        assert_eq!(
            common::queue_depth(name).unwrap().0,
            0,
            "an answer naming no stream made a connection publish to {name:?}"
        );
    }
    raw.close().unwrap();
}

/// Forged answers naming no stream, published to a connection's queue
/// while (and after) many of its version-3 connects wait for their
/// listener's answers. The listener is known to take version 3 (the
/// connector remembered it), so every waiting connect doubts the forged
/// answers and none falls back: nothing is sent to the queue they name,
/// a stream-shaped one a stranger picked, neither then nor later.
#[test]
fn forged_answers_while_connects_wait_for_a_version_3_listener_end_nothing() {
    const CONNECTS: usize = 40;
    const FORGED: usize = 20;
    let q = queue("untied-vouched");
    let listener = Listener::bind(&url(), &q).unwrap();
    let connector = Connector::open_with(
        &url(),
        StreamOptions::new().handshake_timeout(Some(Duration::from_secs(20))),
    )
    .unwrap();
    // The first stream is version 2 and learns that the listener takes
    // version 3; the connector asks for version 3 from then on.
    let first = connector.connect(&q).unwrap();
    let (first_server, _) = listener.accept().unwrap();
    round_trip(&first, &first_server, "first");
    let probe = connector.connect(&q).unwrap();
    assert_eq!(probe.protocol_version(), ProtocolVersion::V3);
    let (probe_server, _) = listener.accept().unwrap();
    let conn_queue = connection_queue(&probe);

    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let target = format!("amqp-stream.{}", uuid::Uuid::new_v4());
    channel
        .queue_declare(target.clone(), exclusive_auto_delete())
        .unwrap();
    let forged = AmqpProperties::default().with_reply_to(target.clone());
    let (clients, servers): (Vec<Stream>, Vec<Stream>) = std::thread::scope(|scope| {
        let accepting = scope.spawn(|| {
            (0..CONNECTS)
                .map(|_| listener.accept().unwrap().0)
                .collect::<Vec<_>>()
        });
        let connecting: Vec<_> = (0..CONNECTS)
            .map(|_| scope.spawn(|| connector.connect(&q)))
            .collect();
        // While they wait, and after.
        for _ in 0..FORGED {
            publish_with(&channel, &conn_queue, b"", forged.clone());
        }
        let clients = connecting
            .into_iter()
            .map(|connecting| connecting.join().unwrap().unwrap())
            .collect();
        (clients, accepting.join().unwrap())
    });
    for client in &clients {
        assert_eq!(client.protocol_version(), ProtocolVersion::V3);
    }
    for _ in 0..FORGED {
        publish_with(&channel, &conn_queue, b"", forged.clone());
    }
    // The connection has handled them all once it hands over the round
    // trip's frames; anything it published for them went out before its
    // own frames, which are confirmed by then.
    round_trip(&probe, &probe_server, "after the forged answers");
    let peer = servers
        .iter()
        .find(|server| server.peer_addr().unwrap() == clients[0].local_addr().unwrap())
        .expect("the first client's stream was accepted");
    round_trip(&clients[0], peer, "a new stream after");
    assert_eq!(
        common::queue_depth(&target).unwrap().0,
        0,
        "forged answers made the connection end a stream on the queue they named"
    );
    raw.close().unwrap();
}

/// A raw version-3 client's stream to `listener` on `q`: the client
/// receives on `own` (through `deliveries`) and resets the stream once it
/// is accepted. Returns the client's stream id, the listener's, and the
/// listener's connection queue.
fn raw_stream_reset(
    listener: &Listener,
    channel: &amiquip::Channel,
    q: &str,
    own: &str,
    deliveries: &amiquip::Consumer<'_>,
) -> (String, String, String) {
    let raw_id = uuid::Uuid::new_v4().simple().to_string();
    publish_with(
        channel,
        q,
        b"",
        AmqpProperties::default()
            .with_reply_to(own.to_string())
            .with_headers(headers(3, Some(&raw_id))),
    );
    let (mut accepted, _) = listener.accept().unwrap();
    let answer = next(deliveries.receiver());
    let server_queue = answer.properties.reply_to().clone().expect("reply_to");
    let server_id = handshake_of(&answer)
        .1
        .expect("a version-3 answer names its stream");
    let reset = AmqpProperties::default()
        .with_type_("reset".to_string())
        .with_correlation_id(server_id.clone())
        .with_app_id(raw_id.clone())
        .with_reply_to(own.to_string());
    publish_with(channel, &server_queue, b"bye", reset);
    let err = accepted.read(&mut [0; 8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    (raw_id, server_id, server_queue)
}

/// A flood of stray frames for made-up stream ids, from made-up
/// connection queues, spends the answers a connection gives strangers;
/// the peer of a stream the connection held is still told at once that
/// its stream is gone. A raw version-3 client connects to a listener,
/// resets its stream, and then sends keepalives to it, as a peer that
/// missed the stream's end would: each is answered with a reset within
/// the flood.
#[test]
fn a_flood_of_stray_frames_does_not_hide_a_gone_stream_from_its_peer() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let q = queue("stray-flood-peer");
    let listener = Listener::bind_with(&url(), &q, pinned(ProtocolVersion::V3)).unwrap();

    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let own = format!("amqp-stream.conn.{}", uuid::Uuid::new_v4());
    let deliveries = channel
        .queue_declare(own.clone(), exclusive_auto_delete())
        .unwrap()
        .consume(ConsumerOptions {
            no_ack: true,
            ..Default::default()
        })
        .unwrap();
    let (raw_id, server_id, server_queue) =
        raw_stream_reset(&listener, &channel, &q, &own, &deliveries);
    let frame = |kind: &str| {
        AmqpProperties::default()
            .with_type_(kind.to_string())
            .with_correlation_id(server_id.clone())
            .with_app_id(raw_id.clone())
            .with_reply_to(own.clone())
    };

    let flooding = AtomicBool::new(true);
    let flooded = AtomicU64::new(0);
    let answered_after = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut raw = raw_connection();
            let channel = raw.open_channel(None).unwrap();
            while flooding.load(Ordering::Relaxed) {
                let stray = AmqpProperties::default()
                    .with_type_("keepalive".to_string())
                    .with_correlation_id(uuid::Uuid::new_v4().simple().to_string())
                    .with_app_id(uuid::Uuid::new_v4().simple().to_string())
                    .with_reply_to(format!("amqp-stream.conn.{}", uuid::Uuid::new_v4()));
                publish_with(&channel, &server_queue, b"", stray);
                flooded.fetch_add(1, Ordering::Relaxed);
            }
            raw.close().unwrap();
        });
        // The flood under way: the strangers' answers are spent.
        while flooded.load(Ordering::Relaxed) < 5_000 {
            std::thread::yield_now();
        }
        let started = Instant::now();
        let answered = loop {
            if started.elapsed() > Duration::from_secs(10) {
                break None;
            }
            publish_with(&channel, &server_queue, b"", frame("keepalive"));
            match deliveries
                .receiver()
                .recv_timeout(Duration::from_millis(200))
            {
                Ok(amiquip::ConsumerMessage::Delivery(delivery))
                    if delivery.properties.type_().as_deref() == Some("reset") =>
                {
                    assert_eq!(
                        delivery.properties.correlation_id().as_deref(),
                        Some(raw_id.as_str())
                    );
                    break Some(started.elapsed());
                }
                _ => {}
            }
        };
        flooding.store(false, Ordering::Relaxed);
        answered
    });
    let flooded = flooded.load(Ordering::Relaxed);
    eprintln!("{flooded} stray frames; the gone stream's peer answered after {answered_after:?}");
    assert!(
        answered_after.is_some(),
        "a peer's keepalives to a gone stream went unanswered for 10 s in a flood of {flooded} \
         stray frames"
    );
    raw.close().unwrap();
}

/// The version a handshake message names, and the stream id it carries.
fn handshake_of(delivery: &amiquip::Delivery) -> (Option<i64>, Option<String>) {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let version = match headers.get("x-amqp-stream-version") {
        Some(AmqpValue::LongLongInt(version)) => Some(*version),
        Some(AmqpValue::LongInt(version)) => Some(i64::from(*version)),
        _ => None,
    };
    let id = match headers.get("x-amqp-stream-id") {
        Some(AmqpValue::LongString(id)) => Some(id.clone()),
        _ => None,
    };
    (version, id)
}

/// A version-3 pair on `connector`'s connection, to a listener on `q`
/// (a version-2 stream first teaches the connection that it takes
/// version 3): a round trip on it shows that the connection has handled
/// what its queue held before. Returns the listener and both ends.
fn probe_pair(connector: &Connector, q: &str) -> (Listener, Stream, Stream) {
    let listener = Listener::bind(&url(), q).unwrap();
    drop(connector.connect(q).unwrap());
    drop(listener.accept().unwrap());
    let probe = connector.connect(q).unwrap();
    assert_eq!(probe.protocol_version(), ProtocolVersion::V3);
    let (probe_server, _) = listener.accept().unwrap();
    (listener, probe, probe_server)
}

/// A version-3 listener's answer to the version-3 `syn`, from a
/// connection whose queue is `reply_to`.
fn v3_answer_to(syn: &amiquip::Delivery, reply_to: &str) -> AmqpProperties {
    let (version, id) = handshake_of(syn);
    assert_eq!(version, Some(3), "a version-3 SYN");
    AmqpProperties::default()
        .with_reply_to(reply_to.to_string())
        .with_correlation_id(id.expect("a version-3 SYN names its stream"))
        .with_headers(headers(3, Some(&uuid::Uuid::new_v4().simple().to_string())))
}

/// Two version-3 connects wait on one connection; a forged answer naming
/// no stream comes first, then each connect's own version-3 answer. Both
/// take the forged one (the listener they knew is gone, so nothing
/// vouches against it) and fall back, the first ending the forged answer's
/// stream and the second expecting one more older listener's answer: but
/// its own answer came, so none is due, and a stranger's answer naming no
/// stream a little later ends nothing.
#[test]
fn an_own_answer_after_a_believed_forged_one_leaves_no_answer_due() {
    let [q, primer_q, sync_q] =
        ["untied-own-after", "untied-own-primer", "untied-own-sync"].map(queue);
    // Checks of a listener's connection queue are shared for a keepalive
    // interval: one connect's check (below) is every later connect's.
    let connector = Connector::open_with(
        &url(),
        StreamOptions::new()
            .handshake_timeout(Some(Duration::from_secs(5)))
            .keepalive_interval(Duration::from_secs(60)),
    )
    .unwrap();
    let (_sync_listener, probe, probe_server) = probe_pair(&connector, &sync_q);
    // The connector learns that version-3 listeners on one connection
    // serve `q` and `primer_q`; then that connection goes.
    let listener_conn_queue = {
        let server_side = Connector::open(&url()).unwrap();
        let mut conn_queue = String::new();
        for name in [&q, &primer_q] {
            let listener = server_side.bind(name).unwrap();
            let first = connector.connect(name).unwrap();
            let _first_server = listener.accept().unwrap();
            let second = connector.connect(name).unwrap();
            assert_eq!(second.protocol_version(), ProtocolVersion::V3);
            let (second_server, _) = listener.accept().unwrap();
            drop(first);
            conn_queue = connection_queue(&second_server);
        }
        conn_queue
    };
    common::eventually(
        Duration::from_secs(20),
        "the listeners' connection queue is gone",
        || match common::queue_depth(&listener_conn_queue) {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        },
    );

    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let consume = |name: &str| {
        channel
            .queue_declare(name.to_string(), exclusive_auto_delete())
            .unwrap()
            .consume(ConsumerOptions {
                no_ack: true,
                ..Default::default()
            })
            .unwrap()
    };
    let (requests, primer_requests) = (consume(&q), consume(&primer_q));
    let [
        forged_target,
        second_forged_target,
        primer_target,
        strangers_target,
    ] = [(); 4].map(|_| format!("amqp-stream.{}", uuid::Uuid::new_v4()));
    let raw_conn_queue = format!("amqp-stream.conn.{}", uuid::Uuid::new_v4());
    for name in [
        &forged_target,
        &second_forged_target,
        &primer_target,
        &strangers_target,
        &raw_conn_queue,
    ] {
        channel
            .queue_declare(name.clone(), exclusive_auto_delete())
            .unwrap();
    }
    let untied = |to: &str| AmqpProperties::default().with_reply_to(to.to_string());
    let confirming = raw.open_channel(None).unwrap();
    let confirms = confirming.listen_for_publisher_confirms().unwrap();
    confirming.enable_publisher_confirms().unwrap();
    std::thread::scope(|scope| {
        // A connect to `primer_q` believes an answer naming no stream:
        // it found the listeners' connection queue gone, and every connect
        // below takes that answer of the check at once.
        let primer = scope.spawn(|| connector.connect(&primer_q));
        let syn = next(primer_requests.receiver());
        let client_queue = syn.properties.reply_to().clone().expect("reply_to");
        publish_with(&channel, &client_queue, b"", untied(&primer_target));
        let (_, id) = handshake_of(&next(primer_requests.receiver()));
        assert_eq!(id, None, "the primer asks again with a version-2 SYN");

        let connects: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| connector.connect(&q)))
            .collect();
        let syns: Vec<_> = (0..2).map(|_| next(requests.receiver())).collect();
        publish_with(&channel, &client_queue, b"", untied(&forged_target));
        publish_with(&channel, &client_queue, b"", untied(&second_forged_target));
        for syn in &syns {
            let own_answer = v3_answer_to(syn, &raw_conn_queue);
            publish_with(&channel, &client_queue, b"", own_answer);
        }
        // Both took the forged answer and ask again with a version-2 SYN,
        // which names no stream (left unanswered: they time out).
        for _ in 0..2 {
            let (_, id) = handshake_of(&next(requests.receiver()));
            assert_eq!(id, None, "a connect asks again with a version-2 SYN");
        }
        publish_confirmed(
            &confirming,
            &confirms,
            &client_queue,
            untied(&strangers_target),
        );
        // The connection handled the stranger's answer before the round
        // trip's frames, and published whatever it did for it before its
        // own.
        round_trip(&probe, &probe_server, "after the stranger's answer");
        for connect in connects.into_iter().chain([primer]) {
            assert!(
                connect.join().unwrap().is_err(),
                "nobody answered version 2"
            );
        }
    });
    common::eventually(
        Duration::from_secs(20),
        "the primer ends the answer it believed",
        || match common::queue_depth(&primer_target) {
            Some((1, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // Ended by now if at all: the primer's claim was made before theirs.
    for (target, what) in [
        (
            &forged_target,
            "a forged answer was ended for connects whose own answers had come",
        ),
        (
            &second_forged_target,
            "a second forged answer was ended for connects whose own answers had come",
        ),
        (
            &strangers_target,
            "a stranger's answer was ended for a connect whose own answer had come",
        ),
    ] {
        assert_eq!(common::queue_depth(target).unwrap().0, 0, "{what}");
    }
    raw.close().unwrap();
}

/// A version-3 client opens two streams to a listener and resets both;
/// then it floods frames for the first, as a peer that missed the end
/// (or a hostile former peer) might. The listener's connection answers
/// that flood at a bounded rate per stream, and the second stream's
/// keepalives are still answered, nearly each one.
#[test]
fn a_flood_for_one_gone_stream_does_not_hide_another_from_its_peer() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const KEEPALIVES: usize = 20;
    let q = queue("gone-flood-peer");
    let listener = Listener::bind_with(&url(), &q, pinned(ProtocolVersion::V3)).unwrap();

    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let own = format!("amqp-stream.conn.{}", uuid::Uuid::new_v4());
    let flood_replies = format!("amqp-stream.conn.{}", uuid::Uuid::new_v4());
    for name in [&own, &flood_replies] {
        channel
            .queue_declare(name.clone(), exclusive_auto_delete())
            .unwrap();
    }
    let deliveries = channel
        .queue_declare_passive(own.clone())
        .unwrap()
        .consume(ConsumerOptions {
            no_ack: true,
            ..Default::default()
        })
        .unwrap();
    // Two streams, (ours, the listener's) ids each, both reset.
    let mut streams = Vec::new();
    let mut server_queue = String::new();
    for _ in 0..2 {
        let (raw_id, server_id, queue) =
            raw_stream_reset(&listener, &channel, &q, &own, &deliveries);
        server_queue = queue;
        streams.push((raw_id, server_id));
    }
    let keepalive = |(raw_id, server_id): &(String, String), reply_to: &str| {
        AmqpProperties::default()
            .with_type_("keepalive".to_string())
            .with_correlation_id(server_id.clone())
            .with_app_id(raw_id.clone())
            .with_reply_to(reply_to.to_string())
    };
    let flooding = AtomicBool::new(true);
    let answered = std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut raw = raw_connection();
                let channel = raw.open_channel(None).unwrap();
                let frame = keepalive(&streams[0], &flood_replies);
                while flooding.load(Ordering::Relaxed) {
                    publish_with(&channel, &server_queue, b"", frame.clone());
                }
                raw.close().unwrap();
            });
        }
        // The flood under way: a reset for it has come back.
        common::eventually(Duration::from_secs(20), "the flood is answered", || {
            match common::queue_depth(&flood_replies) {
                Some((n, _)) if n > 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        let frame = keepalive(&streams[1], &own);
        for _ in 0..KEEPALIVES {
            publish_with(&channel, &server_queue, b"", frame.clone());
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut answered = 0;
        let until = Instant::now() + Duration::from_secs(10);
        while answered < KEEPALIVES && Instant::now() < until {
            match deliveries
                .receiver()
                .recv_timeout(Duration::from_millis(200))
            {
                Ok(amiquip::ConsumerMessage::Delivery(delivery)) => {
                    assert_eq!(delivery.properties.type_().as_deref(), Some("reset"));
                    assert_eq!(
                        delivery.properties.correlation_id().as_deref(),
                        Some(streams[1].0.as_str())
                    );
                    answered += 1;
                }
                _ => continue,
            }
        }
        flooding.store(false, Ordering::Relaxed);
        answered
    });
    let flood_answers = common::queue_depth(&flood_replies).unwrap().0;
    eprintln!(
        "{answered} of {KEEPALIVES} keepalives answered; {flood_answers} answers to the flood"
    );
    assert!(
        answered >= KEEPALIVES / 2,
        "a flood for one gone stream hid another from its peer: {answered} of {KEEPALIVES} \
         keepalives answered"
    );
    raw.close().unwrap();
}

/// Publishes `properties` (an empty body) to `queue` on `channel`, whose
/// publisher confirms `confirms` listens to, and waits for the broker to
/// confirm it: what anyone publishes to `queue` from now on is queued
/// behind it.
fn publish_confirmed(
    channel: &amiquip::Channel,
    confirms: &crossbeam_channel::Receiver<amiquip::Confirm>,
    queue: &str,
    properties: AmqpProperties,
) {
    publish_with(channel, queue, b"", properties);
    match confirms.recv_timeout(Duration::from_secs(60)).unwrap() {
        amiquip::Confirm::Ack(_) => {}
        nack => panic!("the broker refused a message: {nack:?}"),
    }
}

/// A connector whose connection remembers that the listeners on `queues`
/// take version 3, from version-2 answers (so it knows no connection of
/// theirs, and believes answers naming no stream at once), with those
/// listeners gone; connects time out after 5 s.
fn connector_remembering_v3(queues: &[&str]) -> Connector {
    let connector = Connector::open_with(
        &url(),
        StreamOptions::new().handshake_timeout(Some(Duration::from_secs(5))),
    )
    .unwrap();
    for q in queues {
        {
            let listener = Listener::bind(&url(), q).unwrap();
            let stream = connector.connect(q).unwrap();
            assert_eq!(stream.protocol_version(), ProtocolVersion::V2);
            drop(listener.accept().unwrap());
        }
        common::eventually(
            Duration::from_secs(20),
            "the listener's queue is gone",
            || match common::queue_depth(q) {
                None => Ok(()),
                Some(depth) => Err(format!("{depth:?}")),
            },
        );
    }
    connector
}

/// Waits for a SYN of `version` (3: one naming its stream; 2: a retry
/// naming none) on `requests`, passing over any other.
fn next_syn(requests: &amiquip::Consumer<'_>, version: u8) -> amiquip::Delivery {
    loop {
        let syn = next(requests.receiver());
        if handshake_of(&syn).1.is_some() == (version == 3) {
            return syn;
        }
    }
}

/// Four connects that remembered version 3 wait on a queue that an older
/// listener and a version-3 one share: the older one answers one SYN
/// (naming no stream), the version-3 one the others, right after. All
/// four take the older answer and fall back; whichever claimed it, the
/// older listener's stream gets its FIN, and a stranger's answer naming
/// no stream after that ends nothing.
#[test]
fn an_older_listeners_answer_claimed_by_a_connect_a_version_3_listener_answered_still_ends() {
    const CONNECTS: usize = 4;
    // The shared queue, and another older listener's.
    let [q, other_q] = ["untied-mixed", "untied-mixed-other"].map(queue);
    let connector = connector_remembering_v3(&[&q, &other_q]);
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let consume = |name: &str| {
        channel
            .queue_declare(name.to_string(), exclusive_auto_delete())
            .unwrap()
            .consume(ConsumerOptions {
                no_ack: true,
                ..Default::default()
            })
            .unwrap()
    };
    let (requests, other_requests) = (consume(&q), consume(&other_q));
    let sync_q = queue("untied-mixed-sync");
    let (_sync_listener, probe, probe_server) = probe_pair(&connector, &sync_q);
    let [older_stream, strangers_target, last_stream] =
        [(); 3].map(|_| format!("amqp-stream.{}", uuid::Uuid::new_v4()));
    let v3_listener_conn = format!("amqp-stream.conn.{}", uuid::Uuid::new_v4());
    for name in [
        &older_stream,
        &strangers_target,
        &last_stream,
        &v3_listener_conn,
    ] {
        channel
            .queue_declare(name.clone(), exclusive_auto_delete())
            .unwrap();
    }
    let untied = |to: &str| AmqpProperties::default().with_reply_to(to.to_string());
    let confirming = raw.open_channel(None).unwrap();
    let confirms = confirming.listen_for_publisher_confirms().unwrap();
    confirming.enable_publisher_confirms().unwrap();
    std::thread::scope(|scope| {
        let connects: Vec<_> = (0..CONNECTS)
            .map(|_| scope.spawn(|| connector.connect(&q)))
            .collect();
        let syns: Vec<_> = (0..CONNECTS).map(|_| next_syn(&requests, 3)).collect();
        let client_queue = syns[0].properties.reply_to().clone().expect("reply_to");
        publish_with(&channel, &client_queue, b"", untied(&older_stream));
        for syn in &syns[1..] {
            let own_answer = v3_answer_to(syn, &v3_listener_conn);
            publish_with(&channel, &client_queue, b"", own_answer);
        }
        for _ in 0..CONNECTS {
            next_syn(&requests, 2);
        }
        publish_confirmed(
            &confirming,
            &confirms,
            &client_queue,
            untied(&strangers_target),
        );
        round_trip(&probe, &probe_server, "after the stranger's answer");
        // A connect to another older listener, once the stranger's answer
        // was handled: its stream is ended after any end due for it.
        let last = scope.spawn(|| connector.connect(&other_q));
        next_syn(&other_requests, 3);
        publish_with(&channel, &client_queue, b"", untied(&last_stream));
        for connect in connects.into_iter().chain([last]) {
            assert!(
                connect.join().unwrap().is_err(),
                "nobody answered version 2"
            );
        }
    });
    common::eventually(
        Duration::from_secs(20),
        "the older listener's streams get their FINs",
        || {
            let depths = [&older_stream, &last_stream, &strangers_target]
                .map(|name| common::queue_depth(name));
            match depths[..2]
                .iter()
                .all(|depth| matches!(depth, Some((1, _))))
            {
                true => Ok(()),
                false => Err(format!("{depths:?}")),
            }
        },
    );
    assert_eq!(
        common::queue_depth(&strangers_target).unwrap().0,
        0,
        "a stranger's answer was ended"
    );
    raw.close().unwrap();
}

/// Two connects that remembered version 3 wait on a version-1 listener
/// (raw, here), which answers each with an answer naming no stream. Both
/// take the first and fall back; the second expects the next. A flood of
/// strangers' stray frames comes before that next answer: it spends the
/// answers strangers get, not the ends our own connects vouch for, and
/// both of the listener's streams still get their FIN.
#[test]
fn a_flood_of_stray_frames_does_not_keep_an_older_listeners_stream_open() {
    let q = queue("untied-flood-v1");
    let connector = connector_remembering_v3(&[&q]);
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let requests = channel
        .queue_declare(q.clone(), exclusive_auto_delete())
        .unwrap()
        .consume(ConsumerOptions {
            no_ack: true,
            ..Default::default()
        })
        .unwrap();
    let streams = [(); 2].map(|_| format!("amqp-stream.{}", uuid::Uuid::new_v4()));
    for name in &streams {
        channel
            .queue_declare(name.clone(), exclusive_auto_delete())
            .unwrap();
    }
    let answer = |to: &str| AmqpProperties::default().with_reply_to(to.to_string());
    std::thread::scope(|scope| {
        let connects: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| connector.connect(&q)))
            .collect();
        let syns: Vec<_> = (0..2).map(|_| next(requests.receiver())).collect();
        let client_queue = syns[0].properties.reply_to().clone().expect("reply_to");
        publish_with(&channel, &client_queue, b"", answer(&streams[0]));
        // Both took it and ask again (left unanswered: they time out).
        for _ in 0..2 {
            let (_, id) = handshake_of(&next(requests.receiver()));
            assert_eq!(id, None, "a connect asks again with a version-2 SYN");
        }
        for _ in 0..300 {
            let stray = AmqpProperties::default()
                .with_type_("keepalive".to_string())
                .with_correlation_id(uuid::Uuid::new_v4().simple().to_string())
                .with_app_id(uuid::Uuid::new_v4().simple().to_string())
                .with_reply_to(format!("amqp-stream.conn.{}", uuid::Uuid::new_v4()));
            publish_with(&channel, &client_queue, b"", stray);
        }
        publish_with(&channel, &client_queue, b"", answer(&streams[1]));
        for connect in connects {
            assert!(
                connect.join().unwrap().is_err(),
                "nobody answered version 2"
            );
        }
    });
    common::eventually(
        Duration::from_secs(20),
        "both of the listener's streams get their FIN",
        || {
            let depths: Vec<_> = streams
                .iter()
                .map(|name| common::queue_depth(name))
                .collect();
            match depths.iter().all(|depth| matches!(depth, Some((1, _)))) {
                true => Ok(()),
                false => Err(format!("{depths:?}")),
            }
        },
    );
    raw.close().unwrap();
}
