//! The handshake: hellos, then the Noise messages, each a length-prefixed
//! frame, all within the configured time.
//!
//! ```text
//! server -> client   hello (magic, mode)
//! client -> server   hello (magic, mode), Noise message 1
//! server -> client   Noise message 2
//! client -> server   Noise message 3 (XK, XKpsk3) or an empty record (NNpsk0)
//! server -> client   an empty record: accepted (the client reads it with
//!                    its first read; its data need not wait for it)
//! ```
//!
//! The server speaks first, and the client sends nothing until it has a
//! server's hello: a client with keys that reaches a server without them
//! fails at once or at its timeout, having sent nothing the server's
//! target could take for data. Both hellos are the Noise prologue, so a
//! changed hello fails the handshake.

use super::channel::Channel;
use super::config::{ClientConfig, ServerConfig};
use super::keys::{KEY_LEN, PublicKey};
use super::pattern::{HELLO_LEN, Mode};
use super::stream::{MAX_MESSAGE, PREFIX_LEN, SecureStream, Session, TAG_LEN};
use snow::HandshakeState;
use std::io::{self, ErrorKind};
use std::time::{Duration, Instant};

/// Runs the client's side of the handshake over `io`: the server must
/// hold the keys `config` expects of it. The handshake takes at most
/// `config`'s timeout; `io`'s read and write timeouts are unset after it.
///
/// Errors: `TimedOut`; `PermissionDenied` when the server ended the
/// handshake (it refused this end's key) or does not hold the key pinned
/// for it; `InvalidData` when the other end is not a server of this
/// protocol, or expects other kinds of keys.
///
/// ```
/// use amqp_stream::secure::{self, ClientConfig, KeyPair, PresharedKey, ServerConfig};
/// use std::net::{TcpListener, TcpStream};
///
/// let psk = PresharedKey::generate()?;
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let config = ServerConfig::psk(psk.clone());
/// let server = std::thread::spawn(move || {
///     let (tcp, _) = listener.accept().unwrap();
///     secure::server(tcp, &config).map(drop)
/// });
/// let secured = secure::client(TcpStream::connect(addr)?, &ClientConfig::psk(psk))?;
/// server.join().unwrap()?;
/// assert!(secured.peer_key().is_none()); // a PSK names no key
///
/// // A server that does not hold the pinned key refuses the client.
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let (server_keys, client_keys) = (KeyPair::generate()?, KeyPair::generate()?);
/// let accepted = [client_keys.public().clone()].into_iter().collect();
/// let config = ServerConfig::key_pair(server_keys, accepted);
/// let server = std::thread::spawn(move || {
///     let (tcp, _) = listener.accept().unwrap();
///     secure::server(tcp, &config).map(drop)
/// });
/// let impostor_pin = KeyPair::generate()?.public().clone();
/// let client = ClientConfig::key_pair(client_keys, impostor_pin);
/// let err = secure::client(TcpStream::connect(addr)?, &client).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
/// assert_eq!(server.join().unwrap().unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn client<S: Channel>(io: S, config: &ClientConfig) -> io::Result<SecureStream<S>> {
    let mut io = Deadlined::new(io, config.timeout);
    let result = run_client(&mut io, config);
    io.finish(result)
}

/// Runs the server's side of the handshake over `io`: the client must
/// hold a key `config` accepts. The handshake takes at most `config`'s
/// timeout; `io`'s read and write timeouts are unset after it.
///
/// Errors: `TimedOut`; `PermissionDenied` for a client without an
/// accepted key; `InvalidData` for a client that does not speak this
/// protocol or uses other kinds of keys.
///
/// See [`SecureStream`] for an example.
pub fn server<S: Channel>(io: S, config: &ServerConfig) -> io::Result<SecureStream<S>> {
    let mut io = Deadlined::new(io, config.timeout);
    let result = run_server(&mut io, config);
    io.finish(result)
}

