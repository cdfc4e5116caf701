//! The protocol versions a stream can speak.

use std::fmt;

/// A version of the amqp-stream wire protocol.
///
/// Streams negotiate the highest version both ends speak when they
/// connect; [`StreamOptions::protocol_version`](crate::StreamOptions::protocol_version)
/// pins one instead, and [`Stream::protocol_version`](crate::Stream::protocol_version)
/// tells which one a stream speaks.
///
/// * **Version 1** is the original protocol, spoken by the Go
///   implementation: data, FIN, nothing else.
/// * **Version 2** adds credit flow control (a receive window),
///   sequence numbers, keepalive frames and reset.
/// * **Version 3** keeps version 2's frames and gives a stream no broker
///   queue or channel of its own: every stream end is addressed by its
///   connection's queue and a stream id, so setup is the SYN and the
///   SYN-ACK alone, and nothing is acknowledged per message.
///
/// ```
/// use amqp_stream::ProtocolVersion;
/// assert!(ProtocolVersion::V2 > ProtocolVersion::V1);
/// assert_eq!(ProtocolVersion::LATEST, ProtocolVersion::V3);
/// assert_eq!(ProtocolVersion::V2.number(), 2);
/// assert_eq!(ProtocolVersion::V1.to_string(), "1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// The original protocol, wire-compatible with the Go implementation.
    V1,
    /// Version 1 plus flow control, sequence numbers, keepalive and reset.
    V2,
    /// Version 2's frames on a queue per AMQP connection: no queue, channel
    /// or acknowledgement per stream.
    V3,
}

impl ProtocolVersion {
    /// The newest version this crate speaks.
    ///
    /// ```
    /// # use amqp_stream::ProtocolVersion;
    /// assert_eq!(ProtocolVersion::LATEST.number(), 3);
    /// ```
    pub const LATEST: ProtocolVersion = ProtocolVersion::V3;

    /// The version's number on the wire.
    ///
    /// ```
    /// # use amqp_stream::ProtocolVersion;
    /// assert_eq!(ProtocolVersion::V1.number(), 1);
    /// ```
    pub fn number(self) -> u64 {
        match self {
            ProtocolVersion::V1 => 1,
            ProtocolVersion::V2 => 2,
            ProtocolVersion::V3 => 3,
        }
    }

    /// The highest version this crate speaks that is at most `number`;
    /// `None` below 1.
    pub(crate) fn at_most(number: u64) -> Option<ProtocolVersion> {
        match number {
            0 => None,
            1 => Some(ProtocolVersion::V1),
            2 => Some(ProtocolVersion::V2),
            _ => Some(ProtocolVersion::V3),
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}
