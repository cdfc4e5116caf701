//! Wire compatibility with protocol version 1: a peer written with raw
//! amiquip calls (the exact messages of PROTOCOL.md, no crate code) talks
//! to our Listener and to our Stream.

mod common;

use amiquip::{AmqpProperties, Channel, ConsumerOptions, Delivery};
use amqp_stream::{Listener, Stream};
use common::raw::{exclusive_auto_delete, next, publish_with};
use common::{queue, raw_connection, url};
use std::io::{Read, Write};
use std::net::Shutdown;

fn publish(channel: &Channel, queue: &str, body: &[u8], reply_to: Option<&str>) {
    let mut properties = AmqpProperties::default();
    if let Some(reply_to) = reply_to {
        properties = properties.with_reply_to(reply_to.to_string());
    }
    publish_with(channel, queue, body, properties);
}

/// Asserts that a message from our side is in version-1 form: nothing but
/// the body (version 2 would name it in `type` and number it).
fn assert_version_one(d: &Delivery) {
    assert_eq!(d.properties.type_(), &None, "a version-1 frame has no type");
    assert_eq!(d.properties.message_id(), &None, "nor a sequence number");
}

/// Reads data messages (acking each) until the FIN; returns the bytes.
fn read_until_fin(consumer: &amiquip::Consumer<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let d = next(consumer.receiver());
        assert_version_one(&d);
        let fin = d.body.is_empty();
        bytes.extend_from_slice(&d.body);
        consumer.ack(d).unwrap();
        if fin {
            return bytes;
        }
    }
}

/// The raw server's side of the handshake: check the SYN, declare S,
/// consume it, answer C with the SYN-ACK. Returns C and S's consumer.
fn accept_raw<'a>(
    channel: &'a Channel,
    requests: &amiquip::Consumer<'_>,
) -> (String, amiquip::Consumer<'a>) {
    let syn = next(requests.receiver());
    assert!(syn.body.is_empty(), "SYN has an empty body");
    // Our client offers version 2 in headers, which a v1 server ignores.
    let offered = syn.properties.headers().as_ref().expect("SYN headers");
    assert!(offered.contains_key("x-amqp-stream-version"));
    let c_name = syn
        .properties
        .reply_to()
        .clone()
        .expect("SYN names the client queue");
    requests.ack(syn).unwrap();
    let s = channel.queue_declare("", exclusive_auto_delete()).unwrap();
    let s_name = s.name().to_string();
    let data = s
        .consume(ConsumerOptions {
            exclusive: true,
            ..Default::default()
        })
        .unwrap();
    publish(channel, &c_name, b"", Some(&s_name));
    (c_name, data)
}

#[test]
fn raw_v1_client_talks_to_our_listener() {
    let q = queue("wire-listener");
    let listener = Listener::bind(&url(), &q).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        stream.write_all(b"you said: ").unwrap();
        stream.write_all(&got).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        got
    });

    // The raw client: server-named queue C, consume, SYN = empty body + reply_to C.
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let c = channel.queue_declare("", exclusive_auto_delete()).unwrap();
    let c_name = c.name().to_string();
    let consumer = c
        .consume(ConsumerOptions {
            exclusive: true,
            ..Default::default()
        })
        .unwrap();
    publish(&channel, &q, b"", Some(&c_name));
    let syn_ack = next(consumer.receiver());
    assert!(syn_ack.body.is_empty(), "SYN-ACK has an empty body");
    assert_eq!(
        syn_ack.properties.headers(),
        &None,
        "no version-2 answer to a version-1 request"
    );
    let s_name = syn_ack
        .properties
        .reply_to()
        .clone()
        .expect("SYN-ACK names the server queue");
    consumer.ack(syn_ack).unwrap();

    publish(&channel, &s_name, b"hello ", None);
    publish(&channel, &s_name, b"version one", None);
    publish(&channel, &s_name, b"", None); // FIN

    let reply = read_until_fin(&consumer);
    assert_eq!(reply, b"you said: hello version one");
    assert_eq!(server.join().unwrap(), b"hello version one");
    // Closing the connection ends the raw consumers too.
    raw.close().unwrap();
}

#[test]
fn our_stream_talks_to_a_raw_v1_server() {
    let q = queue("wire-server");
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let control = channel
        .queue_declare(q.clone(), exclusive_auto_delete())
        .unwrap();
    let requests = control.consume(ConsumerOptions::default()).unwrap();

    let client = std::thread::spawn({
        let q = q.clone();
        move || {
            let mut s = Stream::connect(&url(), &q).unwrap();
            s.write_all(b"ping over v1").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        }
    });

    let (c_name, data) = accept_raw(&channel, &requests);

    let got = read_until_fin(&data);
    assert_eq!(got, b"ping over v1");
    publish(&channel, &c_name, b"pong ", None);
    publish(&channel, &c_name, b"from raw", None);
    publish(&channel, &c_name, b"", None);
    assert_eq!(client.join().unwrap(), "pong from raw");
    raw.close().unwrap();
}