fn run_client<S: Channel>(io: &mut Deadlined<S>, config: &ClientConfig) -> io::Result<Session> {
    let mode = config.mode();
    let mut server_hello = [0u8; HELLO_LEN];
    io.read_exact(&mut server_hello).map_err(|err| {
        refused_or(
            err,
            "the server ended the connection before its hello (does it expect a secure handshake?)",
        )
    })?;
    match Mode::from_hello(&server_hello) {
        Ok(theirs) if theirs == mode => {}
        Ok(theirs) => {
            return Err(invalid(format!(
                "the server authenticates with {theirs}, this end with {mode}"
            )));
        }
        Err(_) => {
            return Err(invalid(
                "the server did not start a secure handshake: it runs without key options, \
                 or is not an amqp-stream server"
                    .to_string(),
            ));
        }
    }
    let hello = mode.hello();
    let prologue = [server_hello, hello].concat();
    let mut builder = snow::Builder::new(mode.params().parse().map_err(noise)?)
        .prologue(&prologue)
        .map_err(noise)?;
    if let Some(psk) = &config.psk {
        builder = builder
            .psk(mode.psk_location().unwrap_or(0), &psk.0.0)
            .map_err(noise)?;
    }
    if let Some((own, server_key)) = &config.keys {
        builder = builder
            .local_private_key(&own.private.0)
            .map_err(noise)?
            .remote_public_key(server_key.as_bytes())
            .map_err(noise)?;
    }
    let mut noise_state = builder.build_initiator().map_err(noise)?;

    // Hello and message 1 in one write.
    let mut out = hello.to_vec();
    seal_frame(&mut noise_state, &mut out)?;
    io.write_all(&out)?;

    let message = io.read_frame().map_err(|err| {
        refused_or(
            err,
            match mode {
                Mode::Psk => "the server refused the handshake: it holds another pre-shared key",
                Mode::Keys => {
                    "the server refused the handshake: it is not the server whose key this \
                     end pinned"
                }
                Mode::KeysAndPsk => {
                    "the server refused the handshake: it is not the server whose key this \
                     end pinned, or holds another pre-shared key"
                }
            },
        )
    })?;
    noise_state
        .read_message(&message, &mut [0u8; MAX_MESSAGE])
        .map_err(|_| {
            io::Error::new(
                ErrorKind::PermissionDenied,
                "the server failed to authenticate: it does not hold the key expected of it",
            )
        })?;

    let mut out = Vec::new();
    let send_nonce = if mode.has_third_message() {
        seal_frame(&mut noise_state, &mut out)?;
        0
    } else {
        1
    };
    let transport = noise_state.into_stateless_transport_mode().map_err(noise)?;
    if !mode.has_third_message() {
        // The key confirmation: an empty record, nonce 0.
        let mut sealed = [0u8; TAG_LEN];
        transport
            .write_message(0, &[], &mut sealed)
            .map_err(noise)?;
        out.extend_from_slice(&(TAG_LEN as u16).to_be_bytes());
        out.extend_from_slice(&sealed);
    }
    io.write_all(&out)?;
    // The server's first record, its acceptance, is awaited by the
    // first read: the client's data goes at once.
    Ok(Session::new(transport, send_nonce, 0, None, true))
}

fn run_server<S: Channel>(io: &mut Deadlined<S>, config: &ServerConfig) -> io::Result<Session> {
    let mode = config.mode();
    let hello = mode.hello();
    io.write_all(&hello)?;
    let mut client_hello = [0u8; HELLO_LEN];
    io.read_exact(&mut client_hello).map_err(|err| {
        if err.kind() == ErrorKind::UnexpectedEof {
            invalid("the client ended the connection before its hello".to_string())
        } else {
            err
        }
    })?;
    match Mode::from_hello(&client_hello) {
        Ok(theirs) if theirs == mode => {}
        Ok(theirs) => {
            return Err(invalid(format!(
                "the client authenticates with {theirs}, this end with {mode}"
            )));
        }
        Err(_) => {
            return Err(invalid(
                "the client did not start a secure handshake (a client without key options?)"
                    .to_string(),
            ));
        }
    }
    let prologue = [hello, client_hello].concat();
    let mut builder = snow::Builder::new(mode.params().parse().map_err(noise)?)
        .prologue(&prologue)
        .map_err(noise)?;
    if let Some(psk) = &config.psk {
        builder = builder
            .psk(mode.psk_location().unwrap_or(0), &psk.0.0)
            .map_err(noise)?;
    }
    if let Some((own, _)) = &config.keys {
        builder = builder.local_private_key(&own.private.0).map_err(noise)?;
    }
    let mut noise_state = builder.build_responder().map_err(noise)?;

    let refused = |why: &str| io::Error::new(ErrorKind::PermissionDenied, why.to_string());
    let message = io.read_frame()?;
    noise_state
        .read_message(&message, &mut [0u8; MAX_MESSAGE])
        .map_err(|_| {
            refused(match mode {
                Mode::Psk => "the client does not hold the pre-shared key",
                _ => "the client does not hold this server's public key",
            })
        })?;
    let mut out = Vec::new();
    seal_frame(&mut noise_state, &mut out)?;
    io.write_all(&out)?;

    let message = io.read_frame()?;
    let (transport, receive_nonce, peer_key) = if mode.has_third_message() {
        noise_state
            .read_message(&message, &mut [0u8; MAX_MESSAGE])
            .map_err(|_| {
                refused(match mode {
                    Mode::KeysAndPsk => {
                        "the client's last handshake message failed: no pre-shared key, or changed"
                    }
                    _ => "the client's last handshake message failed authentication",
                })
            })?;
        let peer = noise_state
            .get_remote_static()
            .and_then(|key| <[u8; KEY_LEN]>::try_from(key).ok())
            .map(PublicKey)
            .ok_or_else(|| refused("the client sent no public key"))?;
        let accepted = config
            .keys
            .as_ref()
            .is_some_and(|(_, accepted)| accepted.contains(&peer));
        if !accepted {
            return Err(refused("the client's key is not among the authorized keys"));
        }
        let transport = noise_state.into_stateless_transport_mode().map_err(noise)?;
        (transport, 0, Some(peer))
    } else {
        let transport = noise_state.into_stateless_transport_mode().map_err(noise)?;
        let confirmed = transport.read_message(0, &message, &mut [0u8; MAX_MESSAGE]);
        if confirmed != Ok(0) {
            return Err(refused(
                "the client's key confirmation failed: a replayed handshake, or changed",
            ));
        }
        (transport, 1, None)
    };
    // Accepted: an empty record says so (nonce 0), so that a refused
    // client can tell a refusal from a stream that failed later.
    let mut accept = [0u8; PREFIX_LEN + TAG_LEN];
    accept[..PREFIX_LEN].copy_from_slice(&(TAG_LEN as u16).to_be_bytes());
    transport
        .write_message(0, &[], &mut accept[PREFIX_LEN..])
        .map_err(noise)?;
    io.write_all(&accept)?;
    // Gone before anything else can happen to the stream: a reset that
    // follows (the target refused, say) cannot overtake it and pass for
    // a refusal of the client's key.
    io.flush()?;
    Ok(Session::new(transport, 1, receive_nonce, peer_key, false))
}

