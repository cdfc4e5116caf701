//! The wire protocol, version 1, as pure functions: what each message looks
//! like, how incoming ones are told apart and checked. No broker calls here,
//! so all of it is unit-tested without one.

use amiquip::{AmqpProperties, QueueDeclareOptions};
use std::fmt;

/// Prefix of the queue names this crate chooses for its stream queues.
pub(crate) const QUEUE_PREFIX: &str = "amqp-stream.";

/// The AMQP `type` property of the marker a stream puts on its *own* queue
/// when it learns that the peer is gone. Only the stream that publishes it
/// ever consumes it: it is never sent to a peer.
pub(crate) const PEER_GONE_TYPE: &str = "amqp-stream.local.peer-gone";

/// A fresh, unique name for a stream's receive queue.
///
/// Chosen by the client (not by the broker) so that the queue can be
/// declared without waiting for the broker's answer.
pub(crate) fn new_queue_name() -> String {
    format!("{QUEUE_PREFIX}{}", uuid::Uuid::new_v4())
}

/// How every queue of the protocol is declared: transient, exclusive to the
/// connection that made it, deleted when its consumer goes.
pub(crate) fn queue_declare_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: false,
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    }
}

/// Properties of a handshake message (SYN or SYN-ACK): `reply_to` names the
/// queue the sender receives on.
pub(crate) fn handshake_properties(reply_to: &str) -> AmqpProperties {
    AmqpProperties::default().with_reply_to(reply_to.to_string())
}

/// Properties of a data or FIN message: none (transient delivery is the
/// default).
pub(crate) fn data_properties() -> AmqpProperties {
    AmqpProperties::default()
}

/// Properties of the local "peer gone" marker.
pub(crate) fn peer_gone_properties() -> AmqpProperties {
    AmqpProperties::default().with_type_(PEER_GONE_TYPE.to_string())
}

/// Why a message on a listener's control queue is not a connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadRequest {
    /// The request carries a body; a SYN has none.
    HasBody(usize),
    /// The request names no queue to answer to.
    NoReplyTo,
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRequest::HasBody(len) => write!(
                f,
                "a connection request has an empty body, this one has {len} bytes"
            ),
            BadRequest::NoReplyTo => {
                f.write_str("a connection request needs reply_to naming the client's queue")
            }
        }
    }
}

/// Checks a message from a control queue; on success, the client's queue.
pub(crate) fn parse_request<'a>(
    body: &[u8],
    properties: &'a AmqpProperties,
) -> Result<&'a str, BadRequest> {
    if !body.is_empty() {
        return Err(BadRequest::HasBody(body.len()));
    }
    match properties.reply_to().as_deref() {
        Some(queue) if !queue.is_empty() => Ok(queue),
        _ => Err(BadRequest::NoReplyTo),
    }
}

/// Checks the first message on a client's queue (the SYN-ACK); on success,
/// the server's queue, which the client sends to from then on.
pub(crate) fn parse_accept<'a>(
    body: &[u8],
    properties: &'a AmqpProperties,
) -> Result<&'a str, String> {
    if !body.is_empty() {
        return Err(format!(
            "the listener's answer must have an empty body, it has {} bytes",
            body.len()
        ));
    }
    match properties.reply_to().as_deref() {
        Some(queue) if !queue.is_empty() => Ok(queue),
        _ => Err("the listener's answer names no queue in reply_to".to_string()),
    }
}

/// What a message on a stream's receive queue means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Bytes of the stream.
    Data,
    /// The peer will send no more (an empty body).
    Fin,
    /// Our own marker: the peer is gone and nothing will follow.
    PeerGone,
}

/// Tells apart the messages on a stream's receive queue.
pub(crate) fn classify(body: &[u8], properties: &AmqpProperties) -> Frame {
    if properties.type_().as_deref() == Some(PEER_GONE_TYPE) {
        Frame::PeerGone
    } else if body.is_empty() {
        Frame::Fin
    } else {
        Frame::Data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_unique_and_prefixed() {
        let a = new_queue_name();
        let b = new_queue_name();
        assert_ne!(a, b);
        assert!(a.starts_with(QUEUE_PREFIX));
        assert!(a.len() < 255, "AMQP short strings hold 255 bytes");
    }

    #[test]
    fn queues_are_exclusive_transient_auto_delete() {
        let o = queue_declare_options();
        assert!(o.exclusive && o.auto_delete && !o.durable);
    }

    #[test]
    fn request_must_be_empty_with_reply_to() {
        let props = handshake_properties("client-q");
        assert_eq!(parse_request(b"", &props), Ok("client-q"));
        assert_eq!(parse_request(b"x", &props), Err(BadRequest::HasBody(1)));
        assert_eq!(
            parse_request(b"", &AmqpProperties::default()),
            Err(BadRequest::NoReplyTo)
        );
        let empty = handshake_properties("");
        assert_eq!(parse_request(b"", &empty), Err(BadRequest::NoReplyTo));
        assert!(BadRequest::HasBody(3).to_string().contains("3 bytes"));
    }

    #[test]
    fn accept_must_be_empty_with_reply_to() {
        let props = handshake_properties("server-q");
        assert_eq!(parse_accept(b"", &props), Ok("server-q"));
        assert!(
            parse_accept(b"hello", &props)
                .unwrap_err()
                .contains("5 bytes")
        );
        assert!(parse_accept(b"", &AmqpProperties::default()).is_err());
    }

    #[test]
    fn frames() {
        let plain = data_properties();
        assert_eq!(classify(b"abc", &plain), Frame::Data);
        assert_eq!(classify(b"", &plain), Frame::Fin);
        assert_eq!(classify(b"", &peer_gone_properties()), Frame::PeerGone);
        // A version-1 peer's data with a reply_to is still data.
        assert_eq!(classify(b"a", &handshake_properties("q")), Frame::Data);
    }
}
