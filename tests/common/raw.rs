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
