//! End-to-end authentication and encryption over any connection (feature
//! `noise`): both ends hold a key, and whoever carries the bytes between
//! them (the broker and its operator, for a [`Stream`](crate::Stream))
//! sees only ciphertext and cannot change, replay, reorder or cut it
//! without the reading end failing with `InvalidData`.
//!
//! [`client`] and [`server`] run a handshake of the [Noise protocol
//! framework](https://noiseprotocol.org/) (through the `snow` crate, not
//! cryptography of our own) over a [`Channel`], a `Read + Write` with
//! timeouts such as a [`Stream`](crate::Stream) or a `TcpStream`, and give
//! a [`SecureStream`], itself `Read + Write`.
//!
//! # Keys, and the Noise patterns they use
//!
//! * **A pre-shared key** ([`PresharedKey`]) on both ends:
//!   `Noise_NNpsk0_25519_AESGCM_SHA256`. The key is mixed in before
//!   the first message, so a server refuses a client without it on that
//!   first message, and ephemeral keys on both sides give forward
//!   secrecy (a key stolen later does not open recorded traffic). Its
//!   first message could be replayed by someone who recorded it, so the
//!   client also sends an empty record under the new session keys, which
//!   only a holder of the client's ephemeral key can seal; the server
//!   accepts the client only then.
//! * **Static key pairs** ([`KeyPair`]): the client pins the server's
//!   public key, the server lists the client keys it accepts
//!   ([`AuthorizedKeys`]): `Noise_XK_25519_AESGCM_SHA256`. XK rather
//!   than IK: IK's first message carries the client's proof of identity,
//!   which anyone who recorded it could replay to a server; XK's proof
//!   comes in the third message, bound to the server's fresh ephemeral
//!   key, so a replay is refused before a server acts on it (the bridge's
//!   `serve` opens no connection to its target for it). XK also hides the
//!   client's public key from onlookers, and from anybody who does not
//!   hold the server's private key. The cost, half a round trip more
//!   than IK, is paid once per connection.
//! * **Both**: `Noise_XKpsk3_25519_AESGCM_SHA256`.
//!
//! The cipher is AES-GCM rather than ChaCha20-Poly1305: with the AES
//! instructions every x86-64 and ARMv8 server has, ring's AES-GCM (which
//! `snow` uses here) runs several times faster, and through the broker
//! it cost little where ChaCha20-Poly1305 cost over a third of the bulk
//! throughput on the two-core development machine (`cargo run --release
//! --features noise --example bench_secure`: 0.63x of plain with ChaCha20-Poly1305, 0.84x
//! to 0.96x with AES-GCM). Without AES instructions ring falls back to
//! a constant-time implementation. SHA-256 is the hash of the handshake.
//!
//! # On the wire
//!
//! Each end first sends a hello (magic bytes and which kind of keys it
//! uses; the server first, so that a client reaching a server without
//! keys sends it nothing), then the Noise messages, then records: every
//! Noise message is a frame of a 2-byte big-endian length and at most
//! 65535 bytes (the Noise limit), so a write is split into records of at
//! most 65519 bytes of data. Each direction counts its records (the
//! Noise nonce): a replayed, dropped or reordered record fails to open.
//! The end of data is an empty record. The server's first record, also
//! empty, says it accepted the client: the client does not wait for it
//! (its data follows its last handshake message at once), but its first
//! read takes it, and a stream that ends or is reset before it is the
//! server's refusal (`PermissionDenied`), not a cut-off stream.
//!
//! ```
//! use amqp_stream::secure::{self, AuthorizedKeys, ClientConfig, KeyPair, ServerConfig};
//! use std::io::{Read, Write};
//! use std::net::{Shutdown, TcpListener, TcpStream};
//!
//! let (server_keys, client_keys) = (KeyPair::generate()?, KeyPair::generate()?);
//! let server_public = server_keys.public().clone();
//! let accepted: AuthorizedKeys = [client_keys.public().clone()].into_iter().collect();
//! let server_config = ServerConfig::key_pair(server_keys, accepted);
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
//!     let (tcp, _) = listener.accept()?;
//!     let mut secured = secure::server(tcp, &server_config)?;
//!     let mut got = Vec::new();
//!     secured.read_to_end(&mut got)?;
//!     Ok(got)
//! });
//!
//! let tcp = TcpStream::connect(addr)?;
//! let mut secured = secure::client(tcp, &ClientConfig::key_pair(client_keys, server_public))?;
//! secured.write_all(b"only for the server")?;
//! secured.shutdown(Shutdown::Write)?;
//! assert_eq!(server.join().unwrap()?, b"only for the server");
//! # Ok::<(), std::io::Error>(())
//! ```

mod channel;
mod config;
mod handshake;
mod keys;
mod pattern;
mod stream;
#[cfg(test)]
mod tests;

pub use channel::Channel;
pub use config::{ClientConfig, DEFAULT_HANDSHAKE_TIMEOUT, ServerConfig};
pub use handshake::{client, server};
pub use keys::{AuthorizedKeys, KEY_LEN, KeyPair, PresharedKey, PublicKey, public_path};
pub use stream::SecureStream;
