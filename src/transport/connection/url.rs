//! Parsing of `amqp://` broker URLs into connection settings.
//!
//! The credentials live in a [`BrokerUrl`] but never leave it through
//! `Display` or `Debug`: both print the URL with the password removed.

use super::tls_settings::TlsSettings;
use crate::error::Error;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The AMQP port used when a URL names none.
pub const DEFAULT_AMQP_PORT: u16 = 5672;
/// The AMQPS (TLS) port used when an `amqps://` URL names none.
pub const DEFAULT_AMQPS_PORT: u16 = 5671;
/// Heartbeat interval asked of the broker when the URL does not set one.
///
/// Shorter than amiquip's 60 s so that a broker that stops answering is
/// noticed within half a minute rather than two.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Characters escaped in the virtual host and user name when a URL is printed.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A parsed broker URL: where the broker is, which virtual host, and who we are.
///
/// The form is RabbitMQ's URI spec:
/// `amqp://user:password@host:port/vhost?heartbeat=10&connection_timeout=5000`.
/// A missing user and password mean `guest`/`guest`, a missing host means
/// `localhost`, a missing vhost means `/` (write `/` itself as `%2f`).
///
/// `Display` and `Debug` never show the password. The nodes of a cluster
/// are a comma-separated list of such URLs: see [`BrokerUrls`](crate::BrokerUrls).
///
/// ```
/// use amqp_stream::BrokerUrl;
///
/// let url: BrokerUrl = "amqp://app:s3cret@broker.example:5673/prod?heartbeat=5".parse()?;
/// assert_eq!(url.host(), "broker.example");
/// assert_eq!(url.port(), 5673);
/// assert_eq!(url.vhost(), "prod");
/// assert_eq!(url.username(), "app");
/// assert_eq!(url.to_string(), "amqp://app@broker.example:5673/prod");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// # Ok::<(), amqp_stream::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    tls: bool,
    host: String,
    port: u16,
    vhost: String,
    username: String,
    password: String,
    heartbeat: u16,
    connection_timeout: Option<Duration>,
    channel_max: Option<u16>,
    tls_settings: TlsSettings,
}

