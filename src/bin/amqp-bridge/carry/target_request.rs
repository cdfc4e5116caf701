//! The target request: how a client that lets its user pick the target
//! (`amqp-bridge socks`) tells `serve --allow` where to connect, and how
//! `serve` answers. It goes over any `Read + Write`, right after the
//! stream is up (and after the secure handshake, when there is one).
//!
//! ```text
//! request: "\0AMQPBR?" VERSION KIND ADDRESS PORT
//!          KIND 1: ADDRESS is 4 bytes (IPv4)
//!          KIND 3: ADDRESS is LEN (1..=255) then LEN bytes of a domain name
//!          KIND 4: ADDRESS is 16 bytes (IPv6)
//!          PORT: 2 bytes, big-endian
//! answer:  "\0AMQPBR!" VERSION REPLY          (REPLY: see [`Reply`])
//! ```
//!
//! Both start with a magic prefix, so a mismatched pair is found at once:
//! `serve --allow` refuses a stream that does not start with a request (a
//! plain `forward` or `connect`), a fixed `serve --to` refuses one that
//! does (see [`RefuseTargetRequest`]), and `socks` sees that what came
//! back is no answer. A request is at most [`MAX_REQUEST`] bytes and is
//! read exactly (nothing after it), so the bytes that follow belong to the
//! connection. The answer keeps its shape (magic, version, reply) in every
//! version, so a peer of another version is told so.
//!
//! ```ignore
//! let request = TargetRequest { host: Host::Name("example.com".into()), port: 443 };
//! write_request(&mut stream, &request)?;
//! assert_eq!(read_answer(&mut stream)?, Reply::Connected);
//! ```

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The first bytes of every target request.
pub const REQUEST_MAGIC: [u8; 8] = *b"\0AMQPBR?";
/// The first bytes of every answer.
pub const ANSWER_MAGIC: [u8; 8] = *b"\0AMQPBR!";
/// The version of the request this bridge writes and reads.
pub const VERSION: u8 = 1;
/// The longest request: magic, version, kind, length, a 255-byte name,
/// port.
pub const MAX_REQUEST: usize = 8 + 1 + 1 + 1 + 255 + 2;

const KIND_IPV4: u8 = 1;
const KIND_NAME: u8 = 3;
const KIND_IPV6: u8 = 4;

/// The host a client asks for: an address, or a name that `serve`
/// resolves (as `ssh -D` does).
///
/// ```ignore
/// assert_eq!(Host::parse("example.com").unwrap(), Host::Name("example.com".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A domain name (ASCII letters, digits, `-`, `_` and `.`; 1 to 255
    /// bytes), lower-cased.
    Name(String),
}

impl Host {
    /// An address literal, or a checked domain name.
    pub fn parse(text: &str) -> Result<Host, String> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        check_name(text)?;
        Ok(Host::Name(text.to_ascii_lowercase()))
    }
}

/// Checks that `name` can be a domain name: 1 to 255 bytes of ASCII
/// letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("a host name is 1 to 255 bytes, not {}", name.len()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("{bad:?} cannot be in a host name"));
    }
    Ok(())
}

/// Where a client wants to be connected.
///
/// ```ignore
/// let request = TargetRequest { host: Host::Ip("::1".parse()?), port: 22 };
/// assert_eq!(request.to_string(), "[::1]:22");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRequest {
    /// The host.
    pub host: Host,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for TargetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The stream does not start with a target request.
    #[error(
        "the stream did not start with a target request: this serve runs with --allow, \
         for `amqp-bridge socks`; a plain forward or connect needs a serve with --to"
    )]
    NotARequest,
    /// A request of a version this bridge does not read.
    #[error("a target request of version {0}; this bridge reads version {VERSION}")]
    Version(u8),
    /// A request that breaks the format.
    #[error("a malformed target request: {0}")]
    Malformed(String),
    /// Reading failed (a timeout, an end of data, a reset).
    #[error("reading the target request: {0}")]
    Io(#[from] io::Error),
}

