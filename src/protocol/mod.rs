//! The wire protocol as pure functions: what each message looks like, how
//! incoming ones are told apart and checked. No broker calls here, so all
//! of it is unit-tested without one.
//!
//! [`handshake`] covers the SYN and SYN-ACK with the version negotiation,
//! [`frame`] the messages of an established stream.

pub(crate) mod frame;
pub(crate) mod handshake;

use crate::error::Error;
use amiquip::{AmqpValue, FieldTable, QueueDeclareOptions};
use std::time::Duration;

/// Prefix of the queue names this crate chooses for its stream queues.
pub(crate) const QUEUE_PREFIX: &str = "amqp-stream.";

/// A fresh, unique name for a stream's receive queue.
///
/// Chosen by the client (not by the broker) so that the queue can be
/// declared without waiting for the broker's answer.
pub(crate) fn new_queue_name() -> String {
    format!("{QUEUE_PREFIX}{}", uuid::Uuid::new_v4())
}

/// The longest queue name AMQP can carry (a short string).
pub(crate) const MAX_QUEUE_NAME: usize = 255;

/// Checks a queue name given by the user before anything goes on the
/// wire: AMQP carries 1 to 255 bytes, and a longer name would make a
/// malformed frame, for which the broker closes the whole connection
/// (and every other stream on it). `whose` says which queue, in the error.
pub(crate) fn check_queue_name(queue: &str, whose: &str) -> Result<(), Error> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_NAME {
        return Err(Error::InvalidArgument(format!(
            "{whose} queue name must be 1 to {MAX_QUEUE_NAME} bytes, not {}",
            queue.len()
        )));
    }
    Ok(())
}

/// Whether `queue` is named the way a version-1 or version-2 stream's own
/// queue is: by the broker (`amq.gen-…`, as the Go implementation's are)
/// or by this crate ([`new_queue_name`]: `amqp-stream.` and a UUID). A
/// listener's queue (named by its user: "ssh", "db") and a version-3
/// connection's queue (`amqp-stream.conn.…`) are not, so a message meant
/// to end such a stream (an empty body: a version-1 FIN, which a listener
/// takes for a SYN) never reaches either.
pub(crate) fn is_stream_queue_name(queue: &str) -> bool {
    if let Some(rest) = queue.strip_prefix(BROKER_NAMED_PREFIX) {
        return !rest.is_empty() && check_peer_queue(queue).is_ok();
    }
    queue
        .strip_prefix(QUEUE_PREFIX)
        .is_some_and(|rest| uuid::Uuid::try_parse(rest).is_ok())
}

/// The one prefix starting with `amq.` that a peer's queue can have: the
/// broker names a queue declared without a name `amq.gen-…` (the Go
/// implementation's queues are named so). A client may not declare any
/// other `amq.` name.
const BROKER_NAMED_PREFIX: &str = "amq.gen-";

/// Checks a queue a peer names for us to publish to (a `reply_to`): it
/// must be one that a peer of the protocol could own, 1 to 255 bytes and
/// not a name the broker reserves. Publishing to some of those
/// (`amq.rabbitmq.reply-to.…` with a malformed suffix, say) makes RabbitMQ
/// close our whole connection with every stream on it, so anyone who can
/// publish in the virtual host could otherwise kill it with one message.
/// The error says why, for the caller's error or log.
pub(crate) fn check_peer_queue(queue: &str) -> Result<(), String> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "a queue name has 1 to {MAX_QUEUE_NAME} bytes, not {}",
            queue.len()
        ));
    }
    if queue.starts_with("amq.") && !queue.starts_with(BROKER_NAMED_PREFIX) {
        return Err(format!(
            "{queue:?} cannot be a peer's queue: the broker reserves names starting \"amq.\" \
             (other than the \"{BROKER_NAMED_PREFIX}\" names it gives)"
        ));
    }
    Ok(())
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

/// How long a replicated listener queue stays once nothing consumes it
/// (its `x-expires`): long enough for a listener to reconnect to another
/// node, or for its node to restart.
pub(crate) const REPLICATED_QUEUE_EXPIRY: Duration = Duration::from_secs(60);

