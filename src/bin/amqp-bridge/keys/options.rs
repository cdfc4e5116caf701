//! The key options of each subcommand (`--psk-file`, `--key`,
//! `--peer-key`, `--authorized-keys`), read into the configuration of
//! the secure handshake when the bridge starts: a missing, unreadable or
//! malformed file is a bad argument (exit 2), named without its content.

use crate::fatal::Fatal;
use amqp_stream::secure::{
    AuthorizedKeys, ClientConfig, KEY_LEN, KeyPair, PresharedKey, PublicKey, ServerConfig,
};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// End-to-end keys of `serve`: with any of them, a stream is served only
/// after a secure handshake with a client holding an accepted key.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "End-to-end keys")]
pub struct ServeKeyArgs {
    /// Pre-shared key file (`amqp-bridge keygen --psk`): clients must
    /// hold the same key
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// This server's private key file (`amqp-bridge keygen`); clients pin
    /// its public key
    #[arg(long, value_name = "FILE", requires = "authorized_keys")]
    pub key: Option<PathBuf>,
    /// The public keys of the clients let in, one per line (as
    /// `keygen` prints them)
    #[arg(long, value_name = "FILE", requires = "key")]
    pub authorized_keys: Option<PathBuf>,
    /// How long a client may take over the secure handshake
    #[arg(long, value_name = "SECONDS", default_value = "10",
          value_parser = crate::args::positive_seconds, allow_negative_numbers = true)]
    pub handshake_timeout: Duration,
}

/// End-to-end keys of `forward`, `connect` and `http`: with any of them,
/// every stream starts with a secure handshake with the server.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "End-to-end keys")]
pub struct ClientKeyArgs {
    /// Pre-shared key file (`amqp-bridge keygen --psk`): the server must
    /// hold the same key
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// This client's private key file (`amqp-bridge keygen`); the
    /// server lists its public key in its authorized keys
    #[arg(long, value_name = "FILE", requires = "peer_key")]
    pub key: Option<PathBuf>,
    /// The server's public key (its `.pub` file, or the line itself):
    /// any other server is refused
    #[arg(long, value_name = "FILE|KEY", requires = "key")]
    pub peer_key: Option<String>,
    /// How long the secure handshake may take
    #[arg(long, value_name = "SECONDS", default_value = "10",
          value_parser = crate::args::positive_seconds, allow_negative_numbers = true)]
    pub handshake_timeout: Duration,
}

impl ServeKeyArgs {
    /// The server's handshake configuration; `None` without keys.
    pub fn load(&self) -> Result<Option<ServerConfig>, Fatal> {
        let psk = self.psk_file.as_deref().map(read_psk).transpose()?;
        let keys = match (&self.key, &self.authorized_keys) {
            (Some(key), Some(authorized)) => {
                let accepted = AuthorizedKeys::from_file(authorized).map_err(usage)?;
                if accepted.is_empty() {
                    return Err(Fatal::usage(format!(
                        "{}: no key in it: no client could connect",
                        authorized.display()
                    )));
                }
                Some((read_key_pair(key)?, accepted))
            }
            _ => None,
        };
        let config = match (psk, keys) {
            (None, None) => return Ok(None),
            (Some(psk), None) => ServerConfig::psk(psk),
            (psk, Some((own, accepted))) => {
                let config = ServerConfig::key_pair(own, accepted);
                match psk {
                    Some(psk) => config.with_psk(psk),
                    None => config,
                }
            }
        };
        Ok(Some(config.handshake_timeout(self.handshake_timeout)))
    }
}

impl ClientKeyArgs {
    /// The client's handshake configuration; `None` without keys.
    pub fn load(&self) -> Result<Option<ClientConfig>, Fatal> {
        let psk = self.psk_file.as_deref().map(read_psk).transpose()?;
        let keys = match (&self.key, &self.peer_key) {
            (Some(key), Some(peer)) => Some((read_key_pair(key)?, read_peer_key(peer)?)),
            _ => None,
        };
        let config = match (psk, keys) {
            (None, None) => return Ok(None),
            (Some(psk), None) => ClientConfig::psk(psk),
            (psk, Some((own, server))) => {
                let config = ClientConfig::key_pair(own, server);
                match psk {
                    Some(psk) => config.with_psk(psk),
                    None => config,
                }
            }
        };
        Ok(Some(config.handshake_timeout(self.handshake_timeout)))
    }
}

fn usage(err: std::io::Error) -> Fatal {
    Fatal::usage(err.to_string())
}

fn read_psk(path: &Path) -> Result<PresharedKey, Fatal> {
    PresharedKey::from_file(path).map_err(usage)
}

fn read_key_pair(path: &Path) -> Result<KeyPair, Fatal> {
    KeyPair::from_file(path).map_err(usage)
}

/// The key itself, or the file that holds it. A value that is no file
/// and looks like a key (a secret pasted by mistake, say) is refused
/// with why it is not a public key, never repeated.
fn read_peer_key(value: &str) -> Result<PublicKey, Fatal> {
    let not_public = match value.parse() {
        Ok(key) => return Ok(key),
        Err(err) => err,
    };
    let path = Path::new(value);
    if !path.exists() && looks_like_a_key(value) {
        return Err(Fatal::usage(format!("--peer-key: {not_public}")));
    }
    PublicKey::from_file(path).map_err(|err| Fatal::usage(format!("--peer-key: {err}")))
}

/// Whether `value` looks like a key's text rather than a file name:
/// several words or lines, a key tag, or a run of hexadecimal digits as
/// long as a key's.
fn looks_like_a_key(value: &str) -> bool {
    value.contains(char::is_whitespace)
        || value.starts_with("amqp-stream-")
        || value.starts_with('#')
        || (value.len() >= 2 * KEY_LEN && value.chars().all(|c| c.is_ascii_hexdigit()))
}
