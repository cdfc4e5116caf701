//! Opening an AMQP connection over TLS (`amqps://`), with the `tls`
//! feature: a `native_tls` connector built from the URL's
//! [`TlsSettings`](crate::TlsSettings), on a socket opened by
//! `connection.rs`, with the handshake done here before amiquip takes the
//! socket. Without the feature, `amqps://` is `Unsupported`.

#[cfg(feature = "tls")]
use super::password_swap::PasswordSwap;
use super::socket::BrokerSocket;
#[cfg(feature = "tls")]
use super::socket::SocketIo;
use super::url::BrokerUrl;
use crate::error::Error;
use std::net::TcpStream;
#[cfg(feature = "tls")]
use std::time::Duration;
use std::time::Instant;

/// Fails unless this build can open `amqps://` connections.
pub(crate) fn ensure_supported(url: &BrokerUrl) -> Result<(), Error> {
    if cfg!(feature = "tls") {
        Ok(())
    } else {
        Err(unsupported(url))
    }
}

fn unsupported(url: &BrokerUrl) -> Error {
    Error::Unsupported(format!(
        "{url}: amqps:// (TLS) needs amqp-stream built with its `tls` feature"
    ))
}

/// Runs the TLS handshake with the broker on `socket`, blocking, by
/// `deadline` (none: no limit); amiquip then runs the AMQP connection
/// over the result.
#[cfg(feature = "tls")]
pub(crate) fn handshake(
    url: &BrokerUrl,
    socket: TcpStream,
    deadline: Option<Instant>,
) -> Result<BrokerSocket, Error> {
    use native_tls::HandshakeError;
    let settings = url.tls_settings();
    let connector = connector(url)?;
    let timed_out = || Error::TimedOut {
        what: format!("the TLS handshake with {url}"),
        after: deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        }),
    };
    let remaining = match deadline {
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return Err(timed_out()),
        },
        None => None,
    };
    let unreachable = |source| Error::Unreachable {
        broker: url.to_string(),
        source,
    };
    socket.set_read_timeout(remaining).map_err(unreachable)?;
    socket.set_write_timeout(remaining).map_err(unreachable)?;
    // With `server_name_indication=disable`, no name is sent or checked
    // (`connector` accepts any name then); native_tls still wants one.
    let name = settings.server_name().unwrap_or(url.host());
    let tls = match connector.connect(name, SocketIo::Blocking(socket)) {
        Ok(tls) => tls,
        // A blocking socket says "would block" when its timeout ran out.
        Err(HandshakeError::WouldBlock(_)) => return Err(timed_out()),
        Err(HandshakeError::Failure(err)) => {
            return Err(Error::Tls {
                broker: url.to_string(),
                reason: handshake_failure(url, &err),
            });
        }
    };
    BrokerSocket::tls(tls, PasswordSwap::new(url.username(), url.password())).map_err(unreachable)
}

#[cfg(not(feature = "tls"))]
pub(crate) fn handshake(
    url: &BrokerUrl,
    _socket: TcpStream,
    _deadline: Option<Instant>,
) -> Result<BrokerSocket, Error> {
    Err(unsupported(url))
}

/// Builds the TLS connector the URL's settings describe.
#[cfg(feature = "tls")]
fn connector(url: &BrokerUrl) -> Result<native_tls::TlsConnector, Error> {
    use native_tls::{Certificate, Identity, TlsConnector};
    let settings = url.tls_settings();
    let tls_error = |reason: String| Error::Tls {
        broker: url.to_string(),
        reason,
    };
    let mut builder = TlsConnector::builder();
    if let Some(path) = settings.ca_cert_file() {
        let pem = read(path, "cacertfile")?;
        let certificates = Certificate::stack_from_pem(&pem)
            .map_err(|err| tls_error(format!("cacertfile {}: {err}", path.display())))?;
        if certificates.is_empty() {
            return Err(tls_error(format!(
                "cacertfile {} holds no PEM certificate",
                path.display()
            )));
        }
        // As RabbitMQ's own clients read `cacertfile`: these CAs, only.
        builder.disable_built_in_roots(true);
        for certificate in certificates {
            builder.add_root_certificate(certificate);
        }
    }
    if let (Some(cert_path), Some(key_path)) = (settings.cert_file(), settings.key_file()) {
        let identity =
            Identity::from_pkcs8(&read(cert_path, "certfile")?, &read(key_path, "keyfile")?)
                .map_err(|err| {
                    tls_error(format!(
                        "certfile {} with keyfile {}: {err} (both must be PEM, the key PKCS #8)",
                        cert_path.display(),
                        key_path.display()
                    ))
                })?;
        builder.identity(identity);
    }
    if !settings.verify_peer() {
        builder.danger_accept_invalid_certs(true);
    }
    if settings.server_name().is_none() {
        builder.use_sni(false).danger_accept_invalid_hostnames(true);
    }
    builder
        .build()
        .map_err(|err| tls_error(format!("setting up TLS: {err}")))
}

/// Reads a file a TLS setting names; a missing or unreadable one is a
/// bad argument.
#[cfg(feature = "tls")]
fn read(path: &std::path::Path, setting: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| {
        Error::InvalidArgument(format!("cannot read {setting} {}: {err}", path.display()))
    })
}

/// Says why a handshake failed and, for an untrusted certificate, what
/// to check.
#[cfg(feature = "tls")]
fn handshake_failure(url: &BrokerUrl, err: &native_tls::Error) -> String {
    let text = err.to_string();
    if text.contains("wrong version number") {
        return format!(
            "the broker did not answer with TLS: {text} (is {} its amqps port? 5671 is the usual one)",
            url.port()
        );
    }
    if !text.contains("certificate verify failed") {
        return text;
    }
    if text.to_lowercase().contains("hostname mismatch") {
        let name = url.tls_settings().server_name().unwrap_or(url.host());
        return format!(
            "the broker's certificate is not for {name:?}: {text} \
             (set server_name_indication=NAME to the name it carries)"
        );
    }
    let trusted = match url.tls_settings().ca_cert_file() {
        Some(path) => format!("the CAs in cacertfile {}", path.display()),
        None => "the system's trusted CAs (set cacertfile=PATH to trust another CA)".to_string(),
    };
    format!("the broker's certificate is not trusted: {text}; checked against {trusted}")
}

#[cfg(all(test, not(feature = "tls")))]
mod tests {
    use super::*;

    #[test]
    fn amqps_is_unsupported_without_the_feature() {
        let url: BrokerUrl = "amqps://alice:hunter2@h".parse().unwrap();
        let err = ensure_supported(&url).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("`tls` feature"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