/// The bytes of `request`.
pub fn encode_request(request: &TargetRequest) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAX_REQUEST);
    bytes.extend_from_slice(&REQUEST_MAGIC);
    bytes.push(VERSION);
    match &request.host {
        Host::Ip(IpAddr::V4(ip)) => {
            bytes.push(KIND_IPV4);
            bytes.extend_from_slice(&ip.octets());
        }
        Host::Ip(IpAddr::V6(ip)) => {
            bytes.push(KIND_IPV6);
            bytes.extend_from_slice(&ip.octets());
        }
        Host::Name(name) => {
            bytes.push(KIND_NAME);
            // Checked when the name was made: at most 255 bytes.
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name.as_bytes());
        }
    }
    bytes.extend_from_slice(&request.port.to_be_bytes());
    bytes
}

/// Writes `request` in one write (one message on a stream), so that a
/// fixed `serve --to` finds its magic in its first read.
pub fn write_request<W: Write>(to: &mut W, request: &TargetRequest) -> io::Result<()> {
    to.write_all(&encode_request(request))?;
    to.flush()
}

/// Reads one request, and not a byte more. The caller bounds the time it
/// may take (a read timeout).
pub fn read_request<R: Read>(from: &mut R) -> Result<TargetRequest, RequestError> {
    let mut head = [0u8; 10];
    read_exact(from, &mut head[..REQUEST_MAGIC.len()])?;
    if head[..REQUEST_MAGIC.len()] != REQUEST_MAGIC {
        return Err(RequestError::NotARequest);
    }
    read_exact(from, &mut head[8..10])?;
    let (version, kind) = (head[8], head[9]);
    if version != VERSION {
        return Err(RequestError::Version(version));
    }
    let host = match kind {
        KIND_IPV4 => {
            let mut octets = [0u8; 4];
            read_exact(from, &mut octets)?;
            Host::Ip(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        KIND_IPV6 => {
            let mut octets = [0u8; 16];
            read_exact(from, &mut octets)?;
            Host::Ip(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        KIND_NAME => {
            let mut len = [0u8; 1];
            read_exact(from, &mut len)?;
            let mut name = vec![0u8; usize::from(len[0])];
            read_exact(from, &mut name)?;
            let name = String::from_utf8(name)
                .map_err(|_| RequestError::Malformed("the host name is not UTF-8".into()))?;
            check_name(&name).map_err(RequestError::Malformed)?;
            Host::Name(name.to_ascii_lowercase())
        }
        other => {
            return Err(RequestError::Malformed(format!(
                "unknown address kind {other}"
            )));
        }
    };
    let mut port = [0u8; 2];
    read_exact(from, &mut port)?;
    Ok(TargetRequest {
        host,
        port: u16::from_be_bytes(port),
    })
}

/// `read_exact` whose early end of data says what it cut short.
fn read_exact<R: Read>(from: &mut R, buf: &mut [u8]) -> io::Result<()> {
    from.read_exact(buf).map_err(|err| match err.kind() {
        ErrorKind::UnexpectedEof => io::Error::new(
            ErrorKind::UnexpectedEof,
            "the peer ended the stream in the middle of the exchange",
        ),
        _ => err,
    })
}

/// `serve`'s answer to a request. The numbers are those of the SOCKS5
/// replies they map to (RFC 1928), where there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Connected: what follows is the target's.
    Connected,
    /// Something else went wrong.
    GeneralFailure,
    /// The target is not in `serve`'s allow-list (no connection was made).
    NotAllowed,
    /// The target's network is unreachable.
    NetworkUnreachable,
    /// The target's host is unreachable, or its name does not resolve.
    HostUnreachable,
    /// The target refused the connection.
    ConnectionRefused,
    /// Connecting took too long.
    TimedOut,
    /// The request was malformed.
    BadRequest,
    /// The request's version is not one `serve` reads.
    UnsupportedVersion,
}

impl Reply {
    /// The byte on the wire.
    /// The reason label of a refusal in the metrics: the same on both
    /// sides (`serve --allow` and `socks`), and the name of the I/O error
    /// kind where there is one (`connection_refused`, `timed_out`, ...).
    pub fn reason(self) -> &'static str {
        match self {
            Reply::Connected => "connected",
            Reply::GeneralFailure => "general_failure",
            Reply::NotAllowed => "not_allowed",
            Reply::NetworkUnreachable => "network_unreachable",
            Reply::HostUnreachable => "host_unreachable",
            Reply::ConnectionRefused => "connection_refused",
            Reply::TimedOut => "timed_out",
            Reply::BadRequest => "bad_request",
            Reply::UnsupportedVersion => "unsupported_version",
        }
    }

    /// The reply's code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Reply::Connected => 0,
            Reply::GeneralFailure => 1,
            Reply::NotAllowed => 2,
            Reply::NetworkUnreachable => 3,
            Reply::HostUnreachable => 4,
            Reply::ConnectionRefused => 5,
            Reply::TimedOut => 6,
            Reply::BadRequest => 0x40,
            Reply::UnsupportedVersion => 0x41,
        }
    }

    /// The reply with this byte on the wire.
    pub fn from_code(code: u8) -> Option<Reply> {
        [
            Reply::Connected,
            Reply::GeneralFailure,
            Reply::NotAllowed,
            Reply::NetworkUnreachable,
            Reply::HostUnreachable,
            Reply::ConnectionRefused,
            Reply::TimedOut,
            Reply::BadRequest,
            Reply::UnsupportedVersion,
        ]
        .into_iter()
        .find(|reply| reply.code() == code)
    }

    /// The answer to a failed attempt to connect the target.
    pub fn for_connect_error(err: &io::Error) -> Reply {
        match err.kind() {
            ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            ErrorKind::HostUnreachable | ErrorKind::NotFound => Reply::HostUnreachable,
            ErrorKind::NetworkUnreachable | ErrorKind::AddrNotAvailable => {
                Reply::NetworkUnreachable
            }
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Reply::TimedOut,
            _ => Reply::GeneralFailure,
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reply::Connected => "connected",
            Reply::GeneralFailure => "general failure",
            Reply::NotAllowed => "not allowed by serve's --allow list",
            Reply::NetworkUnreachable => "network unreachable",
            Reply::HostUnreachable => "host unreachable (or its name does not resolve)",
            Reply::ConnectionRefused => "connection refused",
            Reply::TimedOut => "timed out connecting",
            Reply::BadRequest => "malformed target request",
            Reply::UnsupportedVersion => "unsupported target request version",
        })
    }
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Something other than an answer came back.
    #[error(
        "the serve did not answer the target request: is it a serve with --allow \
         (a serve with a fixed --to cannot take `socks` connections)?"
    )]
    NotAnAnswer,
    /// An answer of a version this bridge does not read.
    #[error("an answer of version {0}; this bridge reads version {VERSION}")]
    Version(u8),
    /// A reply code this bridge does not know.
    #[error("an unknown reply code {0}")]
    UnknownReply(u8),
    /// Reading failed (a timeout, an end of data, a reset; a serve that
    /// requires keys).
    #[error("{}", io_failure(.0))]
    Io(#[from] io::Error),
}

