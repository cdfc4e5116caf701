//! A peer that keeps to the credit window but writes one byte per
//! message, to a stream that does not read: what the receiving process
//! holds for it stays within a small multiple of the window, whatever
//! the message sizes (each message costs a delivery of some hundred
//! bytes, not just its body). A target of its own: it measures its
//! process's resident memory.

mod common;

use amqp_stream::{Connector, ProtocolVersion, StreamOptions};
use common::{queue, queue_state, resident_bytes, url};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

const WINDOW: usize = 256 * 1024;

#[test]
fn a_reader_that_stops_holds_little_more_than_its_window_of_one_byte_messages() {
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .window(WINDOW)
        .nodelay(true);
    let client = Connector::open_with(&url(), options.clone()).unwrap();
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("tiny-messages");
    let listener = server.bind(&q).unwrap();
    let mut writer = client.connect(&q).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    writer.set_nodelay(true).unwrap();
    let before = resident_bytes();

    // One byte per write, each its own message, until the window is used
    // up and a write waits for credit that never comes.
    writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut written = 0usize;
    loop {
        match writer.write(&[(written % 251) as u8]) {
            Ok(n) => written += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => panic!("write: {err}"),
        }
        assert!(written <= WINDOW, "wrote past the window");
    }
    writer.flush().unwrap();
    // Everything written has reached the reader's process.
    let reader_queue = reader
        .local_addr()
        .unwrap()
        .queue()
        .split('#')
        .next()
        .unwrap()
        .to_string();
    common::eventually(
        Duration::from_secs(30),
        "the broker delivers all",
        || match queue_state(&reader_queue) {
            Some((0, _, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "{written} one-byte messages in flight, resident memory +{} KiB (window {} KiB)",
        grown / 1024,
        WINDOW / 1024
    );
    assert!(
        grown < 16 * WINDOW as u64,
        "holding {written} unread bytes took {} KiB, more than 16 windows",
        grown / 1024
    );

    // Nothing was lost on the way.
    writer.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), written);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

/// The messages' cost leaves a writer the whole window's bytes: one that
/// writes a full window before it reads (in large messages) does not
/// wait for credit.
#[test]
fn a_writer_may_fill_the_whole_window_before_it_reads() {
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .window(WINDOW);
    let client = Connector::open_with(&url(), options.clone()).unwrap();
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("full-window");
    let listener = server.bind(&q).unwrap();
    let mut writer = client.connect(&q).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let data = common::random_bytes(WINDOW, 5);
    writer.write_all(&data).unwrap();
    writer.flush().unwrap();
    let mut got = vec![0; WINDOW];
    reader.read_exact(&mut got).unwrap();
    assert!(got == data);
}

/// A version-3 client (raw AMQP) that does not say it counts its
/// messages' cost (`x-amqp-stream-message-cost`: only builds before the
/// header, none released, leave it out) writes one-byte messages to a
/// stream that does not read, far more messages than its window's bytes
/// with the cost allow but fewer bytes than the window: the stream counts
/// each message's cost anyway and fails (`InvalidData`) rather than hold
/// them all. Without that, leaving the header out would let any peer make
/// a stream hold hundreds of times its window.
#[test]
fn a_version_3_peer_that_omits_the_message_cost_is_held_to_it() {
    use amiquip::{AmqpProperties, AmqpValue, ConsumerOptions, FieldTable};
    use common::raw::{exclusive_auto_delete, next, publish_with};
    const SMALL_WINDOW: usize = 64 * 1024;
    const MESSAGES: usize = 5_000;
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .window(SMALL_WINDOW)
        // The keepalive tick sorts what waits: none before the check.
        .keepalive_interval(Duration::from_secs(60));
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("omitted-cost");
    let listener = server.bind(&q).unwrap();

    let mut raw = common::raw_connection();
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
    let raw_id = uuid::Uuid::new_v4().simple().to_string();
    let mut headers = FieldTable::new();
    headers.insert(
        "x-amqp-stream-version".to_string(),
        AmqpValue::LongLongInt(3),
    );
    headers.insert(
        "x-amqp-stream-window".to_string(),
        AmqpValue::LongLongInt(SMALL_WINDOW as i64),
    );
    headers.insert(
        "x-amqp-stream-id".to_string(),
        AmqpValue::LongString(raw_id.clone()),
    );
    publish_with(
        &channel,
        &q,
        b"",
        AmqpProperties::default()
            .with_reply_to(own.clone())
            .with_headers(headers),
    );
    let (mut reader, _) = listener.accept().unwrap();
    let answer = next(deliveries.receiver());
    let server_queue = answer.properties.reply_to().clone().expect("reply_to");
    let server_id = match answer
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.get("x-amqp-stream-id"))
    {
        Some(AmqpValue::LongString(id)) => id.clone(),
        other => panic!("a version-3 answer names its stream: {other:?}"),
    };

    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    for seq in 1..=MESSAGES {
        let properties = AmqpProperties::default()
            .with_type_("data".to_string())
            .with_message_id(seq.to_string())
            .with_correlation_id(server_id.clone())
            .with_app_id(raw_id.clone())
            .with_reply_to(own.clone());
        publish_with(&channel, &server_queue, &[seq as u8], properties);
    }
    let mut confirmed = 0;
    while confirmed < MESSAGES as u64 {
        match confirms.recv_timeout(Duration::from_secs(30)).unwrap() {
            amiquip::Confirm::Ack(payload) if payload.multiple => confirmed = payload.delivery_tag,
            amiquip::Confirm::Ack(_) => confirmed += 1,
            nack => panic!("the broker refused a message: {nack:?}"),
        }
    }
    common::eventually(
        Duration::from_secs(30),
        "the broker delivers all",
        || match queue_state(&server_queue) {
            Some((0, _, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let outcome = reader.read_to_end(&mut got);
    eprintln!(
        "{MESSAGES} one-byte messages from a peer that omits the cost: read {} bytes, then {outcome:?}",
        got.len()
    );
    let err = outcome.expect_err("the stream holds every message of a peer that omits the cost");
    assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    assert!(got.len() < MESSAGES, "read all {MESSAGES} bytes");
    raw.close().unwrap();
}
