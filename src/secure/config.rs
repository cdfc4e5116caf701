//! What each end holds: its keys, what it expects of the other end, and
//! how long a handshake may take.

use super::keys::{AuthorizedKeys, KeyPair, PresharedKey, PublicKey};
use super::pattern::Mode;
use std::time::Duration;

/// How long a handshake may take unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's side: a pre-shared key, or its key pair and the server's
/// pinned public key, or both.
///
/// ```
/// use amqp_stream::secure::{ClientConfig, KeyPair, PresharedKey};
/// use std::time::Duration;
///
/// let psk = PresharedKey::generate()?;
/// let by_psk = ClientConfig::psk(psk.clone());
/// let (mine, server) = (KeyPair::generate()?, KeyPair::generate()?);
/// let by_keys = ClientConfig::key_pair(mine, server.public().clone())
///     .with_psk(psk)
///     .handshake_timeout(Duration::from_secs(5));
/// # let _ = (by_psk, by_keys);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub(crate) psk: Option<PresharedKey>,
    pub(crate) keys: Option<(KeyPair, PublicKey)>,
    pub(crate) timeout: Duration,
}

impl ClientConfig {
    /// Authenticates both ends by a pre-shared key.
    pub fn psk(psk: PresharedKey) -> ClientConfig {
        ClientConfig {
            psk: Some(psk),
            keys: None,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Authenticates by key pairs: this end's own, and the server's
    /// public key (pinned: any other server is refused).
    pub fn key_pair(own: KeyPair, server: PublicKey) -> ClientConfig {
        ClientConfig {
            psk: None,
            keys: Some((own, server)),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Requires a pre-shared key as well (or instead of the one set).
    pub fn with_psk(mut self, psk: PresharedKey) -> ClientConfig {
        self.psk = Some(psk);
        self
    }

    /// How long the handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.timeout = timeout;
        self
    }

    pub(crate) fn mode(&self) -> Mode {
        // One of the two is always set.
        Mode::of(self.psk.is_some(), self.keys.is_some()).unwrap_or(Mode::Psk)
    }
}

/// The server's side: a pre-shared key, or its key pair and the public
/// keys of the clients it accepts, or both.
///
/// ```
/// use amqp_stream::secure::{AuthorizedKeys, KeyPair, ServerConfig};
///
/// let (server, client) = (KeyPair::generate()?, KeyPair::generate()?);
/// let accepted: AuthorizedKeys = [client.public().clone()].into_iter().collect();
/// let config = ServerConfig::key_pair(server, accepted);
/// # let _ = config;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) psk: Option<PresharedKey>,
    pub(crate) keys: Option<(KeyPair, AuthorizedKeys)>,
    pub(crate) timeout: Duration,
}

impl ServerConfig {
    /// Authenticates both ends by a pre-shared key.
    pub fn psk(psk: PresharedKey) -> ServerConfig {
        ServerConfig {
            psk: Some(psk),
            keys: None,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Authenticates by key pairs: this end's own, and the clients'
    /// public keys it accepts.
    pub fn key_pair(own: KeyPair, accepted: AuthorizedKeys) -> ServerConfig {
        ServerConfig {
            psk: None,
            keys: Some((own, accepted)),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Requires a pre-shared key as well (or instead of the one set).
    pub fn with_psk(mut self, psk: PresharedKey) -> ServerConfig {
        self.psk = Some(psk);
        self
    }

    /// How long a client may take over the handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> ServerConfig {
        self.timeout = timeout;
        self
    }

    pub(crate) fn mode(&self) -> Mode {
        Mode::of(self.psk.is_some(), self.keys.is_some()).unwrap_or(Mode::Psk)
    }
}
