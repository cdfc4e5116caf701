//! Keys: a pre-shared key, a static key pair, a public key, and the list
//! of public keys a server accepts; their one-line text forms and files.
//!
//! Secrets never appear in `Debug` output or in errors, and are wiped
//! from memory when dropped. Public keys are not secret: they print as
//! the line an authorized-keys file takes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::str::FromStr;
use zeroize::Zeroize;

/// The length of every key: 32 bytes (X25519 keys, the Noise PSK).
pub const KEY_LEN: usize = 32;

/// The tag of a pre-shared key line.
const PSK_TAG: &str = "amqp-stream-psk";
/// The tag of a private key line.
const PRIVATE_TAG: &str = "amqp-stream-x25519-private";
/// The tag of a public key line.
const PUBLIC_TAG: &str = "amqp-stream-x25519";

/// 32 secret bytes: never shown, wiped when dropped.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) [u8; KEY_LEN]);

impl Drop for Secret {
    fn drop(&mut self) {
        // A wipe the compiler may not leave out.
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// A pre-shared key: 32 random bytes both ends hold.
///
/// ```
/// use amqp_stream::secure::PresharedKey;
///
/// let psk = PresharedKey::generate()?;
/// let line = psk.to_secret_line();
/// let again: PresharedKey = line.parse()?;
/// assert_eq!(again.to_secret_line(), line);
/// // Debug never shows it.
/// assert!(!format!("{psk:?}").contains(&line[16..]));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PresharedKey(pub(crate) Secret);

impl PresharedKey {
    /// A fresh random key (from the operating system's generator).
    pub fn generate() -> io::Result<PresharedKey> {
        let mut bytes = [0u8; KEY_LEN];
        let mut rng =
            snow::resolvers::CryptoResolver::resolve_rng(&snow::resolvers::DefaultResolver)
                .ok_or_else(|| io::Error::other("no random number generator"))?;
        rng.try_fill_bytes(&mut bytes)
            .map_err(|_| io::Error::other("the random number generator failed"))?;
        let key = PresharedKey(Secret(bytes));
        bytes.zeroize();
        Ok(key)
    }

    /// Reads a key file (as [`write_new`](Self::write_new) writes it);
    /// a file others may read is refused, as ssh refuses such keys.
    pub fn from_file(path: &Path) -> io::Result<PresharedKey> {
        let mut text = read_secret_file(path)?;
        let key = text.parse().map_err(|err: io::Error| {
            io::Error::new(err.kind(), format!("{}: {err}", path.display()))
        });
        text.zeroize();
        key
    }

    /// Writes the key to a new file `path`, readable by its owner only
    /// (mode 0600); an existing file is never replaced.
    pub fn write_new(&self, path: &Path) -> io::Result<()> {
        write_new_file(
            path,
            0o600,
            &format!(
                "# amqp-stream pre-shared key: keep it secret\n{}\n",
                self.to_secret_line()
            ),
        )
    }

    /// The key as the line its file holds. It is the secret itself:
    /// keep it out of logs.
    pub fn to_secret_line(&self) -> String {
        format!("{PSK_TAG} {}", hex(&self.0.0))
    }
}

impl FromStr for PresharedKey {
    type Err = io::Error;

    /// Parses the line of a key file (comment lines and blank lines
    /// around it are skipped).
    fn from_str(text: &str) -> io::Result<PresharedKey> {
        let bytes = tagged_key(text, PSK_TAG, "a pre-shared key")?;
        Ok(PresharedKey(Secret(bytes)))
    }
}

/// A public key (X25519): what a client pins for its server and what a
/// server lists for the clients it accepts. Not secret.
///
/// It prints as one line, `amqp-stream-x25519 HEX`, which an
/// authorized-keys file takes (a comment may follow it).
///
/// ```
/// use amqp_stream::secure::{KeyPair, PublicKey};
///
/// let pair = KeyPair::generate()?;
/// let line = pair.public().to_string();
/// let parsed: PublicKey = line.parse()?;
/// assert_eq!(&parsed, pair.public());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey(pub(crate) [u8; KEY_LEN]);

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Reads the first key line of a file (a `.pub` file that
    /// [`KeyPair::write_new`] wrote).
    pub fn from_file(path: &Path) -> io::Result<PublicKey> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))?;
        text.parse().map_err(|err: io::Error| {
            io::Error::new(err.kind(), format!("{}: {err}", path.display()))
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_TAG} {}", hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex(&self.0))
    }
}

impl FromStr for PublicKey {
    type Err = io::Error;

    /// Parses `amqp-stream-x25519 HEX [comment]` (comment lines and
    /// blank lines around it are skipped).
    fn from_str(text: &str) -> io::Result<PublicKey> {
        Ok(PublicKey(tagged_key(text, PUBLIC_TAG, "a public key")?))
    }
}