impl BrokerUrl {
    /// Parses a broker URL; the same as `s.parse()`.
    ///
    /// A malformed URL is an [`Error::InvalidUrl`] whose message never
    /// repeats the password.
    ///
    /// ```
    /// use amqp_stream::BrokerUrl;
    ///
    /// assert!(BrokerUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
    /// assert!(BrokerUrl::parse("http://127.0.0.1").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<BrokerUrl, Error> {
        s.parse()
    }

    /// Whether the URL asks for TLS (`amqps://`).
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert!(BrokerUrl::parse("amqps://host")?.is_tls());
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The broker's host name or IP address (IPv6 without brackets).
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://[::1]:5672")?.host(), "::1");
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The broker's TCP port.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://host")?.port(), 5672);
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The virtual host, percent-decoded (`%2f` is `/`).
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://host/%2f")?.vhost(), "/");
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The user name, percent-decoded.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://host")?.username(), "guest");
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The heartbeat interval asked of the broker, in seconds (0 turns
    /// heartbeats off). Set with `?heartbeat=N`.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://host?heartbeat=30")?.heartbeat(), 30);
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn heartbeat(&self) -> u16 {
        self.heartbeat
    }

    /// How long opening the connection may take (TCP connect plus the AMQP
    /// handshake), if the URL sets `?connection_timeout=MILLISECONDS`.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// # use std::time::Duration;
    /// let url = BrokerUrl::parse("amqp://host?connection_timeout=2500")?;
    /// assert_eq!(url.connection_timeout(), Some(Duration::from_millis(2500)));
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn connection_timeout(&self) -> Option<Duration> {
        self.connection_timeout
    }

    /// The highest channel number asked of the broker, if the URL sets
    /// `?channel_max=N`.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://host?channel_max=64")?.channel_max(), Some(64));
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn channel_max(&self) -> Option<u16> {
        self.channel_max
    }

    /// How an `amqps://` connection checks the broker: the URL's
    /// `cacertfile`, `certfile`, `keyfile`, `verify` and
    /// `server_name_indication` (see [`TlsSettings`]). An `amqp://` URL
    /// may not set them.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// let url = BrokerUrl::parse("amqps://h?verify=verify_none")?;
    /// assert!(!url.tls_settings().verify_peer());
    /// assert!(BrokerUrl::parse("amqp://h?verify=verify_none").is_err());
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn tls_settings(&self) -> &TlsSettings {
        &self.tls_settings
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// Parses a URL, handing every query parameter it does not know to
    /// `extra` (which returns `false` to reject it).
    pub(crate) fn parse_with(
        s: &str,
        mut extra: impl FnMut(&str, &str) -> bool,
    ) -> Result<BrokerUrl, Error> {
        let parsed = url::Url::parse(s).map_err(|e| invalid(s, &e.to_string()))?;
        let tls = match parsed.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(invalid(
                    s,
                    &format!("scheme must be amqp or amqps, not {other:?}"),
                ));
            }
        };
        let host = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => "localhost".to_string(),
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let port = parsed.port().unwrap_or(if tls {
            DEFAULT_AMQPS_PORT
        } else {
            DEFAULT_AMQP_PORT
        });
        let path = parsed.path();
        let vhost_raw = path.strip_prefix('/').unwrap_or(path);
        if vhost_raw.contains('/') {
            return Err(invalid(
                s,
                "the virtual host must be one path segment (write / as %2f)",
            ));
        }
        let vhost = if vhost_raw.is_empty() {
            "/".to_string()
        } else {
            decode(vhost_raw, s)?
        };
        let username = match parsed.username() {
            "" => "guest".to_string(),
            user => decode(user, s)?,
        };
        let password = match parsed.password() {
            None => "guest".to_string(),
            Some(password) => decode(password, s)?,
        };
        let mut url = BrokerUrl {
            tls,
            tls_settings: TlsSettings::new(&host),
            host,
            port,
            vhost,
            username,
            password,
            heartbeat: DEFAULT_HEARTBEAT_SECS,
            connection_timeout: None,
            channel_max: None,
        };
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "heartbeat" => url.heartbeat = number(s, &key, &value)?,
                "connection_timeout" => {
                    url.connection_timeout =
                        Some(Duration::from_millis(number::<u64>(s, &key, &value)?))
                }
                "channel_max" => url.channel_max = Some(number(s, &key, &value)?),
                other => match url.tls_settings.set(other, &value) {
                    Ok(true) => {}
                    Ok(false) if extra(other, &value) => {}
                    Ok(false) => {
                        return Err(invalid(s, &format!("unknown query parameter {other:?}")));
                    }
                    Err(reason) => return Err(invalid(s, &reason)),
                },
            }
        }
        if url.tls_settings.is_set() && !tls {
            return Err(invalid(
                s,
                "TLS settings (cacertfile, certfile, keyfile, verify, server_name_indication) need an amqps:// URL",
            ));
        }
        url.tls_settings
            .check()
            .map_err(|reason| invalid(s, &reason))?;
        Ok(url)
    }
}

impl FromStr for BrokerUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<BrokerUrl, Error> {
        BrokerUrl::parse_with(s, |_, _| false)
    }
}

impl fmt::Display for BrokerUrl {
    /// Prints the URL without the password and without query parameters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "{scheme}://{}@{host}:{}/{}",
            utf8_percent_encode(&self.username, COMPONENT),
            self.port,
            utf8_percent_encode(&self.vhost, COMPONENT)
        )
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("url", &format_args!("{self}"))
            .field("heartbeat", &self.heartbeat)
            .field("connection_timeout", &self.connection_timeout)
            .field("channel_max", &self.channel_max)
            .field("tls_settings", &self.tls_settings)
            .finish_non_exhaustive()
    }
}

/// Removes the password from a URL the user typed, for error messages.
///
/// Works on text that does not parse, too: everything between `://` and
/// the last `@` of the authority loses its part after the first `:`.
pub(crate) fn redact(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let redacted = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}{redacted}{}", &s[..scheme_end + 3], &rest[at..])
        }
        None => s.to_string(),
    }
}

fn invalid(url: &str, reason: &str) -> Error {
    Error::InvalidUrl {
        url: redact(url),
        reason: reason.to_string(),
    }
}

