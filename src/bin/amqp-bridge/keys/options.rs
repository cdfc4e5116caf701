//! The key options of each subcommand (`--psk-file`, `--key`,
//! `--peer-key`, `--authorized-keys`), read into the configuration of
//! the secure handshake when the bridge starts (a missing, unreadable or
//! malformed file is a bad argument, exit 2, named without its content)
//! and again when the files change (see [`live`](crate::keys::live)).

use crate::fatal::Fatal;
use crate::keys::live::LiveKeys;
use amqp_stream::secure::{
    AuthorizedKeys, ClientConfig, KEY_LEN, KeyPair, PresharedKey, PublicKey, ServerConfig,
};
use clap::Args;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroize;

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

/// What a `serve` with keys holds: its handshake configuration, and
/// what decides whether a connection made earlier is still admitted
/// once the files change.
pub struct ServeKeys {
    /// The handshake every stream must pass.
    pub config: ServerConfig,
    /// The client keys let in, with key pairs.
    accepted: Option<AuthorizedKeys>,
    /// A digest of the pre-shared key, with one.
    psk: Option<u64>,
}

/// What a connection proved in its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The client's public key (with key pairs).
    key: Option<PublicKey>,
    /// The digest of the pre-shared key it held (with one).
    psk: Option<u64>,
}

impl ServeKeys {
    /// What a client that passed the handshake with these keys proved,
    /// its public key being `key`.
    pub fn credential(&self, key: Option<&PublicKey>) -> Credential {
        Credential {
            key: key.cloned(),
            psk: self.psk,
        }
    }

    /// Whether these keys still let in a connection that proved
    /// `credential`: its key is still listed, and the pre-shared key is
    /// still the one it held.
    pub fn admits(&self, credential: &Credential) -> bool {
        let key_listed = match (&self.accepted, &credential.key) {
            (Some(accepted), Some(key)) => accepted.contains(key),
            (None, None) => true,
            _ => false,
        };
        key_listed && self.psk == credential.psk
    }

    /// What they are, for the logs.
    pub fn describe(&self) -> String {
        match (&self.accepted, self.psk) {
            (Some(accepted), None) => format!("{} authorized key(s)", accepted.len()),
            (Some(accepted), Some(_)) => {
                format!("{} authorized key(s) and a pre-shared key", accepted.len())
            }
            (None, _) => "a pre-shared key".to_string(),
        }
    }
}

impl ServeKeyArgs {
    /// The server's keys, read again when their files change; `None`
    /// without key options. Files that do not read are exit code 2.
    pub fn live(&self) -> Result<Option<LiveKeys<ServeKeys>>, Fatal> {
        if self.psk_file.is_none() && self.key.is_none() {
            return Ok(None);
        }
        let files = [&self.psk_file, &self.key, &self.authorized_keys]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let args = self.clone();
        LiveKeys::open(files, move || args.load()).map(Some)
    }

    /// Reads the key files.
    fn load(&self) -> Result<ServeKeys, Fatal> {
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
        let digest = psk.as_ref().map(|(_, digest)| *digest);
        let (config, accepted) = match (psk, keys) {
            (None, None) => return Err(Fatal::usage("no key options")),
            (Some((psk, _)), None) => (ServerConfig::psk(psk), None),
            (psk, Some((own, accepted))) => {
                let config = ServerConfig::key_pair(own, accepted.clone());
                match psk {
                    Some((psk, _)) => (config.with_psk(psk), Some(accepted)),
                    None => (config, Some(accepted)),
                }
            }
        };
        Ok(ServeKeys {
            config: config.handshake_timeout(self.handshake_timeout),
            accepted,
            psk: digest,
        })
    }
}

impl ClientKeyArgs {
    /// The client's handshake configuration, read again when its files
    /// change; `None` without key options. Files that do not read are
    /// exit code 2.
    pub fn live(&self) -> Result<Option<LiveKeys<ClientConfig>>, Fatal> {
        if self.psk_file.is_none() && self.key.is_none() {
            return Ok(None);
        }
        let mut files: Vec<PathBuf> = [&self.psk_file, &self.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        // --peer-key names a file, or is the key itself.
        if let Some(peer) = &self.peer_key
            && Path::new(peer).exists()
        {
            files.push(PathBuf::from(peer));
        }
        let args = self.clone();
        LiveKeys::open(files, move || args.load()).map(Some)
    }

    /// Reads the key files.
    fn load(&self) -> Result<ClientConfig, Fatal> {
        let psk = self.psk_file.as_deref().map(read_psk).transpose()?;
        let keys = match (&self.key, &self.peer_key) {
            (Some(key), Some(peer)) => Some((read_key_pair(key)?, read_peer_key(peer)?)),
            _ => None,
        };
        let config = match (psk, keys) {
            (None, None) => return Err(Fatal::usage("no key options")),
            (Some((psk, _)), None) => ClientConfig::psk(psk),
            (psk, Some((own, server))) => {
                let config = ClientConfig::key_pair(own, server);
                match psk {
                    Some((psk, _)) => config.with_psk(psk),
                    None => config,
                }
            }
        };
        Ok(config.handshake_timeout(self.handshake_timeout))
    }
}

fn usage(err: std::io::Error) -> Fatal {
    Fatal::usage(err.to_string())
}

/// The pre-shared key in `path`, and a digest of the file that tells a
/// changed key from the same one read again.
fn read_psk(path: &Path) -> Result<(PresharedKey, u64), Fatal> {
    let psk = PresharedKey::from_file(path).map_err(usage)?;
    let mut text = std::fs::read(path).map_err(usage)?;
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    text.zeroize();
    Ok((psk, hasher.finish()))
}

/// The key pair in the private key file `path`; a public key file given
/// instead (`FILE.pub`) is named as the mistake it is.
fn read_key_pair(path: &Path) -> Result<KeyPair, Fatal> {
    KeyPair::from_file(path).map_err(|err| {
        let is_public =
            path.extension().is_some_and(|ext| ext == "pub") && PublicKey::from_file(path).is_ok();
        if is_public {
            Fatal::usage(format!(
                "{}: this is a public key: --key takes the private key file ({})",
                path.display(),
                path.with_extension("").display()
            ))
        } else {
            usage(err)
        }
    })
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
