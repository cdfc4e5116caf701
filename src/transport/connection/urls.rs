//! The addresses of one broker or of a cluster's nodes, and the order in
//! which a connection tries them.

use super::url::BrokerUrl;
use crate::error::Error;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The URLs of a RabbitMQ cluster's nodes (or of one broker): what every
/// function taking a broker URL string accepts.
///
/// The form is a comma-separated list of full `amqp://` (or `amqps://`)
/// URLs, as RabbitMQ's PerfTest (`--uris`) and Shovel (`src-uri` lists)
/// take them: `amqp://app:pw@node1:5672/prod,amqp://app:pw@node2:5672/prod`.
/// Each address is a complete [`BrokerUrl`], so each has its own host,
/// port, credentials, TLS (`amqp://` or `amqps://`) and query parameters;
/// they must all name the same virtual host, since a listener's queue
/// lives in one. A comma splits the list only where the next address's
/// `amqp://` or `amqps://` follows it (spaces around it are allowed), so
/// a single URL whose password or query holds a comma still parses as
/// one; a comma inside a host (`amqp://host1,host2`) is refused with a
/// hint.
///
/// Opening a connection tries the addresses in a random order, as the
/// RabbitMQ Java client does by default, so that the clients of a cluster
/// spread over its nodes (each connection's exclusive queues live on the
/// node it is connected to); a connection that reconnects after losing
/// its node tries that node last. Each failure is logged at `info` and
/// the next address tried. The connect timeout covers the whole list: each
/// address gets what is left divided by the addresses not yet tried, but
/// at least 2 s (Go's `net.Dial` spreads its timeout the same way), so one
/// node that does not answer cannot use up all of it. The timeout is the
/// one given (as [`Stream::connect_timeout`](crate::Stream::connect_timeout)
/// gives one), else the longest `connection_timeout` an address sets, else
/// 10 s; an address's own `connection_timeout` also limits its attempt.
/// When every address fails, the error is [`Error::AllBrokersFailed`],
/// which names each failure. A single URL works exactly as it always did.
///
/// `Display` and `Debug` never show a password. Where a stream or
/// listener is (its [`Addr`](crate::Addr)) names the node it is connected
/// to.
///
/// ```
/// use amqp_stream::BrokerUrls;
///
/// let nodes: BrokerUrls =
///     "amqp://app:s3cret@node1:5672/prod, amqps://app:s3cret@node2/prod".parse()?;
/// assert_eq!(nodes.as_slice().len(), 2);
/// assert_eq!(nodes.as_slice()[1].port(), 5671);
/// assert_eq!(nodes.to_string(), "amqp://app@node1:5672/prod,amqps://app@node2:5671/prod");
/// assert!(!format!("{nodes:?}").contains("s3cret"));
/// // One URL is a list of one.
/// assert_eq!(amqp_stream::BrokerUrls::parse("amqp://localhost")?.as_slice().len(), 1);
/// # Ok::<(), amqp_stream::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrls {
    /// Never empty.
    urls: Vec<BrokerUrl>,
}

impl BrokerUrls {
    /// Parses one broker URL or a comma-separated list of them; the same
    /// as `s.parse()`.
    ///
    /// A malformed list is an [`Error::InvalidUrl`] that says which
    /// address is wrong and never repeats a password.
    ///
    /// ```
    /// use amqp_stream::BrokerUrls;
    ///
    /// assert!(BrokerUrls::parse("amqp://node1,amqp://node2").is_ok());
    /// assert!(BrokerUrls::parse("amqp://node1,node2").is_err());
    /// assert!(BrokerUrls::parse("amqp://node1/a,amqp://node2/b").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<BrokerUrls, Error> {
        s.parse()
    }

    /// The addresses, in the order written.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrls;
    /// let nodes = BrokerUrls::parse("amqp://node1,amqp://node2")?;
    /// let hosts: Vec<&str> = nodes.as_slice().iter().map(|url| url.host()).collect();
    /// assert_eq!(hosts, ["node1", "node2"]);
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn as_slice(&self) -> &[BrokerUrl] {
        &self.urls
    }

    /// The longest `connection_timeout` an address sets.
    pub(crate) fn connection_timeout(&self) -> Option<Duration> {
        self.urls
            .iter()
            .filter_map(BrokerUrl::connection_timeout)
            .max()
    }

    /// The addresses in the order to try them: shuffled, then `last` (the
    /// node a connection just lost) moved to the end.
    pub(crate) fn connect_order(&self, last: Option<&BrokerUrl>) -> Vec<&BrokerUrl> {
        let mut order: Vec<&BrokerUrl> = self.urls.iter().collect();
        shuffle(&mut order);
        if let Some(last) = last {
            // Stable: the others keep their random order.
            order.sort_by_key(|url| *url == last);
        }
        order
    }
}

/// Shuffles `items` (Fisher-Yates), drawing on `uuid`'s random version-4
/// ids (the operating system's random source) rather than a crate of its
/// own; the bias of `% n` on 122 random bits is nil for any list of
/// brokers.
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let random = uuid::Uuid::new_v4().as_u128();
        let j = (random % (i as u128 + 1)) as usize;
        items.swap(i, j);
    }
}