fn decode(component: &str, url: &str) -> Result<String, Error> {
    percent_decode_str(component)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid(url, "a percent-encoded part is not UTF-8"))
}

fn number<T: FromStr>(url: &str, key: &str, value: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| invalid(url, &format!("{key}={value:?} is not a valid number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let url: BrokerUrl =
            "amqp://us%40er:p%3Ass@host.example:1234/v%2fh?heartbeat=3&channel_max=9&connection_timeout=1500"
                .parse()
                .unwrap();
        assert!(!url.is_tls());
        assert_eq!(url.host(), "host.example");
        assert_eq!(url.port(), 1234);
        assert_eq!(url.vhost(), "v/h");
        assert_eq!(url.username(), "us@er");
        assert_eq!(url.password(), "p:ss");
        assert_eq!(url.heartbeat(), 3);
        assert_eq!(url.channel_max(), Some(9));
        assert_eq!(url.connection_timeout(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn defaults() {
        let url: BrokerUrl = "amqp://".parse().unwrap();
        assert_eq!(url.host(), "localhost");
        assert_eq!(url.port(), 5672);
        assert_eq!(url.vhost(), "/");
        assert_eq!(url.username(), "guest");
        assert_eq!(url.password(), "guest");
        assert_eq!(url.heartbeat(), DEFAULT_HEARTBEAT_SECS);
        let tls: BrokerUrl = "amqps://h/".parse().unwrap();
        assert!(tls.is_tls());
        assert_eq!(tls.port(), 5671);
        assert_eq!(tls.vhost(), "/");
    }

    #[test]
    fn ipv6_host() {
        let url: BrokerUrl = "amqp://[::1]:5999/%2f".parse().unwrap();
        assert_eq!(url.host(), "::1");
        assert_eq!(url.to_string(), "amqp://guest@[::1]:5999/%2F");
    }

    #[test]
    fn display_and_debug_hide_password() {
        let url: BrokerUrl = "amqp://alice:hunter2@h:1/%2f".parse().unwrap();
        assert_eq!(url.to_string(), "amqp://alice@h:1/%2F");
        let debug = format!("{url:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
    }

    #[test]
    fn rejects_bad_urls_without_leaking_password() {
        for bad in [
            "http://alice:hunter2@h/",
            "amqp://alice:hunter2@h/a/b",
            "amqp://alice:hunter2@h/?heartbeat=x",
            "amqp://alice:hunter2@h/?frobnicate=1",
            "amqp://alice:hunter2@h:99999/",
            "not a url hunter2",
        ] {
            let err = bad.parse::<BrokerUrl>().unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {text}");
            if bad.contains("://") {
                assert!(!text.contains("hunter2"), "{bad}: {text}");
            }
        }
    }

    #[test]
    fn redact_handles_unparseable_text() {
        assert_eq!(redact("amqp://u:p@h:1/x"), "amqp://u:***@h:1/x");
        assert_eq!(redact("amqp://u@h"), "amqp://u@h");
        assert_eq!(redact("amqp://h/x@y"), "amqp://h/x@y");
        assert_eq!(redact("amqp://u:p:q@@h"), "amqp://u:***@h");
        assert_eq!(redact("plain"), "plain");
    }

    #[test]
    fn tls_settings_need_amqps() {
        let url: BrokerUrl = "amqps://alice:hunter2@h/?cacertfile=%2Fca.pem&verify=verify_peer"
            .parse()
            .unwrap();
        assert_eq!(
            url.tls_settings().ca_cert_file(),
            Some(std::path::Path::new("/ca.pem"))
        );
        for bad in [
            "amqp://alice:hunter2@h/?cacertfile=/ca.pem",
            "amqps://alice:hunter2@h/?verify=sometimes",
            "amqps://alice:hunter2@h/?certfile=/c.pem",
        ] {
            let err = bad.parse::<BrokerUrl>().unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn extra_parameters_go_to_the_caller() {
        let mut seen = Vec::new();
        BrokerUrl::parse_with("amqp://h/?server_queue=echo&heartbeat=4", |k, v| {
            seen.push((k.to_string(), v.to_string()));
            true
        })
        .unwrap();
        assert_eq!(seen, vec![("server_queue".to_string(), "echo".to_string())]);
    }
}