/// Why no answer came: a serve that requires keys says so (see
/// [`keys_notice`](crate::carry::keys_notice)); otherwise the likeliest
/// cause is a serve with a fixed `--to`.
fn io_failure(err: &io::Error) -> String {
    if err.kind() == ErrorKind::PermissionDenied {
        return format!("no answer to the target request: {err}");
    }
    format!(
        "no answer to the target request: {err} (a serve with a fixed --to resets \
         target requests: `socks` needs a serve with --allow)"
    )
}

/// The client's side: sends `request` and reads `serve`'s answer. The
/// caller bounds the time the answer may take (a read timeout).
pub fn ask<S: Read + Write>(conn: &mut S, request: &TargetRequest) -> Result<Reply, AnswerError> {
    write_request(conn, request)?;
    read_answer(conn)
}

/// The bytes of the answer `reply`.
pub fn encode_answer(reply: Reply) -> [u8; 10] {
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&ANSWER_MAGIC);
    bytes[8] = VERSION;
    bytes[9] = reply.code();
    bytes
}

/// Writes the answer `reply`.
pub fn write_answer<W: Write>(to: &mut W, reply: Reply) -> io::Result<()> {
    to.write_all(&encode_answer(reply))?;
    to.flush()
}

/// Reads one answer, and not a byte more. The caller bounds the time it
/// may take (a read timeout).
pub fn read_answer<R: Read>(from: &mut R) -> Result<Reply, AnswerError> {
    let mut bytes = [0u8; 10];
    read_exact(from, &mut bytes[..8])?;
    if bytes[..8] != ANSWER_MAGIC {
        return Err(AnswerError::NotAnAnswer);
    }
    read_exact(from, &mut bytes[8..])?;
    let (version, code) = (bytes[8], bytes[9]);
    match Reply::from_code(code) {
        // An older or newer serve that could not read our request says so
        // in the shape every version keeps.
        Some(Reply::UnsupportedVersion) => Ok(Reply::UnsupportedVersion),
        _ if version != VERSION => Err(AnswerError::Version(version)),
        Some(reply) => Ok(reply),
        None => Err(AnswerError::UnknownReply(code)),
    }
}