/// How long the next of `addresses_left` addresses may take when
/// `remaining` is left of the connect timeout: an even share, but at
/// least 2 s (or all that is left), as Go's `net.Dial` does
/// (`partialDeadline`).
pub(crate) fn attempt_time(remaining: Duration, addresses_left: usize) -> Duration {
    const SANE_MINIMUM: Duration = Duration::from_secs(2);
    let left = u32::try_from(addresses_left.max(1)).unwrap_or(u32::MAX);
    let share = remaining / left;
    if share < SANE_MINIMUM {
        remaining.min(SANE_MINIMUM)
    } else {
        share
    }
}

impl FromStr for BrokerUrls {
    type Err = Error;

    fn from_str(s: &str) -> Result<BrokerUrls, Error> {
        let parts = split(s);
        let total = parts.len();
        let mut urls: Vec<BrokerUrl> = Vec::with_capacity(total);
        for (index, part) in parts.into_iter().enumerate() {
            // Which address is wrong matters only in a list of several.
            let at = (total > 1).then_some((index + 1, total));
            if part.trim().is_empty() {
                return Err(invalid(s, at, "it is empty"));
            }
            check_host(s, part, at)?;
            let url: BrokerUrl = part.parse().map_err(|err| match err {
                Error::InvalidUrl { reason, .. } => invalid(s, at, &reason),
                other => other,
            })?;
            if let Some(first) = urls.first()
                && first.vhost() != url.vhost()
            {
                return Err(invalid(
                    s,
                    at,
                    &format!(
                        "it names the virtual host {:?}, address 1 names {:?}: every address of a list must name the same one",
                        url.vhost(),
                        first.vhost()
                    ),
                ));
            }
            urls.push(url);
        }
        Ok(BrokerUrls { urls })
    }
}

impl From<BrokerUrl> for BrokerUrls {
    /// A list of one.
    fn from(url: BrokerUrl) -> BrokerUrls {
        BrokerUrls { urls: vec![url] }
    }
}

impl fmt::Display for BrokerUrls {
    /// The addresses as [`BrokerUrl`] prints them (no password, no query),
    /// separated by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, url) in self.urls.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{url}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUrls").field(&self.urls).finish()
    }
}

