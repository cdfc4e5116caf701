//! `Addr`: where a stream end lives (a broker and a queue on it).

use crate::error::Error;
use crate::transport::connection::url::BrokerUrl;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::fmt;
use std::str::FromStr;

/// Characters escaped in a queue name printed as a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The address of one end of a stream: a broker and a queue on it, the way
/// a `SocketAddr` is a host and a port.
///
/// It prints, and parses, in the form the Go implementation of the
/// protocol uses: `amqp://user@host:port/vhost?server_queue=NAME`. The
/// printed form never holds the password; a parsed one may (it is kept,
/// but shown by neither `Display` nor `Debug`).
///
/// ```
/// use amqp_stream::Addr;
///
/// let addr: Addr = "amqp://guest:guest@127.0.0.1:5672/%2f?server_queue=echo".parse()?;
/// assert_eq!(addr.queue(), "echo");
/// assert_eq!(addr.broker().host(), "127.0.0.1");
/// assert_eq!(addr.to_string(), "amqp://guest@127.0.0.1:5672/%2F?server_queue=echo");
/// # Ok::<(), amqp_stream::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Addr {
    broker: BrokerUrl,
    queue: String,
}

impl Addr {
    /// An address from its parts.
    ///
    /// ```
    /// use amqp_stream::{Addr, BrokerUrl};
    /// let addr = Addr::new(BrokerUrl::parse("amqp://localhost")?, "echo");
    /// assert_eq!(addr.queue(), "echo");
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn new(broker: BrokerUrl, queue: impl Into<String>) -> Addr {
        Addr {
            broker,
            queue: queue.into(),
        }
    }

    /// The broker the queue is reached through: for the ends of a stream
    /// or a listener on a cluster, the node their connection is on.
    ///
    /// ```
    /// # use amqp_stream::Addr;
    /// let addr: Addr = "amqp://h:1/%2f?server_queue=q".parse()?;
    /// assert_eq!(addr.broker().port(), 1);
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn broker(&self) -> &BrokerUrl {
        &self.broker
    }

    /// The queue name.
    ///
    /// ```
    /// # use amqp_stream::Addr;
    /// let addr: Addr = "amqp://h/%2f?server_queue=my%20queue".parse()?;
    /// assert_eq!(addr.queue(), "my queue");
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

impl FromStr for Addr {
    type Err = Error;

    /// Parses `amqp://user:pass@host:port/vhost?server_queue=NAME`.
    fn from_str(s: &str) -> Result<Addr, Error> {
        let mut queue = None;
        let broker = BrokerUrl::parse_with(s, |key, value| {
            if key == "server_queue" {
                queue = Some(value.to_string());
                true
            } else {
                false
            }
        })?;
        match queue {
            Some(queue) if !queue.is_empty() => Ok(Addr { broker, queue }),
            _ => Err(Error::InvalidUrl {
                url: crate::transport::connection::url::redact(s),
                reason: "a stream address needs ?server_queue=NAME".to_string(),
            }),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}?server_queue={}",
            self.broker,
            utf8_percent_encode(&self.queue, QUERY_VALUE)
        )
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Addr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let addr: Addr = "amqp://u:secret@h:5/v?server_queue=a%2Fb%20c"
            .parse()
            .unwrap();
        assert_eq!(addr.queue(), "a/b c");
        let printed = addr.to_string();
        assert_eq!(printed, "amqp://u@h:5/v?server_queue=a%2Fb%20c");
        assert!(!format!("{addr:?}").contains("secret"));
        let again: Addr = printed.parse().unwrap();
        assert_eq!(again.queue(), addr.queue());
        assert_eq!(again.broker().host(), "h");
    }

    #[test]
    fn needs_a_queue() {
        for bad in [
            "amqp://u:secret@h/v",
            "amqp://u:secret@h/v?server_queue=",
            "amqp://u:secret@h/v?server_queue=a&other=1",
        ] {
            let err = bad.parse::<Addr>().unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }
}
