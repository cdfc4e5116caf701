//! Wire compatibility with protocol version 1: a peer written with raw
//! amiquip calls (the exact messages of PROTOCOL.md, no crate code) talks
//! to our Listener and to our Stream.

mod common;

use amiquip::{
    AmqpProperties, Channel, ConsumerMessage, ConsumerOptions, Delivery, Publish,
    QueueDeclareOptions,
};
use amqp_stream::{Listener, Stream};
use common::{queue, raw_connection, url};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

fn exclusive_auto_delete() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: false,
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    }
}

fn publish(channel: &Channel, queue: &str, body: &[u8], reply_to: Option<&str>) {
    let mut properties = AmqpProperties::default();
    if let Some(reply_to) = reply_to {
        properties = properties.with_reply_to(reply_to.to_string());
    }
    let mut message = Publish::with_properties(body, queue.to_string(), properties);
    message.mandatory = true;
    channel.basic_publish("", message).unwrap();
}

fn next(rx: &crossbeam_channel::Receiver<ConsumerMessage>) -> Delivery {
    match rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a message within 10 s")
    {
        ConsumerMessage::Delivery(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// Reads data messages (acking each) until the FIN; returns the bytes.
fn read_until_fin(consumer: &amiquip::Consumer<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let d = next(consumer.receiver());
        let fin = d.body.is_empty();
        bytes.extend_from_slice(&d.body);
        consumer.ack(d).unwrap();
        if fin {
            return bytes;
        }
    }
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

    // The raw server: check the SYN, declare S, consume it, SYN-ACK to C.
    let syn = next(requests.receiver());
    assert!(syn.body.is_empty(), "SYN has an empty body");
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
    publish(&channel, &c_name, b"", Some(&s_name));

    let got = read_until_fin(&data);
    assert_eq!(got, b"ping over v1");
    publish(&channel, &c_name, b"pong ", None);
    publish(&channel, &c_name, b"from raw", None);
    publish(&channel, &c_name, b"", None);
    assert_eq!(client.join().unwrap(), "pong from raw");
    raw.close().unwrap();
}