/// A raw v1 server on `q` for one client: answers the SYN, then counts
/// the data messages until the FIN. Returns (bytes, messages).
fn count_messages_from_one_client(q: &str, connected: impl FnOnce()) -> (Vec<u8>, usize) {
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let control = channel
        .queue_declare(q.to_string(), exclusive_auto_delete())
        .unwrap();
    let requests = control.consume(ConsumerOptions::default()).unwrap();
    connected();
    let (c_name, data) = accept_raw(&channel, &requests);
    let (mut bytes, mut messages) = (Vec::new(), 0);
    loop {
        let d = next(data.receiver());
        assert_version_one(&d);
        let fin = d.body.is_empty();
        bytes.extend_from_slice(&d.body);
        messages += usize::from(!fin);
        data.ack(d).unwrap();
        if fin {
            break;
        }
    }
    publish(&channel, &c_name, b"", None);
    // Close the connection while the consumers still live: dropping a
    // consumer first races amiquip's cancel notice and can kill the
    // connection (EventLoopClientDropped).
    raw.close().unwrap();
    (bytes, messages)
}

#[test]
fn back_to_back_small_writes_leave_as_few_larger_messages() {
    let q = queue("wire-coalesce");
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let client = std::thread::spawn({
        let q = q.clone();
        move || {
            ready_rx.recv().unwrap();
            let mut s = Stream::connect(&url(), &q).unwrap();
            assert!(!s.nodelay().unwrap());
            for i in 0..10_000u32 {
                s.write_all(&[(i % 251) as u8; 16]).unwrap();
            }
            s.shutdown(Shutdown::Write).unwrap();
            s.read_to_end(&mut Vec::new()).unwrap();
        }
    });
    let (bytes, messages) = count_messages_from_one_client(&q, || ready_tx.send(()).unwrap());
    client.join().unwrap();
    let expected: Vec<u8> = (0..10_000u32).flat_map(|i| [(i % 251) as u8; 16]).collect();
    assert!(
        bytes == expected,
        "bytes differ at {:?}",
        common::first_difference(&bytes, &expected)
    );
    eprintln!("10,000 writes of 16 bytes arrived in {messages} messages");
    // Writes gather while earlier data awaits its confirm: far fewer
    // messages than writes (about a hundred here; the bound leaves room
    // for a loaded machine).
    assert!(messages < 2_000, "{messages} messages for 10,000 writes");
}

#[test]
fn with_nodelay_every_write_still_arrives_in_order() {
    let q = queue("wire-nodelay");
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let client = std::thread::spawn({
        let q = q.clone();
        move || {
            ready_rx.recv().unwrap();
            let options = amqp_stream::StreamOptions::new().nodelay(true);
            let mut s = Stream::connect_with(&url(), &q, options.clone()).unwrap();
            assert!(s.nodelay().unwrap());
            for i in 0..1_000u32 {
                s.write_all(&i.to_be_bytes()).unwrap();
            }
            s.set_nodelay(false).unwrap();
            s.write_all(b"end").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            s.read_to_end(&mut Vec::new()).unwrap();
        }
    });
    let (bytes, _) = count_messages_from_one_client(&q, || ready_tx.send(()).unwrap());
    client.join().unwrap();
    let mut expected: Vec<u8> = (0..1_000u32).flat_map(|i| i.to_be_bytes()).collect();
    expected.extend_from_slice(b"end");
    assert_eq!(bytes, expected);
}

/// Version 1 has no sequence numbers, so a FIN must never follow a data
/// message the broker refused: the peer would read a clean EOF after a
/// gap. The raw server's queue takes at most 1,500 bytes and rejects
/// publishes past that: the second 1,000-byte message is refused while
/// an empty FIN would still fit. Our side holds its FIN until the data
/// before it is confirmed, so the refusal fails the stream instead.
#[test]
fn no_fin_follows_a_refused_message() {
    let q = queue("wire-nack");
    let mut connection = raw_connection();
    let channel = connection.open_channel(None).unwrap();
    let requests_queue = channel
        .queue_declare(q.clone(), exclusive_auto_delete())
        .unwrap();
    let requests = requests_queue.consume(ConsumerOptions::default()).unwrap();
    let options = amqp_stream::StreamOptions::new()
        .protocol_version(Some(amqp_stream::ProtocolVersion::V1))
        .nodelay(true);
    let client_q = q.clone();
    let client = std::thread::spawn(move || {
        let mut s = Stream::connect_with(&url(), &client_q, options.clone()).unwrap();
        s.write_all(&[1; 1000]).unwrap();
        s.flush().unwrap();
        // Refused by the broker; the FIN behind it must not go.
        let _ = s.write_all(&[2; 1000]);
        let _ = s.shutdown(Shutdown::Write);
        let err = s.read(&mut [0; 16]).expect_err("a refused stream fails");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
    });
    let syn = next(requests.receiver());
    let c_name = syn.properties.reply_to().clone().unwrap();
    requests.ack(syn).unwrap();
    let mut full = exclusive_auto_delete();
    full.arguments.insert(
        "x-max-length-bytes".to_string(),
        amiquip::AmqpValue::LongLongInt(1500),
    );
    full.arguments.insert(
        "x-overflow".to_string(),
        amiquip::AmqpValue::LongString("reject-publish".to_string()),
    );
    let s = channel.queue_declare("", full).unwrap();
    publish(&channel, &c_name, b"", Some(s.name()));
    client.join().unwrap();
    // What reached the server's queue: the first message, and no FIN.
    // (length, first byte) of each message.
    let mut messages = Vec::new();
    while let Some(got) = s.get(true).unwrap() {
        let body = got.delivery.body;
        messages.push((body.len(), body.first().copied()));
    }
    assert_eq!(
        messages,
        [(1000, Some(1))],
        "only the confirmed data, no FIN"
    );
    std::mem::forget(requests);
    connection.close().unwrap();
}
