//! The crate's error type and its mapping onto `std::io::ErrorKind`.

use std::io;
use std::time::Duration;

/// Everything that can go wrong, with the queue or broker it happened on.
///
/// Every public call returns `std::io::Result`, like `std::net`; an
/// `Error` travels inside the `io::Error` and can be taken out again with
/// [`io::Error::get_ref`] and `downcast_ref`. Messages name the broker by
/// its URL without the password, never with it.
///
/// ```
/// use amqp_stream::Error;
/// use std::io;
///
/// let err = Error::AddrInUse { queue: "echo".into() };
/// assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
/// let io_err: io::Error = err.into();
/// assert_eq!(io_err.kind(), io::ErrorKind::AddrInUse);
/// assert!(io_err.to_string().contains("echo"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker URL or stream address could not be parsed.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument other than the URL is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The URL asks for something this build cannot do (such as TLS).
    #[error("{0}")]
    Unsupported(String),
    /// No TCP connection to the broker could be made: it is not running,
    /// or not at that address (its kind is `HostUnreachable`, whatever
    /// the socket said; [`source`](std::error::Error::source) has the
    /// socket's own error). Told apart from `ConnectionRefused`, which
    /// means the broker is there but nobody listens on the queue.
    ///
    /// ```
    /// use amqp_stream::Error;
    /// use std::io;
    ///
    /// let err = Error::Unreachable {
    ///     broker: "amqp://127.0.0.1:5672/%2f".into(),
    ///     source: io::ErrorKind::ConnectionRefused.into(),
    /// };
    /// assert_eq!(err.kind(), io::ErrorKind::HostUnreachable);
    /// ```
    #[error("cannot reach the broker at {broker}: {source}")]
    Unreachable {
        /// The broker, without password.
        broker: String,
        /// Why the TCP connection failed.
        #[source]
        source: io::Error,
    },
    /// The broker refused the credentials or the virtual host.
    #[error("the broker at {broker} refused access: {reason}")]
    AccessRefused {
        /// The broker, without password.
        broker: String,
        /// What the broker said.
        reason: String,
    },
    /// The TLS connection to the broker could not be set up: its
    /// certificate is not trusted or not for its name, or the client's
    /// own certificate or key could not be used.
    #[error("TLS with the broker at {broker} failed: {reason}")]
    Tls {
        /// The broker, without password.
        broker: String,
        /// What failed, as OpenSSL (or the platform's TLS) says it.
        reason: String,
    },
    /// Nothing listens on the queue: the connection request came back.
    #[error("connection refused: no listener on queue {queue:?}")]
    ConnectionRefused {
        /// The listener's queue that was asked for.
        queue: String,
    },
    /// Another listener already holds the queue.
    #[error("address in use: queue {queue:?} already has a listener")]
    AddrInUse {
        /// The contested queue.
        queue: String,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    TimedOut {
        /// What was being waited for.
        what: String,
        /// How long it was given.
        after: Duration,
    },
    /// The peer broke the protocol (for example a non-empty handshake reply).
    #[error("protocol violation on queue {queue:?}: {reason}")]
    Protocol {
        /// The queue the offending message arrived on.
        queue: String,
        /// What was wrong.
        reason: String,
    },
    /// The broker refused one operation and closed the AMQP channel it
    /// was on; the connection, and every other stream on it, goes on.
    /// The kind follows the broker's reply code: 403 ACCESS_REFUSED is
    /// `PermissionDenied`, 404 NOT_FOUND `NotFound`, 405 RESOURCE_LOCKED
    /// `AddrInUse`, and any other (such as 406 PRECONDITION_FAILED, which
    /// a virtual host's `max-queues` limit gives) `Other`.
    ///
    /// ```
    /// use amqp_stream::Error;
    /// let err = Error::BrokerRefused {
    ///     context: "declaring a stream queue".into(),
    ///     code: 406,
    ///     reason: "PRECONDITION_FAILED - max number of queues reached".into(),
    /// };
    /// assert_eq!(err.kind(), std::io::ErrorKind::Other);
    /// assert!(err.to_string().contains("max number of queues"));
    /// ```
    #[error("the broker refused {context} ({code}): {reason}")]
    BrokerRefused {
        /// What was being done.
        context: String,
        /// The AMQP reply code.
        code: u16,
        /// The broker's reply text.
        reason: String,
    },
    /// Every address of a list of brokers ([`BrokerUrls`](crate::BrokerUrls))
    /// failed: each failure, in the order the addresses were tried. Its
    /// kind is `PermissionDenied` or `InvalidData` when a broker refused
    /// the login or its TLS failed (what the user must fix, however the
    /// other addresses failed), else that of the last failure.
    ///
    /// ```
    /// use amqp_stream::Error;
    /// use std::io;
    ///
    /// let unreachable = |port: u16| Error::Unreachable {
    ///     broker: format!("amqp://guest@node:{port}/%2F"),
    ///     source: io::ErrorKind::ConnectionRefused.into(),
    /// };
    /// let err = Error::AllBrokersFailed { failures: vec![unreachable(1), unreachable(2)] };
    /// assert_eq!(err.kind(), io::ErrorKind::HostUnreachable);
    /// assert!(err.to_string().starts_with("could not connect to any of the 2 brokers: "));
    /// assert!(err.to_string().contains("node:2"));
    /// ```
    #[error("could not connect to any of the {} brokers: {}", failures.len(), list(failures))]
    AllBrokersFailed {
        /// Why each address failed, in the order tried.
        failures: Vec<Error>,
    },
    /// The connection to the broker failed or closed.
    #[error("lost the broker connection while {context}{}", cause(source))]
    Broker {
        /// What was being done.
        context: String,
        /// amiquip's account of it.
        #[source]
        source: Box<amiquip::Error>,
    },
}