/// Writes the next handshake message, as a frame, to `out`.
fn seal_frame(state: &mut HandshakeState, out: &mut Vec<u8>) -> io::Result<()> {
    let mut message = vec![0u8; MAX_MESSAGE];
    let n = state.write_message(&[], &mut message).map_err(noise)?;
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&message[..n]);
    Ok(())
}

fn noise(err: snow::Error) -> io::Error {
    io::Error::other(format!("noise: {err}"))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message)
}

/// The end of the connection (or a reset) where the server's next
/// message should be: the server refused.
fn refused_or(err: io::Error, why: &str) -> io::Error {
    match err.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => io::Error::new(ErrorKind::PermissionDenied, why.to_string()),
        _ => err,
    }
}

/// A connection whose every read and write must end by a deadline.
struct Deadlined<S> {
    io: S,
    /// `None`: a timeout beyond what an `Instant` holds (`Duration::MAX`,
    /// say), which is no limit, as `TcpStream` takes such a timeout.
    deadline: Option<Instant>,
    timeout: Duration,
}

impl<S: Channel> Deadlined<S> {
    fn new(io: S, timeout: Duration) -> Self {
        Deadlined {
            io,
            deadline: Instant::now().checked_add(timeout),
            timeout,
        }
    }

    /// The time left, set as the connection's read and write timeout.
    fn arm(&self) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            self.io.set_read_timeout(None)?;
            return self.io.set_write_timeout(None);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        self.io.set_read_timeout(Some(left))?;
        self.io.set_write_timeout(Some(left))
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            ErrorKind::TimedOut,
            format!(
                "the secure handshake took longer than {:.1} s",
                self.timeout.as_secs_f64()
            ),
        )
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.arm()?;
            match self.io.read(buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the connection ended during the secure handshake",
                    ));
                }
                Ok(n) => buf = &mut buf[n..],
                // A channel that says itself why time ran out says more
                // than we would.
                Err(err) if says_why_it_timed_out(&err) && self.expired() => return Err(err),
                Err(err) if retry(&err) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Whether the handshake's deadline has passed.
    fn expired(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.arm()?;
            match self.io.write(data) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(err) if retry(&err) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Waits until what was written has left (for a [`Stream`]: the
    /// broker has confirmed it).
    ///
    /// [`Stream`]: crate::Stream
    fn flush(&mut self) -> io::Result<()> {
        loop {
            self.arm()?;
            match self.io.flush() {
                Err(err) if retry(&err) => {}
                other => return other,
            }
        }
    }

    /// One length-prefixed handshake message.
    fn read_frame(&mut self) -> io::Result<Vec<u8>> {
        let mut prefix = [0u8; PREFIX_LEN];
        self.read_exact(&mut prefix)?;
        let len = u16::from_be_bytes(prefix) as usize;
        let mut message = vec![0u8; len];
        self.read_exact(&mut message)?;
        Ok(message)
    }

    /// Unsets the timeouts; the secured stream on success.
    fn finish(self, result: io::Result<Session>) -> io::Result<SecureStream<S>> {
        let session = result?;
        self.io.set_read_timeout(None)?;
        self.io.set_write_timeout(None)?;
        Ok(SecureStream::new(self.io, session))
    }
}

/// A timeout with a message of its own (not the bare one of a socket or
/// a stream's read timeout, which are `WouldBlock`).
fn says_why_it_timed_out(err: &io::Error) -> bool {
    err.kind() == ErrorKind::TimedOut && err.get_ref().is_some()
}

/// A read or write that ran out of its slice of time (the deadline is
/// checked when arming again) or was interrupted.
fn retry(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