/// A static key pair (X25519): the private key, and the public key
/// computed from it.
///
/// ```
/// use amqp_stream::secure::KeyPair;
///
/// let dir = std::env::temp_dir().join(format!("keypair-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("id");
/// # let _ = std::fs::remove_file(&path);
/// # let _ = std::fs::remove_file(dir.join("id.pub"));
/// let pair = KeyPair::generate()?;
/// pair.write_new(&path, "a doc example")?;
/// let read = KeyPair::from_file(&path)?;
/// assert_eq!(read.public(), pair.public());
/// // Never over an existing file.
/// assert!(pair.write_new(&path, "again").is_err());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct KeyPair {
    pub(crate) private: Secret,
    public: PublicKey,
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> io::Result<KeyPair> {
        let builder = snow::Builder::new(super::pattern::KEY_PARAMS.parse().map_err(noise)?);
        let mut pair = builder.generate_keypair().map_err(noise)?;
        let key = KeyPair::from_parts(&pair.private, &pair.public);
        pair.private.zeroize();
        key
    }

    /// The key pair of a private key.
    pub fn from_private(private: [u8; KEY_LEN]) -> io::Result<KeyPair> {
        let secret = Secret(private);
        let public = public_of(&secret)?;
        Ok(KeyPair {
            private: secret,
            public,
        })
    }

    fn from_parts(private: &[u8], public: &[u8]) -> io::Result<KeyPair> {
        let (Ok(private), Ok(public)) = (
            <[u8; KEY_LEN]>::try_from(private),
            <[u8; KEY_LEN]>::try_from(public),
        ) else {
            return Err(io::Error::other("a generated key has the wrong length"));
        };
        Ok(KeyPair {
            private: Secret(private),
            public: PublicKey(public),
        })
    }

    /// The public half, to give to the other end.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Reads a private key file (as [`write_new`](Self::write_new)
    /// writes it); a file others may read is refused.
    pub fn from_file(path: &Path) -> io::Result<KeyPair> {
        let mut text = read_secret_file(path)?;
        let private = tagged_key(&text, PRIVATE_TAG, "a private key")
            .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())));
        text.zeroize();
        KeyPair::from_private(private?)
    }

    /// Writes the private key to a new file `path` (mode 0600) and the
    /// public key, with `comment` after it, to `path.pub` (mode 0644).
    /// Existing files are never replaced.
    pub fn write_new(&self, path: &Path, comment: &str) -> io::Result<()> {
        let public_path = public_path(path);
        write_new_file(
            path,
            0o600,
            &format!(
                "# amqp-stream private key: keep it secret\n{PRIVATE_TAG} {}\n",
                hex(&self.private.0)
            ),
        )?;
        let written = write_new_file(&public_path, 0o644, &format!("{}\n", self.line(comment)));
        if written.is_err() {
            // Ours (created new above): no private key without its public one.
            let _ = std::fs::remove_file(path);
        }
        written
    }

    /// The public key's line with a comment after it.
    pub fn line(&self, comment: &str) -> String {
        let comment = comment.trim();
        if comment.is_empty() {
            self.public.to_string()
        } else {
            format!("{} {comment}", self.public)
        }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Where [`KeyPair::write_new`] puts the public key of `path`.
///
/// ```
/// use amqp_stream::secure::public_path;
/// use std::path::Path;
///
/// assert_eq!(public_path(Path::new("keys/db.key")), Path::new("keys/db.key.pub"));
/// ```
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// The public keys a server accepts, one per line of an authorized-keys
/// file: `amqp-stream-x25519 HEX [comment]`; blank lines and lines that
/// start with `#` are skipped.
///
/// ```
/// use amqp_stream::secure::{AuthorizedKeys, KeyPair};
///
/// let (alice, bob) = (KeyPair::generate()?, KeyPair::generate()?);
/// let file = format!("# who may connect\n{}\n", alice.line("alice@laptop"));
/// let keys: AuthorizedKeys = file.parse()?;
/// assert!(keys.contains(alice.public()));
/// assert!(!keys.contains(bob.public()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct AuthorizedKeys(Vec<PublicKey>);

impl AuthorizedKeys {
    /// Reads an authorized-keys file; an error names the line.
    pub fn from_file(path: &Path) -> io::Result<AuthorizedKeys> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))?;
        text.parse().map_err(|err: io::Error| {
            io::Error::new(err.kind(), format!("{}: {err}", path.display()))
        })
    }

    /// Whether `key` is listed.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }

    /// How many keys are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<PublicKey> for AuthorizedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(keys: I) -> Self {
        AuthorizedKeys(keys.into_iter().collect())
    }
}

impl FromStr for AuthorizedKeys {
    type Err = io::Error;

    fn from_str(text: &str) -> io::Result<AuthorizedKeys> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.parse().map_err(|err: io::Error| {
                io::Error::new(err.kind(), format!("line {}: {err}", number + 1))
            })?;
            keys.push(key);
        }
        Ok(AuthorizedKeys(keys))
    }
}