impl Error {
    /// The `io::ErrorKind` that `std::net` would give for the same failure.
    ///
    /// ```
    /// use amqp_stream::Error;
    /// let err = Error::ConnectionRefused { queue: "echo".into() };
    /// assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    /// ```
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::InvalidUrl { .. } | Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
            Error::Unreachable { .. } => io::ErrorKind::HostUnreachable,
            Error::AccessRefused { .. } => io::ErrorKind::PermissionDenied,
            Error::Tls { .. } => io::ErrorKind::InvalidData,
            Error::ConnectionRefused { .. } => io::ErrorKind::ConnectionRefused,
            Error::AddrInUse { .. } => io::ErrorKind::AddrInUse,
            Error::TimedOut { .. } => io::ErrorKind::TimedOut,
            Error::Protocol { .. } => io::ErrorKind::InvalidData,
            Error::BrokerRefused { code, .. } => match code {
                403 => io::ErrorKind::PermissionDenied,
                404 => io::ErrorKind::NotFound,
                405 => io::ErrorKind::AddrInUse,
                _ => io::ErrorKind::Other,
            },
            Error::Broker { source, .. } => amqp_kind(source),
            Error::AllBrokersFailed { failures } => failures
                .iter()
                .map(Error::kind)
                .find(|kind| {
                    matches!(
                        kind,
                        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidData
                    )
                })
                .or_else(|| failures.last().map(Error::kind))
                .unwrap_or(io::ErrorKind::NotConnected),
        }
    }

    /// Wraps an amiquip error with what we were doing when it happened: a
    /// refusal that closed only the channel is [`Error::BrokerRefused`],
    /// anything else [`Error::Broker`].
    pub(crate) fn broker(context: impl Into<String>, source: amiquip::Error) -> Error {
        match source {
            amiquip::Error::ServerClosedChannel { code, message, .. } => Error::BrokerRefused {
                context: context.into(),
                code,
                reason: message,
            },
            source => Error::Broker {
                context: context.into(),
                source: Box::new(source),
            },
        }
    }

    /// Whether this is a refusal of one operation that closed only its
    /// channel, the broker connection going on.
    pub(crate) fn is_channel_refusal(&self) -> bool {
        matches!(self, Error::BrokerRefused { .. })
    }
}

