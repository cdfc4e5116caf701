//! The messages on a stream's receive queue once the handshake is done:
//! how each version marks them and how they are told apart.
//!
//! Version 1 has data (a non-empty body) and FIN (an empty body). Version
//! 2 names every frame in the AMQP `type` property and numbers data and
//! FIN frames in `message_id`:
//!
//! | `type`      | `message_id` | body                                  |
//! |-------------|--------------|---------------------------------------|
//! | `data`      | sequence     | stream bytes (never empty)            |
//! | `fin`       | sequence     | empty                                 |
//! | `window`    | —            | 8 bytes: bytes consumed, big-endian   |
//! | `keepalive` | —            | empty                                 |
//! | `reset`     | —            | why, UTF-8 (may be empty)             |

use crate::version::ProtocolVersion;
use amiquip::AmqpProperties;

/// The AMQP `type` of a version-2 data frame.
pub(crate) const DATA: &str = "data";
/// The AMQP `type` of a version-2 FIN frame.
pub(crate) const FIN: &str = "fin";
/// The AMQP `type` of a version-2 window update.
pub(crate) const WINDOW: &str = "window";
/// The AMQP `type` of a version-2 keepalive.
pub(crate) const KEEPALIVE: &str = "keepalive";
/// The AMQP `type` of a version-2 reset.
pub(crate) const RESET: &str = "reset";

/// The AMQP `type` of the marker a stream puts on its *own* queue when it
/// learns that the peer is gone. Only the stream that publishes it ever
/// consumes it: it is never sent to a peer. Anyone who can publish to the
/// queue could send one, so the marker also carries, in `message_id`, a
/// secret the stream picked ([`new_marker`]); a message of this type
/// without it is not the marker.
pub(crate) const PEER_GONE: &str = "amqp-stream.local.peer-gone";

/// A new secret for a stream's "peer gone" marker.
pub(crate) fn new_marker() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What a message on a stream's receive queue means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Bytes of the stream (version 2: with their sequence number).
    Data(Option<u64>),
    /// The peer will send no more (version 2: with its sequence number).
    Fin(Option<u64>),
    /// The peer's reader has consumed this many bytes in all.
    Window(u64),
    /// The peer is alive; nothing else.
    Keepalive,
    /// The peer aborted the stream, saying why.
    Reset(String),
    /// Our own marker: the peer is gone and nothing will follow.
    PeerGone,
    /// A message that breaks the protocol, and how.
    Invalid(String),
}

impl Frame {
    /// Whether the frame is for the reader, in stream order (as opposed to
    /// a control frame, handled as soon as it arrives).
    pub(crate) fn is_for_reader(&self) -> bool {
        !matches!(self, Frame::Window(_) | Frame::Keepalive)
    }
}

/// Tells apart the messages on a stream's receive queue; `marker` is the
/// secret of this stream's own "peer gone" marker.
pub(crate) fn classify(
    version: ProtocolVersion,
    body: &[u8],
    properties: &AmqpProperties,
    marker: &str,
) -> Frame {
    let kind = properties.type_().as_deref();
    if kind == Some(PEER_GONE) {
        if properties.message_id().as_deref() == Some(marker) {
            return Frame::PeerGone;
        }
        if version != ProtocolVersion::V1 {
            return Frame::Invalid(format!(
                "frame type {PEER_GONE:?} is for local use only: a peer may not send it"
            ));
        }
        // Version 1 ignores properties: a body is data, none is the FIN.
    }
    if version == ProtocolVersion::V1 {
        return if body.is_empty() {
            Frame::Fin(None)
        } else {
            Frame::Data(None)
        };
    }
    let seq = || match properties.message_id().as_deref().map(str::parse::<u64>) {
        Some(Ok(seq)) => Ok(Some(seq)),
        _ => Err(Frame::Invalid(format!(
            "a {} frame needs its sequence number in message_id, got {:?}",
            kind.unwrap_or_default(),
            properties.message_id()
        ))),
    };
    match kind {
        Some(DATA) if body.is_empty() => Frame::Invalid("an empty data frame".to_string()),
        Some(DATA) => seq().map_or_else(|invalid| invalid, Frame::Data),
        Some(FIN) => seq().map_or_else(|invalid| invalid, Frame::Fin),
        Some(WINDOW) => match <[u8; 8]>::try_from(body) {
            Ok(bytes) => Frame::Window(u64::from_be_bytes(bytes)),
            Err(_) => Frame::Invalid(format!(
                "a window frame carries 8 bytes, this one {}",
                body.len()
            )),
        },
        Some(KEEPALIVE) => Frame::Keepalive,
        Some(RESET) => Frame::Reset(String::from_utf8_lossy(body).into_owned()),
        Some(other) => Frame::Invalid(format!("unknown frame type {other:?}")),
        None => Frame::Invalid("a version-2 frame without a type".to_string()),
    }
}

/// Properties of a data frame.
pub(crate) fn data_properties(version: ProtocolVersion, seq: u64) -> AmqpProperties {
    sequenced(version, DATA, seq)
}

/// Properties of a FIN frame (its body is empty in every version).
pub(crate) fn fin_properties(version: ProtocolVersion, seq: u64) -> AmqpProperties {
    sequenced(version, FIN, seq)
}

fn sequenced(version: ProtocolVersion, kind: &str, seq: u64) -> AmqpProperties {
    match version {
        ProtocolVersion::V1 => AmqpProperties::default(),
        _ => AmqpProperties::default()
            .with_type_(kind.to_string())
            .with_message_id(seq.to_string()),
    }
}

