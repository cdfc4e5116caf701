//! A protocol peer written with raw amiquip calls (the messages of
//! PROTOCOL.md, no crate code), for wire-compatibility tests.

use amiquip::{AmqpProperties, Channel, ConsumerMessage, Delivery, Publish, QueueDeclareOptions};
use std::time::Duration;

/// How the protocol declares every queue.
pub fn exclusive_auto_delete() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: false,
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    }
}

/// Publishes as the protocol does: default exchange, mandatory.
pub fn publish_with(channel: &Channel, queue: &str, body: &[u8], properties: AmqpProperties) {
    let mut message = Publish::with_properties(body, queue.to_string(), properties);
    message.mandatory = true;
    channel.basic_publish("", message).unwrap();
}

/// The next delivery, within 10 s.
pub fn next(rx: &crossbeam_channel::Receiver<ConsumerMessage>) -> Delivery {
    match rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a message within 10 s")
    {
        ConsumerMessage::Delivery(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// The version-2 handshake headers: version 2 and `window`.
pub fn v2_headers(window: i64) -> amiquip::FieldTable {
    let mut headers = amiquip::FieldTable::new();
    headers.insert(
        "x-amqp-stream-version".to_string(),
        amiquip::AmqpValue::LongLongInt(2),
    );
    headers.insert(
        "x-amqp-stream-window".to_string(),
        amiquip::AmqpValue::LongLongInt(window),
    );
    headers
}

/// A raw client: its own queue, consumed, from which it sends SYNs.
pub struct RawClient<'a> {
    pub channel: &'a Channel,
    pub queue: String,
    pub consumer: amiquip::Consumer<'a>,
}

impl<'a> RawClient<'a> {
    /// Declares and consumes the client's queue on `channel`.
    pub fn new(channel: &'a Channel) -> RawClient<'a> {
        let queue = channel.queue_declare("", exclusive_auto_delete()).unwrap();
        let consumer = queue
            .consume(amiquip::ConsumerOptions {
                exclusive: true,
                ..Default::default()
            })
            .unwrap();
        RawClient {
            channel,
            queue: queue.name().to_string(),
            consumer,
        }
    }

    /// Sends a SYN to the listener on `listener_queue`: version 2 when
    /// `v2`, else version 1.
    pub fn syn(&self, listener_queue: &str, v2: bool) {
        let mut properties = AmqpProperties::default().with_reply_to(self.queue.clone());
        if v2 {
            properties = properties.with_headers(v2_headers(1 << 20));
        }
        publish_with(self.channel, listener_queue, b"", properties);
    }

    /// Waits for the SYN-ACK; returns the server's queue.
    pub fn syn_ack(&self) -> String {
        let answer = next(self.consumer.receiver());
        assert!(
            answer.body.is_empty(),
            "a SYN-ACK, not a refusal: {:?}",
            String::from_utf8_lossy(&answer.body)
        );
        let server = answer.properties.reply_to().clone().expect("reply_to");
        self.consumer.ack(answer).unwrap();
        server
    }
}