/// A fixed `serve --to`'s guard on a stream's first bytes: a stream that
/// starts with a target request (a `socks` client at the wrong serve) is
/// refused with `InvalidData` instead of having its request delivered to
/// the target. Only the first read is looked at: our clients write the
/// request in one write, which arrives in one piece; anything else passes
/// untouched and unbuffered.
///
/// ```ignore
/// let guarded = RefuseTargetRequest::new(stream);
/// let transfer = splice(guarded, tcp, |abort| log.on_abort(abort));
/// ```
pub struct RefuseTargetRequest<D> {
    inner: D,
    first_read: bool,
}

impl<D> RefuseTargetRequest<D> {
    /// Guards the reads of `inner`.
    pub fn new(inner: D) -> Self {
        RefuseTargetRequest {
            inner,
            first_read: true,
        }
    }
}

/// The error a fixed `serve --to` gives a stream that starts with a target
/// request.
pub fn misdirected_request() -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        "the stream started with a target request (from `amqp-bridge socks`?): \
         this serve has a fixed --to target; client-chosen targets need serve --allow",
    )
}

impl<D: Read> Read for RefuseTargetRequest<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.first_read && n > 0 {
            self.first_read = false;
            if buf[..n].starts_with(&REQUEST_MAGIC) {
                return Err(misdirected_request());
            }
        }
        Ok(n)
    }
}

impl<D: Write> Write for RefuseTargetRequest<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D: crate::carry::splice::Duplex> crate::carry::splice::Duplex for RefuseTargetRequest<D> {
    fn duplicate(&self) -> io::Result<Self> {
        Ok(RefuseTargetRequest {
            inner: self.inner.duplicate()?,
            first_read: self.first_read,
        })
    }
    fn finish(&self) -> io::Result<()> {
        self.inner.finish()
    }
    fn stop_reading(&self) {
        self.inner.stop_reading()
    }
    fn abort(&self) {
        self.inner.abort()
    }
    fn drain(&self) {
        self.inner.drain()
    }
    fn set_write_limit(&self, limit: Option<std::time::Duration>) -> io::Result<()> {
        self.inner.set_write_limit(limit)
    }
    fn settle(&self) {
        self.inner.settle();
    }
    fn health(&self) -> crate::carry::splice::Health {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn request(host: &str, port: u16) -> TargetRequest {
        TargetRequest {
            host: Host::parse(host).unwrap(),
            port,
        }
    }

    #[test]
    fn requests_of_every_kind_go_through_unchanged() {
        for (host, port, shown) in [
            ("127.0.0.1", 80, "127.0.0.1:80"),
            ("::1", 22, "[::1]:22"),
            ("Example.COM", 443, "example.com:443"),
        ] {
            let sent = request(host, port);
            assert_eq!(sent.to_string(), shown);
            let mut bytes = encode_request(&sent);
            bytes.extend_from_slice(b"what follows");
            let mut reader = Cursor::new(bytes);
            assert_eq!(read_request(&mut reader).unwrap(), sent);
            // Not a byte more: what follows belongs to the connection.
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, b"what follows");
        }
    }

