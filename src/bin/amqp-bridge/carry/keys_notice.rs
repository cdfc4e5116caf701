//! The keys notice: the first bytes a `serve` with key options sends on
//! every stream, ahead of the secure handshake, so that a client bridge
//! without keys can say why it cannot go on ("this serve requires a key")
//! instead of passing the handshake's bytes to its client (ssh: "banner
//! line contains invalid characters").
//!
//! ```text
//! "\0AMQPBRK" VERSION          (9 bytes, in the same message as the
//!                               handshake's first bytes)
//! ```
//!
//! It belongs to the bridge, not to `amqp_stream::secure`: a service
//! behind a plain `serve` that speaks the library's secure handshake
//! itself sends no notice, so a plain bridge carries it untouched.
//!
//! ```ignore
//! let secured = secure::server(Noticed::server(stream), &config)?;   // serve
//! let secured = secure::client(Noticed::client(stream), &config)?;   // forward, ...
//! let plain = RequiresKeyCheck::new(stream);                         // forward without keys
//! ```

use amqp_stream::secure::Channel;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// The first bytes of the notice.
pub const MAGIC: [u8; 8] = *b"\0AMQPBRK";
/// Its version.
pub const VERSION: u8 = 1;
/// The whole notice.
pub const NOTICE: [u8; 9] = [
    MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], MAGIC[4], MAGIC[5], MAGIC[6], MAGIC[7], VERSION,
];

/// What a client without keys reports when a serve with keys answers.
pub fn requires_a_key() -> io::Error {
    io::Error::new(
        ErrorKind::PermissionDenied,
        "this serve requires a key (--key/--psk-file)",
    )
}

/// Whether `bytes` (the first a stream gave) are a serve's keys notice.
pub fn is_notice(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// A channel for the secure handshake with the keys notice in front: the
/// server's side sends it with its first write, the client's side reads
/// and checks it before its first read. Everything after passes through.
pub struct Noticed<S> {
    inner: S,
    /// What is still to do: [`SEND`], [`CHECK`] or [`DONE`].
    pending: AtomicU8,
}

/// The notice goes in front of the first write.
const SEND: u8 = 0;
/// The notice is read and checked before the first read.
const CHECK: u8 = 1;
const DONE: u8 = 2;

impl<S> Noticed<S> {
    /// The server's side of `inner`.
    pub fn server(inner: S) -> Noticed<S> {
        Noticed {
            inner,
            pending: AtomicU8::new(SEND),
        }
    }

    /// The client's side of `inner`.
    pub fn client(inner: S) -> Noticed<S> {
        Noticed {
            inner,
            pending: AtomicU8::new(CHECK),
        }
    }

    /// The channel under it.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Read for &Noticed<S>
where
    for<'a> &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.load(Ordering::SeqCst) == CHECK {
            let mut notice = [0u8; NOTICE.len()];
            (&self.inner).read_exact(&mut notice).map_err(|err| {
                match err.kind() {
                    ErrorKind::UnexpectedEof => io::Error::new(
                        ErrorKind::PermissionDenied,
                        "the serve ended the stream before its secure handshake",
                    ),
                    // A serve without keys connects the stream to its
                    // target at once and hands it our handshake: a target
                    // that waits for its client to speak first says
                    // nothing back.
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => io::Error::new(
                        ErrorKind::TimedOut,
                        "the serve did not start a secure handshake in time: it probably \
                         runs without key options (--key/--psk-file) and passed ours to its \
                         target, which waits for something else",
                    ),
                    _ => err,
                }
            })?;
            if !is_notice(&notice) {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "the serve did not start a secure handshake: it runs without key \
                     options (--key/--psk-file), or is no amqp-bridge serve",
                ));
            }
            if notice[MAGIC.len()] != VERSION {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "the serve's keys notice is of version {}; this bridge reads {VERSION}",
                        notice[MAGIC.len()]
                    ),
                ));
            }
            self.pending.store(DONE, Ordering::SeqCst);
        }
        (&self.inner).read(buf)
    }
}

impl<S> Read for Noticed<S>
where
    for<'a> &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl<S> Write for &Noticed<S>
where
    for<'a> &'a S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.load(Ordering::SeqCst) == SEND {
            // One write, one message: the notice and the hello together.
            let mut first = NOTICE.to_vec();
            first.extend_from_slice(buf);
            (&self.inner).write_all(&first)?;
            self.pending.store(DONE, Ordering::SeqCst);
            return Ok(buf.len());
        }
        (&self.inner).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&self.inner).flush()
    }
}

impl<S> Write for Noticed<S>
where
    for<'a> &'a S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

impl<S: Channel> Channel for Noticed<S>
where
    for<'a> &'a S: Read + Write,
{
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(timeout)
    }
    fn try_clone(&self) -> io::Result<Self> {
        Ok(Noticed {
            inner: self.inner.try_clone()?,
            // Clones are made after the handshake.
            pending: AtomicU8::new(DONE),
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_stream::secure::{self, ClientConfig, PresharedKey, ServerConfig};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_handshake_goes_through_with_the_notice_in_front() {
        let psk = PresharedKey::generate().unwrap();
        let (client, server) = pair();
        let config = ServerConfig::psk(psk.clone());
        let served = std::thread::spawn(move || {
            let mut secured = secure::server(Noticed::server(server), &config).unwrap();
            secured.write_all(b"hello").unwrap();
            secured.flush().unwrap();
        });
        let mut secured = secure::client(Noticed::client(client), &ClientConfig::psk(psk)).unwrap();
        let mut got = [0u8; 5];
        secured.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        served.join().unwrap();
    }

    #[test]
    fn a_client_without_keys_sees_the_notice_first() {
        let (client, server) = pair();
        let config = ServerConfig::psk(PresharedKey::generate().unwrap());
        let served = std::thread::spawn(move || {
            let _ = secure::server(Noticed::server(server), &config);
        });
        let mut first = [0u8; 64];
        let n = (&client).read(&mut first).unwrap();
        assert!(is_notice(&first[..n]), "{:?}", &first[..n]);
        drop(client);
        served.join().unwrap();
    }

    #[test]
    fn a_client_with_keys_at_a_serve_without_whose_target_stays_silent_says_why() {
        let (client, _server) = pair();
        let config = ClientConfig::psk(PresharedKey::generate().unwrap())
            .handshake_timeout(Duration::from_millis(200));
        let err = secure::client(Noticed::client(client), &config)
            .map(drop)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("without key options"), "{err}");
    }

    #[test]
    fn a_client_with_keys_at_a_serve_without_says_so() {
        let (client, mut server) = pair();
        server.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
        let config = ClientConfig::psk(PresharedKey::generate().unwrap());
        let err = secure::client(Noticed::client(client), &config)
            .map(drop)
            .unwrap_err();
        assert!(err.to_string().contains("without key options"), "{err}");
    }
}