/// Splits a list at each comma followed (after spaces) by `amqp://` or
/// `amqps://`, or by nothing (a trailing comma: an empty address).
fn split(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (comma, _) in s.match_indices(',') {
        let next = s[comma + 1..].trim_start();
        if next.is_empty() || starts_with_scheme(next) {
            parts.push(&s[start..comma]);
            start = comma + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

fn starts_with_scheme(s: &str) -> bool {
    ["amqp://", "amqps://"].iter().any(|scheme| {
        s.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    })
}

/// Refuses a comma in the host part of `part` (`amqp://host1,host2`,
/// Spring's host list written as one URL), which would otherwise be taken
/// for a host name and fail only when it is looked up.
fn check_host(list: &str, part: &str, at: Option<(usize, usize)>) -> Result<(), Error> {
    let Some(scheme_end) = part.find("://") else {
        return Ok(());
    };
    let rest = &part[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..]);
    if host.contains(',') {
        return Err(invalid(
            list,
            at,
            "a host cannot hold a comma: write a list of brokers as full URLs separated by commas (amqp://user:password@host1,amqp://user:password@host2)",
        ));
    }
    Ok(())
}

/// An invalid list: `url` is all of it, without passwords; `at` is which
/// address (1-based) of how many is wrong, for a list of several.
fn invalid(list: &str, at: Option<(usize, usize)>, reason: &str) -> Error {
    let reason = match at {
        Some((n, total)) => format!("address {n} of {total}: {reason}"),
        None => reason.to_string(),
    };
    Error::InvalidUrl {
        url: redact_all(list),
        reason,
    }
}

/// Removes every password from text that may hold several URLs, parsed
/// or not: after each `://`, up to the next one, the user information
/// before the authority's last `@` keeps only the user name.
fn redact_all(text: &str) -> String {
    let Some(first) = text.find("://") else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first + 3]);
    let mut rest = &text[first + 3..];
    loop {
        let next = rest.find("://");
        let segment = &rest[..next.unwrap_or(rest.len())];
        let authority = &segment[..segment.find(['/', '?', '#']).unwrap_or(segment.len())];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                out.push_str(userinfo.split(':').next().unwrap_or(""));
                if userinfo.contains(':') {
                    out.push_str(":***");
                }
                out.push_str(&segment[at..]);
            }
            None => out.push_str(segment),
        }
        match next {
            Some(next) => {
                out.push_str("://");
                rest = &rest[next + 3..];
            }
            None => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_list_of_one_as_before() {
        for single in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://u:p,q@h/",
            "amqp://h/?heartbeat=5",
            " amqp://h ",
        ] {
            let list: BrokerUrls = single.parse().unwrap();
            assert_eq!(list.as_slice(), [single.parse::<BrokerUrl>().unwrap()]);
        }
        assert_eq!(
            BrokerUrls::parse("amqp://u:p,q@h/").unwrap().as_slice()[0].password(),
            "p,q"
        );
    }

    #[test]
    fn a_list_splits_before_each_scheme() {
        let list: BrokerUrls = "amqp://a:pw,1@h1:1/v?heartbeat=3, AMQPS://b@h2/v ,amqp://h3:3/v"
            .parse()
            .unwrap();
        let urls = list.as_slice();
        assert_eq!(urls.len(), 3);
        assert_eq!((urls[0].host(), urls[0].port()), ("h1", 1));
        assert_eq!(urls[0].password(), "pw,1");
        assert_eq!(urls[0].heartbeat(), 3);
        assert!(urls[1].is_tls());
        assert_eq!(urls[1].username(), "b");
        assert_eq!(urls[2].port(), 3);
        assert!(urls.iter().all(|url| url.vhost() == "v"));
        assert_eq!(
            list.to_string(),
            "amqp://a@h1:1/v,amqps://b@h2:5671/v,amqp://guest@h3:3/v"
        );
    }

    #[test]
    fn bad_lists_say_which_address_and_hide_passwords() {
        for (bad, says) in [
            (
                "amqp://u:hunter2@h1,amqp://u:hunter2@h2/x",
                "address 2 of 2",
            ),
            ("amqp://u:hunter2@h1,", "address 2 of 2: it is empty"),
            (
                "amqp://u:hunter2@h1, ,amqp://h2",
                "host cannot hold a comma",
            ),
            ("amqp://u:hunter2@h1,h2:5672", "host cannot hold a comma"),
            (
                "amqp://u:hunter2@h1,amqp://u:hunter2@h2?heartbeat=x",
                "address 2 of 2",
            ),
            (
                "amqp://u:hunter2@h1,http://u:hunter2@h2",
                "host cannot hold a comma",
            ),
        ] {
            let err = bad.parse::<BrokerUrls>().unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {text}");
            assert!(text.contains(says), "{bad}: {text}");
            assert!(!text.contains("hunter2"), "{bad}: {text}");
        }
    }

    #[test]
    fn redact_all_hides_each_password() {
        assert_eq!(redact_all("amqp://u:p@h:1/x"), "amqp://u:***@h:1/x");
        assert_eq!(
            redact_all("amqp://u:p@h1/v,amqp://w:q@h2,http://x:r@h3"),
            "amqp://u:***@h1/v,amqp://w:***@h2,http://x:***@h3"
        );
        assert_eq!(
            redact_all("amqp://u:p@h1,http://u:q@h2"),
            "amqp://u:***@h1,http://u:***@h2"
        );
        assert_eq!(redact_all("amqp://u:p:q@@h"), "amqp://u:***@h");
        assert_eq!(redact_all("amqp://h/x@y"), "amqp://h/x@y");
        assert_eq!(redact_all("plain"), "plain");
    }

    #[test]
    fn debug_hides_every_password() {
        let list: BrokerUrls = "amqp://a:hunter2@h1,amqp://b:hunter3@h2".parse().unwrap();
        let debug = format!("{list:?}");
        assert!(!debug.contains("hunter"), "{debug}");
        assert!(debug.contains("h1") && debug.contains("h2"), "{debug}");
    }

    #[test]
    fn the_order_is_random_and_puts_the_lost_node_last() {
        let list: BrokerUrls = "amqp://h1,amqp://h2,amqp://h3".parse().unwrap();
        let lost = &list.as_slice()[0];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let order = list.connect_order(None);
            let mut hosts: Vec<&str> = order.iter().map(|url| url.host()).collect();
            firsts.insert(hosts[0]);
            hosts.sort();
            assert_eq!(hosts, ["h1", "h2", "h3"]);
            let order = list.connect_order(Some(lost));
            assert_eq!(order[2].host(), "h1");
        }
        // Each node comes first about a third of the time: all three do
        // within 200 draws (a miss has odds of about 3 * (2/3)^200).
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn the_timeout_is_shared_out_with_a_floor() {
        let s = Duration::from_secs;
        assert_eq!(attempt_time(s(9), 3), s(3));
        assert_eq!(attempt_time(s(6), 2), s(3));
        assert_eq!(attempt_time(s(3), 1), s(3));
        // Never less than 2 s, unless less is left.
        assert_eq!(attempt_time(s(4), 3), s(2));
        assert_eq!(
            attempt_time(Duration::from_millis(1500), 3),
            Duration::from_millis(1500)
        );
        assert_eq!(attempt_time(Duration::ZERO, 2), Duration::ZERO);
    }

    #[test]
    fn the_list_timeout_is_the_longest_an_address_sets() {
        let list: BrokerUrls =
            "amqp://h1?connection_timeout=500,amqp://h2,amqp://h3?connection_timeout=2000"
                .parse()
                .unwrap();
        assert_eq!(list.connection_timeout(), Some(Duration::from_secs(2)));
        let none: BrokerUrls = "amqp://h1,amqp://h2".parse().unwrap();
        assert_eq!(none.connection_timeout(), None);
    }
}