/// What amiquip says of a lost connection, after a colon, unless it only
/// names its own threads ("i/o loop dropped sending side of a channel"):
/// "lost the broker connection" says it all then.
fn cause(source: &amiquip::Error) -> String {
    match source {
        amiquip::Error::EventLoopDropped | amiquip::Error::EventLoopClientDropped => String::new(),
        other => format!(": {other}"),
    }
}

/// The failures of a list of brokers, one after the other.
fn list(failures: &[Error]) -> String {
    failures
        .iter()
        .map(Error::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `io::ErrorKind` for an amiquip failure.
fn amqp_kind(err: &amiquip::Error) -> io::ErrorKind {
    use amiquip::Error as E;
    match err {
        E::InvalidCredentials => io::ErrorKind::PermissionDenied,
        E::ServerClosedConnection { code: 403, .. }
        | E::ServerClosedConnection { code: 530, .. } => io::ErrorKind::PermissionDenied,
        E::ServerClosedChannel { code: 403, .. } => io::ErrorKind::PermissionDenied,
        E::ServerClosedChannel { code: 404, .. } => io::ErrorKind::NotFound,
        E::ServerClosedChannel { code: 405, .. } => io::ErrorKind::AddrInUse,
        E::ConnectionTimeout | E::MissedServerHeartbeats => io::ErrorKind::TimedOut,
        E::ExhaustedChannelIds => io::ErrorKind::OutOfMemory,
        _ => io::ErrorKind::ConnectionAborted,
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_std_net() {
        let cases = [
            (
                Error::InvalidUrl {
                    url: "x".into(),
                    reason: "y".into(),
                },
                io::ErrorKind::InvalidInput,
            ),
            (
                Error::ConnectionRefused { queue: "q".into() },
                io::ErrorKind::ConnectionRefused,
            ),
            (
                Error::AddrInUse { queue: "q".into() },
                io::ErrorKind::AddrInUse,
            ),
            (
                Error::TimedOut {
                    what: "w".into(),
                    after: Duration::from_secs(1),
                },
                io::ErrorKind::TimedOut,
            ),
            (
                Error::broker("x", amiquip::Error::InvalidCredentials),
                io::ErrorKind::PermissionDenied,
            ),
            (
                Error::broker("x", amiquip::Error::UnexpectedSocketClose),
                io::ErrorKind::ConnectionAborted,
            ),
            (
                Error::broker("x", refused(403)),
                io::ErrorKind::PermissionDenied,
            ),
            (Error::broker("x", refused(404)), io::ErrorKind::NotFound),
            (Error::broker("x", refused(405)), io::ErrorKind::AddrInUse),
            (Error::broker("x", refused(406)), io::ErrorKind::Other),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(io::Error::from(err).kind(), kind);
        }
    }

    fn refused(code: u16) -> amiquip::Error {
        amiquip::Error::ServerClosedChannel {
            channel_id: 1,
            code,
            message: "PRECONDITION_FAILED - max number of queues reached".into(),
        }
    }

    #[test]
    fn a_channel_refusal_is_not_a_lost_connection() {
        let err = Error::broker("declaring queue \"q\"", refused(406));
        assert!(err.is_channel_refusal());
        let text = err.to_string();
        assert!(!text.contains("lost"), "{text}");
        assert!(text.contains("max number of queues"), "{text}");
        assert!(text.contains("declaring queue"), "{text}");
        let lost = Error::broker("x", amiquip::Error::UnexpectedSocketClose);
        assert!(!lost.is_channel_refusal());
        assert!(lost.to_string().contains("lost the broker connection"));
    }

    #[test]
    fn io_error_keeps_the_source() {
        let io_err: io::Error = Error::AddrInUse { queue: "q".into() }.into();
        let inner = io_err.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert!(matches!(inner, Error::AddrInUse { .. }));
    }
}