    #[test]
    fn the_longest_request_fits_the_bound() {
        let sent = request(&"a".repeat(255), 1);
        assert_eq!(encode_request(&sent).len(), MAX_REQUEST);
        assert!(Host::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn what_is_not_a_request_is_refused_before_a_byte_past_the_magic() {
        let mut plain = Cursor::new(b"GET / HTTP/1.1\r\n\r\n".to_vec());
        assert!(matches!(
            read_request(&mut plain),
            Err(RequestError::NotARequest)
        ));
        assert_eq!(plain.position(), 8);
    }

    #[test]
    fn other_versions_and_broken_requests_are_told_apart() {
        let mut bytes = encode_request(&request("10.0.0.1", 5432));
        bytes[8] = 9;
        assert!(matches!(
            read_request(&mut Cursor::new(bytes)),
            Err(RequestError::Version(9))
        ));

        let mut bytes = encode_request(&request("10.0.0.1", 5432));
        bytes[9] = 2;
        assert!(matches!(
            read_request(&mut Cursor::new(bytes)),
            Err(RequestError::Malformed(m)) if m.contains("kind 2")
        ));

        let mut bytes = encode_request(&request("ab", 1));
        bytes[11] = b'/';
        assert!(matches!(
            read_request(&mut Cursor::new(bytes)),
            Err(RequestError::Malformed(m)) if m.contains("'/'")
        ));

        let bytes = encode_request(&request("example.com", 1));
        let cut = &bytes[..bytes.len() - 1];
        let err = read_request(&mut Cursor::new(cut.to_vec())).unwrap_err();
        assert!(
            matches!(&err, RequestError::Io(e) if e.kind() == ErrorKind::UnexpectedEof),
            "{err}"
        );

        let mut empty_name = encode_request(&request("a", 1));
        empty_name[10] = 0;
        empty_name.remove(11);
        assert!(matches!(
            read_request(&mut Cursor::new(empty_name)),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn answers_go_through_and_others_are_refused() {
        for code in 0..=255u8 {
            if let Some(reply) = Reply::from_code(code) {
                let bytes = encode_answer(reply);
                assert_eq!(read_answer(&mut Cursor::new(bytes)).unwrap(), reply);
            }
        }
        let banner = b"SSH-2.0-OpenSSH_9.2\r\n".to_vec();
        assert!(matches!(
            read_answer(&mut Cursor::new(banner)),
            Err(AnswerError::NotAnAnswer)
        ));
        let mut newer = encode_answer(Reply::Connected);
        newer[8] = 2;
        assert!(matches!(
            read_answer(&mut Cursor::new(newer)),
            Err(AnswerError::Version(2))
        ));
        let mut newer_refusal = encode_answer(Reply::UnsupportedVersion);
        newer_refusal[8] = 2;
        assert_eq!(
            read_answer(&mut Cursor::new(newer_refusal)).unwrap(),
            Reply::UnsupportedVersion
        );
        let mut unknown = encode_answer(Reply::Connected);
        unknown[9] = 0x99;
        assert!(matches!(
            read_answer(&mut Cursor::new(unknown)),
            Err(AnswerError::UnknownReply(0x99))
        ));
        let err = read_answer(&mut Cursor::new(Vec::new())).unwrap_err();
        assert!(err.to_string().contains("--allow"), "{err}");
    }

    #[test]
    fn connect_errors_map_to_replies() {
        let reply = |kind| Reply::for_connect_error(&io::Error::new(kind, "x"));
        assert_eq!(
            reply(ErrorKind::ConnectionRefused),
            Reply::ConnectionRefused
        );
        assert_eq!(reply(ErrorKind::HostUnreachable), Reply::HostUnreachable);
        assert_eq!(
            reply(ErrorKind::NetworkUnreachable),
            Reply::NetworkUnreachable
        );
        assert_eq!(reply(ErrorKind::TimedOut), Reply::TimedOut);
        assert_eq!(reply(ErrorKind::PermissionDenied), Reply::GeneralFailure);
    }

    #[test]
    fn a_fixed_serve_refuses_a_request_and_passes_anything_else() {
        let mut guarded =
            RefuseTargetRequest::new(Cursor::new(encode_request(&request("db.internal", 5432))));
        let err = guarded.read(&mut [0u8; 64]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("--allow"), "{err}");

        // The magic later in the stream is data like any other.
        let mut data = b"hello".to_vec();
        data.extend_from_slice(&REQUEST_MAGIC);
        let mut guarded = RefuseTargetRequest::new(Cursor::new(data.clone()));
        let mut got = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            match guarded.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, data);
    }
}