/// How a listener declares its control queue: like every queue of the
/// protocol when it is the only listener on the name; non-exclusive when
/// several listeners share it (still transient, and deleted once its last
/// consumer goes); a durable quorum queue when they share it `replicated`
/// over a cluster's nodes, which the broker deletes after
/// [`REPLICATED_QUEUE_EXPIRY`] with no consumer (a quorum queue cannot be
/// exclusive or deleted with its last consumer).
pub(crate) fn listener_queue_declare_options(
    shared: bool,
    replicated: bool,
) -> QueueDeclareOptions {
    if replicated {
        let mut arguments = FieldTable::new();
        arguments.insert(
            "x-queue-type".to_string(),
            AmqpValue::LongString("quorum".to_string()),
        );
        let expiry = u32::try_from(REPLICATED_QUEUE_EXPIRY.as_millis()).unwrap_or(u32::MAX);
        arguments.insert("x-expires".to_string(), AmqpValue::LongUInt(expiry));
        return QueueDeclareOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments,
        };
    }
    QueueDeclareOptions {
        exclusive: !shared,
        ..queue_declare_options()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_queues_are_exclusive_shared_or_replicated() {
        let alone = listener_queue_declare_options(false, false);
        assert!(alone.exclusive && alone.auto_delete && !alone.durable);
        let shared = listener_queue_declare_options(true, false);
        assert!(!shared.exclusive && shared.auto_delete && !shared.durable);
        let replicated = listener_queue_declare_options(true, true);
        assert!(!replicated.exclusive && !replicated.auto_delete && replicated.durable);
        assert_eq!(
            replicated.arguments.get("x-queue-type"),
            Some(&AmqpValue::LongString("quorum".to_string()))
        );
        assert_eq!(
            replicated.arguments.get("x-expires"),
            Some(&AmqpValue::LongUInt(60_000))
        );
    }

    #[test]
    fn queue_names_are_unique_and_prefixed() {
        let a = new_queue_name();
        let b = new_queue_name();
        assert_ne!(a, b);
        assert!(a.starts_with(QUEUE_PREFIX));
        assert!(a.len() < 255, "AMQP short strings hold 255 bytes");
    }

    #[test]
    fn queue_names_hold_1_to_255_bytes() {
        assert!(check_queue_name("q", "a").is_ok());
        assert!(check_queue_name(&"q".repeat(255), "a").is_ok());
        for bad in [String::new(), "q".repeat(256)] {
            let err = check_queue_name(&bad, "a listener's").unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("255"), "{err}");
        }
    }

    #[test]
    fn stream_queues_are_broker_named_or_ours() {
        for stream in [
            new_queue_name().as_str(),
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            "amqp-stream.0b6e6b9e-0a4e-4a4f-9d1e-2f0c3a5b7d11",
        ] {
            assert!(is_stream_queue_name(stream), "{stream}");
        }
        for other in [
            "ssh",
            "amqp-stream.",
            "amqp-stream.ssh",
            "amqp-stream.conn.0b6e6b9e-0a4e-4a4f-9d1e-2f0c3a5b7d11",
            "amq.gen-",
            "amq.rabbitmq.reply-to.a.b",
            "",
        ] {
            assert!(!is_stream_queue_name(other), "{other}");
        }
    }

    #[test]
    fn a_peers_queue_is_one_a_peer_can_own() {
        for good in [
            "q",
            "amqp-stream.conn.x",
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            "amq-foo",
            "AMQ.rabbitmq.x",
        ] {
            assert_eq!(check_peer_queue(good), Ok(()), "{good}");
        }
        let long = "q".repeat(256);
        for bad in [
            "",
            long.as_str(),
            "amq.rabbitmq.reply-to",
            "amq.rabbitmq.reply-to.a.b",
            "amq.direct",
            "amq.",
            "amq.gen",
        ] {
            let why = check_peer_queue(bad).unwrap_err();
            assert!(why.contains("amq.") || why.contains("255"), "{bad}: {why}");
        }
    }

    #[test]
    fn queues_are_exclusive_transient_auto_delete() {
        let o = queue_declare_options();
        assert!(o.exclusive && o.auto_delete && !o.durable);
    }
}