/// A window update: its properties and body.
pub(crate) fn window_frame(consumed: u64) -> (AmqpProperties, [u8; 8]) {
    (
        AmqpProperties::default().with_type_(WINDOW.to_string()),
        consumed.to_be_bytes(),
    )
}

/// Properties of a keepalive (empty body).
pub(crate) fn keepalive_properties() -> AmqpProperties {
    AmqpProperties::default().with_type_(KEEPALIVE.to_string())
}

/// Properties of a reset (the body says why).
pub(crate) fn reset_properties() -> AmqpProperties {
    AmqpProperties::default().with_type_(RESET.to_string())
}

/// Properties of the local "peer gone" marker, with its secret.
pub(crate) fn peer_gone_properties(marker: &str) -> AmqpProperties {
    AmqpProperties::default()
        .with_type_(PEER_GONE.to_string())
        .with_message_id(marker.to_string())
}

/// Checks that sequence numbers come one after another from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SequenceCheck {
    next: u64,
}

impl Default for SequenceCheck {
    fn default() -> SequenceCheck {
        SequenceCheck { next: 1 }
    }
}

impl SequenceCheck {
    /// Takes the next frame's number (`None` in version 1: nothing to
    /// check); a gap or a repeat is an error that says which.
    pub(crate) fn check(&mut self, seq: Option<u64>) -> Result<(), String> {
        let Some(seq) = seq else { return Ok(()) };
        if seq == self.next {
            self.next += 1;
            Ok(())
        } else if seq < self.next {
            Err(format!(
                "duplicate frame: sequence number {seq} again (expected {})",
                self.next
            ))
        } else {
            Err(format!(
                "lost frames: sequence number {seq} where {} was expected",
                self.next
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolVersion::{V1, V2};

    /// This stream's marker secret.
    const M: &str = "0123456789abcdef";

    fn classify(version: ProtocolVersion, body: &[u8], properties: &AmqpProperties) -> Frame {
        super::classify(version, body, properties, M)
    }

    #[test]
    fn version_one_frames() {
        let plain = data_properties(V1, 7);
        assert_eq!(
            plain,
            AmqpProperties::default(),
            "v1 data has no properties"
        );
        assert_eq!(classify(V1, b"abc", &plain), Frame::Data(None));
        assert_eq!(classify(V1, b"", &fin_properties(V1, 1)), Frame::Fin(None));
        assert_eq!(classify(V1, b"", &peer_gone_properties(M)), Frame::PeerGone);
        // A version-1 peer's data with a reply_to is still data.
        let odd = AmqpProperties::default().with_reply_to("q".to_string());
        assert_eq!(classify(V1, b"a", &odd), Frame::Data(None));
    }

    #[test]
    fn version_two_frames_round_trip() {
        assert_eq!(
            classify(V2, b"abc", &data_properties(V2, 5)),
            Frame::Data(Some(5))
        );
        assert_eq!(
            classify(V2, b"", &fin_properties(V2, 6)),
            Frame::Fin(Some(6))
        );
        let (props, body) = window_frame(1 << 40);
        assert_eq!(classify(V2, &body, &props), Frame::Window(1 << 40));
        assert_eq!(classify(V2, b"", &keepalive_properties()), Frame::Keepalive);
        assert_eq!(
            classify(V2, b"bye", &reset_properties()),
            Frame::Reset("bye".to_string())
        );
        assert_eq!(classify(V2, b"", &peer_gone_properties(M)), Frame::PeerGone);
        assert!(!Frame::Window(1).is_for_reader() && !Frame::Keepalive.is_for_reader());
        assert!(Frame::Data(None).is_for_reader() && Frame::Reset(String::new()).is_for_reader());
    }

    #[test]
    fn malformed_version_two_frames_are_invalid() {
        let invalid = |frame: Frame| matches!(frame, Frame::Invalid(_));
        assert!(invalid(classify(V2, b"abc", &AmqpProperties::default())));
        assert!(invalid(classify(V2, b"", &data_properties(V2, 1))));
        let no_seq = AmqpProperties::default().with_type_(DATA.to_string());
        assert!(invalid(classify(V2, b"a", &no_seq)));
        let bad_seq = no_seq.with_message_id("x".to_string());
        assert!(invalid(classify(V2, b"a", &bad_seq)));
        let (props, _) = window_frame(1);
        assert!(invalid(classify(V2, b"123", &props)));
        let unknown = AmqpProperties::default().with_type_("gossip".to_string());
        assert!(invalid(classify(V2, b"", &unknown)));
    }

    #[test]
    fn a_peer_gone_marker_without_our_secret_is_not_ours() {
        let forged = peer_gone_properties("guessed");
        assert!(matches!(classify(V2, b"", &forged), Frame::Invalid(_)));
        let bare = AmqpProperties::default().with_type_(PEER_GONE.to_string());
        assert!(matches!(classify(V2, b"", &bare), Frame::Invalid(_)));
        // Version 1 goes by the body alone, as a version-1 peer's data does.
        assert_eq!(classify(V1, b"", &forged), Frame::Fin(None));
        assert_eq!(classify(V1, b"x", &bare), Frame::Data(None));
        assert_ne!(new_marker(), new_marker());
    }

    #[test]
    fn sequence_gaps_and_repeats_are_errors() {
        let mut check = SequenceCheck::default();
        assert_eq!(check.check(None), Ok(()));
        assert_eq!(check.check(Some(1)), Ok(()));
        assert_eq!(check.check(Some(2)), Ok(()));
        assert!(check.check(Some(2)).unwrap_err().contains("duplicate"));
        assert!(check.check(Some(4)).unwrap_err().contains("lost"));
        assert_eq!(check.check(Some(3)), Ok(()));
    }
}
