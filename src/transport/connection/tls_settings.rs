//! The TLS settings an `amqps://` URL carries in its query, named as in
//! RabbitMQ's URI query parameters: `cacertfile`, `certfile`, `keyfile`,
//! `verify` and `server_name_indication`.

use std::path::{Path, PathBuf};

/// How an `amqps://` connection checks the broker and shows itself.
///
/// Set in the URL's query:
/// - `cacertfile=PATH`: trust only the CA certificates in this PEM file
///   (without it, the system's trusted CAs);
/// - `certfile=PATH` and `keyfile=PATH`: a client certificate and its
///   PKCS #8 private key, both PEM, for brokers that ask for one;
/// - `verify=verify_peer` (the default) or `verify=verify_none`, which
///   accepts any certificate for any name: encryption without knowing
///   who the broker is;
/// - `server_name_indication=NAME`: the name the broker's certificate
///   must carry, and that is sent in the TLS handshake, when it is not
///   the URL's host (`disable` sends none and checks none).
///
/// ```
/// use amqp_stream::BrokerUrl;
/// use std::path::Path;
///
/// let url = BrokerUrl::parse("amqps://broker.example?cacertfile=/etc/ssl/ca.pem")?;
/// let tls = url.tls_settings();
/// assert_eq!(tls.ca_cert_file(), Some(Path::new("/etc/ssl/ca.pem")));
/// assert!(tls.verify_peer());
/// assert_eq!(tls.server_name(), Some("broker.example"));
/// # Ok::<(), amqp_stream::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    ca_cert_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    verify_none: bool,
    /// `None`: the URL's host; `Some("")`: disabled.
    server_name: Option<String>,
    host: String,
}

impl TlsSettings {
    pub(crate) fn new(host: &str) -> TlsSettings {
        TlsSettings {
            host: host.to_string(),
            ..TlsSettings::default()
        }
    }

    /// The PEM file of the CA certificates to trust, if the URL names one.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqps://h")?.tls_settings().ca_cert_file(), None);
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn ca_cert_file(&self) -> Option<&Path> {
        self.ca_cert_file.as_deref()
    }

    /// The client certificate's PEM file, if the URL names one.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// let url = BrokerUrl::parse("amqps://h?certfile=c.pem&keyfile=k.pem")?;
    /// assert_eq!(url.tls_settings().cert_file(), Some(std::path::Path::new("c.pem")));
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn cert_file(&self) -> Option<&Path> {
        self.cert_file.as_deref()
    }

    /// The client certificate's private key (PEM, PKCS #8), if named.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// let url = BrokerUrl::parse("amqps://h?certfile=c.pem&keyfile=k.pem")?;
    /// assert_eq!(url.tls_settings().key_file(), Some(std::path::Path::new("k.pem")));
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn key_file(&self) -> Option<&Path> {
        self.key_file.as_deref()
    }

    /// Whether the broker's certificate is checked (`verify=verify_peer`,
    /// the default) or any is accepted (`verify=verify_none`).
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// assert!(!BrokerUrl::parse("amqps://h?verify=verify_none")?.tls_settings().verify_peer());
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn verify_peer(&self) -> bool {
        !self.verify_none
    }

    /// The name sent in the handshake and checked against the broker's
    /// certificate: the URL's host unless `server_name_indication` says
    /// otherwise; `None` when it says `disable`.
    ///
    /// ```
    /// # use amqp_stream::BrokerUrl;
    /// let url = BrokerUrl::parse("amqps://127.0.0.1?server_name_indication=broker.local")?;
    /// assert_eq!(url.tls_settings().server_name(), Some("broker.local"));
    /// # Ok::<(), amqp_stream::Error>(())
    /// ```
    pub fn server_name(&self) -> Option<&str> {
        match self.server_name.as_deref() {
            None => Some(&self.host),
            Some("") => None,
            Some(name) => Some(name),
        }
    }

    /// Takes one query parameter: `Ok(true)` if it is a TLS setting,
    /// `Ok(false)` if it is not, `Err` if its value is wrong.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let path = || {
            if value.is_empty() {
                Err(format!("{key} needs a file path"))
            } else {
                Ok(Some(PathBuf::from(value)))
            }
        };
        match key {
            "cacertfile" => self.ca_cert_file = path()?,
            "certfile" => self.cert_file = path()?,
            "keyfile" => self.key_file = path()?,
            "verify" => {
                self.verify_none = match value {
                    "verify_peer" => false,
                    "verify_none" => true,
                    other => {
                        return Err(format!(
                            "verify must be verify_peer or verify_none, not {other:?}"
                        ));
                    }
                }
            }
            "server_name_indication" => {
                self.server_name = Some(match value {
                    "disable" => String::new(),
                    "" => return Err("server_name_indication needs a host name".into()),
                    name => name.to_string(),
                })
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether any setting differs from its default (which only an
    /// `amqps://` URL may do).
    pub(crate) fn is_set(&self) -> bool {
        *self != TlsSettings::new(&self.host)
    }

    /// Checks the settings as a whole.
    pub(crate) fn check(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err("certfile needs a keyfile".into()),
            (None, Some(_)) => Err("keyfile needs a certfile".into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_its_parameters_and_leaves_the_rest() {
        let mut tls = TlsSettings::new("h");
        assert!(!tls.is_set());
        assert_eq!(tls.set("heartbeat", "5"), Ok(false));
        assert_eq!(tls.set("cacertfile", "/ca.pem"), Ok(true));
        assert_eq!(tls.set("verify", "verify_none"), Ok(true));
        assert!(tls.is_set());
        assert_eq!(tls.ca_cert_file(), Some(Path::new("/ca.pem")));
        assert!(!tls.verify_peer());
        assert_eq!(tls.server_name(), Some("h"));
        assert_eq!(tls.set("server_name_indication", "disable"), Ok(true));
        assert_eq!(tls.server_name(), None);
    }

    #[test]
    fn rejects_bad_values() {
        let mut tls = TlsSettings::new("h");
        assert!(tls.set("verify", "maybe").is_err());
        assert!(tls.set("cacertfile", "").is_err());
        assert!(tls.set("server_name_indication", "").is_err());
        tls.set("certfile", "c.pem").unwrap();
        assert!(tls.check().unwrap_err().contains("keyfile"));
        tls.set("keyfile", "k.pem").unwrap();
        assert_eq!(tls.check(), Ok(()));
    }
}