/// The public key of a private key.
fn public_of(private: &Secret) -> io::Result<PublicKey> {
    use snow::resolvers::CryptoResolver;
    let params: snow::params::NoiseParams = super::pattern::KEY_PARAMS.parse().map_err(noise)?;
    let mut dh = snow::resolvers::DefaultResolver
        .resolve_dh(&params.dh)
        .ok_or_else(|| io::Error::other("X25519 is not available"))?;
    dh.set(&private.0);
    let public = <[u8; KEY_LEN]>::try_from(dh.pubkey())
        .map_err(|_| io::Error::other("a public key has the wrong length"))?;
    Ok(PublicKey(public))
}

fn noise(err: snow::Error) -> io::Error {
    io::Error::other(format!("noise: {err}"))
}

/// The key in the first line (past blank and `#` lines) of `text`, which
/// must be `TAG HEX`, with anything after a space ignored. Errors say
/// what was expected, never what was found (it may be a secret).
fn tagged_key(text: &str, tag: &str, what: &str) -> io::Result<[u8; KEY_LEN]> {
    let bad = |why: &str| {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("not {what} ({why}; expected a line `{tag} HEX`)"),
        )
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or_else(|| bad("no key line"))?;
    let mut words = line.split_whitespace();
    let found_tag = words.next().unwrap_or_default();
    if found_tag != tag {
        let why = match found_tag {
            PSK_TAG => "it is a pre-shared key",
            PRIVATE_TAG => "it is a private key",
            PUBLIC_TAG => "it is a public key",
            _ => "unknown key type",
        };
        return Err(bad(why));
    }
    let digits = words.next().unwrap_or_default();
    unhex(digits).ok_or_else(|| bad("the key is not 64 hexadecimal digits"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != 2 * KEY_LEN || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Reads a file that holds a secret; refused when others may read it.
fn read_secret_file(path: &Path) -> io::Result<String> {
    let shown = path.display();
    let mut file =
        File::open(path).map_err(|err| io::Error::new(err.kind(), format!("{shown}: {err}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{shown}: others may read this secret key (mode {mode:04o}): \
                     chmod 600 {shown}"
                ),
            ));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|err| io::Error::new(err.kind(), format!("{shown}: {err}")))?;
    Ok(text)
}

/// Creates `path` (never over an existing file or through a symbolic
/// link: `O_CREAT | O_EXCL`) with `mode`, and writes `text`.
fn write_new_file(path: &Path, mode: u32, text: &str) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot create {}: {err}", path.display()),
        )
    })?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_lines() {
        let pair = KeyPair::generate().unwrap();
        let again = KeyPair::from_private(pair.private.0).unwrap();
        assert_eq!(again.public(), pair.public());
        assert_ne!(pair.public(), KeyPair::generate().unwrap().public());
        let line = pair.line("me@host");
        assert!(line.ends_with(" me@host"));
        assert_eq!(&line.parse::<PublicKey>().unwrap(), pair.public());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let psk = PresharedKey::generate().unwrap();
        let digits = psk.to_secret_line()[PSK_TAG.len() + 1..].to_string();
        assert!(!format!("{psk:?}").contains(&digits));
        let pair = KeyPair::generate().unwrap();
        assert!(!format!("{pair:?}").contains(&hex(&pair.private.0)));
        // A private key given where a public key goes: the error does
        // not repeat it.
        let private_line = format!("{PRIVATE_TAG} {}", hex(&pair.private.0));
        let err = private_line.parse::<PublicKey>().unwrap_err();
        assert!(err.to_string().contains("it is a private key"), "{err}");
        assert!(!err.to_string().contains(&hex(&pair.private.0)));
        let err = psk.to_secret_line().parse::<AuthorizedKeys>().unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(!err.to_string().contains(&digits), "{err}");
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!("".parse::<PublicKey>().is_err());
        assert!(format!("{PUBLIC_TAG} abc").parse::<PublicKey>().is_err());
        assert!(
            format!("{PUBLIC_TAG} {}", "zz".repeat(32))
                .parse::<PublicKey>()
                .is_err()
        );
        let keys: AuthorizedKeys = "\n# nobody\n\n".parse().unwrap();
        assert!(keys.is_empty());
    }

    #[test]
    fn files_are_created_new_and_private() {
        let dir = std::env::temp_dir().join(format!("secure-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("key");
        let pair = KeyPair::generate().unwrap();
        pair.write_new(&path, "test").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&public_path(&path)), 0o644);
            // Readable by others: refused.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = KeyPair::from_file(&path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(KeyPair::from_file(&path).unwrap().public(), pair.public());
        assert_eq!(
            &PublicKey::from_file(&public_path(&path)).unwrap(),
            pair.public()
        );
        let err = pair.write_new(&path, "again").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        // A public key file in the way: no private key is left behind.
        let other = dir.join("other");
        std::fs::write(public_path(&other), "in the way").unwrap();
        let err = pair.write_new(&other, "").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert!(!other.exists());
        // A private key is not a pre-shared key.
        let err = PresharedKey::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("it is a private key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
