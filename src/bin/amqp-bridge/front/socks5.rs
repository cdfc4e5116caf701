//! The SOCKS5 server's side of RFC 1928, as far as `amqp-bridge socks`
//! needs it: the "no authentication" method, the CONNECT command, IPv4,
//! IPv6 and domain-name addresses. Hand-written (the RFC is small) over
//! any `Read + Write`: the SOCKS5 crates that parse the server side are
//! built on async runtimes, and the bridge is blocking.
//!
//! ```ignore
//! let request = read_greeting_and_request(&mut client)?;
//! client.write_all(&reply(ReplyCode::Succeeded))?;
//! ```

use crate::carry::target_request::{Host, TargetRequest};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The protocol version byte.
pub const VERSION: u8 = 5;
/// The "no authentication required" method.
const NO_AUTH: u8 = 0x00;
/// "No acceptable methods".
const NO_ACCEPTABLE: u8 = 0xFF;

/// The command a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT (1): the only one served.
    Connect,
    /// Anything else (BIND is 2, UDP ASSOCIATE 3).
    Other(u8),
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub command: Command,
    /// Where to.
    pub target: TargetRequest,
}

/// The reply codes of RFC 1928, section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCode {
    /// 0: succeeded.
    Succeeded = 0,
    /// 1: general SOCKS server failure.
    GeneralFailure = 1,
    /// 2: connection not allowed by ruleset.
    NotAllowed = 2,
    /// 3: network unreachable.
    NetworkUnreachable = 3,
    /// 4: host unreachable.
    HostUnreachable = 4,
    /// 5: connection refused.
    ConnectionRefused = 5,
    /// 6: TTL expired (what a timeout maps to).
    TtlExpired = 6,
    /// 7: command not supported.
    CommandNotSupported = 7,
    /// 8: address type not supported.
    AddressTypeNotSupported = 8,
}

/// Why the SOCKS5 exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// Not SOCKS version 5 (a SOCKS4 client, say).
    #[error("not a SOCKS5 client (version byte {0})")]
    NotSocks5(u8),
    /// The client offers no method we accept (it wants a password).
    #[error("the client offers no acceptable method (only \"no authentication\" is served)")]
    NoAcceptableMethod,
    /// An address type that RFC 1928 does not define: answered with
    /// [`ReplyCode::AddressTypeNotSupported`].
    #[error("address type {0} is not supported")]
    AddressType(u8),
    /// A request that breaks the format.
    #[error("malformed SOCKS5 request: {0}")]
    Malformed(String),
    /// Reading or writing failed (a timeout, an end of data, a reset).
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Runs the server's side up to the request: reads the greeting, chooses
/// "no authentication" (or says no method is acceptable), and reads the
/// request. A request for another command is returned for the caller to
/// answer [`ReplyCode::CommandNotSupported`]; an unknown address type is
/// answered here.
pub fn read_greeting_and_request<S: Read + Write>(client: &mut S) -> Result<Request, Socks5Error> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head)?;
    if head[0] != VERSION {
        return Err(Socks5Error::NotSocks5(head[0]));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods)?;
    if !methods.contains(&NO_AUTH) {
        client.write_all(&[VERSION, NO_ACCEPTABLE])?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    client.write_all(&[VERSION, NO_AUTH])?;
    client.flush()?;
    match read_request(client) {
        Err(Socks5Error::AddressType(kind)) => {
            client.write_all(&reply(ReplyCode::AddressTypeNotSupported))?;
            Err(Socks5Error::AddressType(kind))
        }
        other => other,
    }
}

/// Reads a request: `VER CMD RSV ATYP DST.ADDR DST.PORT`.
pub fn read_request<R: Read>(client: &mut R) -> Result<Request, Socks5Error> {
    let mut head = [0u8; 4];
    client.read_exact(&mut head)?;
    let [version, command, reserved, kind] = head;
    if version != VERSION {
        return Err(Socks5Error::NotSocks5(version));
    }
    if reserved != 0 {
        return Err(Socks5Error::Malformed(format!(
            "the reserved byte is {reserved}, not 0"
        )));
    }
    let host = match kind {
        1 => {
            let mut octets = [0u8; 4];
            client.read_exact(&mut octets)?;
            Host::Ip(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        4 => {
            let mut octets = [0u8; 16];
            client.read_exact(&mut octets)?;
            Host::Ip(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len)?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name)?;
            let name = String::from_utf8(name)
                .map_err(|_| Socks5Error::Malformed("the host name is not UTF-8".into()))?;
            // Clients may send an address as a name: it is then the
            // address (and matched as one by `serve --allow`).
            Host::parse(&name).map_err(Socks5Error::Malformed)?
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port)?;
    let command = match command {
        1 => Command::Connect,
        other => Command::Other(other),
    };
    Ok(Request {
        command,
        target: TargetRequest {
            host,
            port: u16::from_be_bytes(port),
        },
    })
}

/// A reply with `code` and an unspecified bound address (`0.0.0.0:0`):
/// the bridge's side of the connection is on another machine.
pub fn reply(code: ReplyCode) -> [u8; 10] {
    [VERSION, code as u8, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// Whether `err` is the end of a client that went away before finishing
/// its request (not worth a warning).
pub fn is_client_gone(err: &Socks5Error) -> bool {
    matches!(err, Socks5Error::Io(e) if matches!(
        e.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A client: what it sends, and what the server wrote to it.
    struct Client {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Client {
        fn sending(bytes: &[u8]) -> Client {
            Client {
                input: Cursor::new(bytes.to_vec()),
                output: Vec::new(),
            }
        }
    }

    impl Read for Client {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Client {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn target(host: &str, port: u16) -> TargetRequest {
        TargetRequest {
            host: Host::parse(host).unwrap(),
            port,
        }
    }

    #[test]
    fn a_connect_of_each_address_type_is_read() {
        let cases: [(&[u8], TargetRequest); 5] = [
            (&[5, 1, 0, 1, 127, 0, 0, 1, 0, 80], target("127.0.0.1", 80)),
            (
                &[
                    5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 22,
                ],
                target("::1", 22),
            ),
            (
                b"\x05\x01\x00\x03\x0bExample.org\x01\xbb",
                target("example.org", 443),
            ),
            (
                b"\x05\x01\x00\x03\x0810.0.0.1\x00\x01",
                target("10.0.0.1", 1),
            ),
            (b"\x05\x01\x00\x03\x03::1\x00\x16", target("::1", 22)),
        ];
        for (request, expected) in cases {
            let mut bytes = vec![5, 2, 2, 0];
            bytes.extend_from_slice(request);
            bytes.extend_from_slice(b"payload");
            let mut client = Client::sending(&bytes);
            let got = read_greeting_and_request(&mut client).unwrap();
            assert_eq!(got.command, Command::Connect);
            assert_eq!(got.target, expected);
            assert_eq!(client.output, [5, 0], "no authentication chosen");
            // Not a byte more.
            let mut rest = Vec::new();
            client.input.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, b"payload");
        }
    }

    #[test]
    fn other_commands_are_returned_for_a_command_not_supported_reply() {
        let mut client = Client::sending(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80]);
        let got = read_greeting_and_request(&mut client).unwrap();
        assert_eq!(got.command, Command::Other(2));
        assert_eq!(reply(ReplyCode::CommandNotSupported)[1], 7);
    }

    #[test]
    fn a_client_that_wants_a_password_is_told_no_method_is_acceptable() {
        let mut client = Client::sending(&[5, 1, 2]);
        let err = read_greeting_and_request(&mut client).unwrap_err();
        assert!(matches!(err, Socks5Error::NoAcceptableMethod), "{err}");
        assert_eq!(client.output, [5, 0xFF]);
    }

    #[test]
    fn socks4_and_broken_requests_are_refused() {
        let mut socks4 = Client::sending(&[4, 1, 0, 80, 127, 0, 0, 1, 0]);
        assert!(matches!(
            read_greeting_and_request(&mut socks4),
            Err(Socks5Error::NotSocks5(4))
        ));
        assert!(socks4.output.is_empty());

        let mut unknown_type = Client::sending(&[5, 1, 0, 5, 1, 0, 9, 1, 2]);
        assert!(matches!(
            read_greeting_and_request(&mut unknown_type),
            Err(Socks5Error::AddressType(9))
        ));
        assert_eq!(
            unknown_type.output[2..],
            reply(ReplyCode::AddressTypeNotSupported)
        );

        let mut bad_name = Client::sending(b"\x05\x01\x00\x05\x01\x00\x03\x03a/b\x00\x50");
        assert!(matches!(
            read_greeting_and_request(&mut bad_name),
            Err(Socks5Error::Malformed(_))
        ));

        let mut reserved = Client::sending(&[5, 1, 0, 5, 1, 7, 1, 127, 0, 0, 1, 0, 80]);
        assert!(matches!(
            read_greeting_and_request(&mut reserved),
            Err(Socks5Error::Malformed(_))
        ));

        let mut cut = Client::sending(&[5, 1, 0, 5, 1, 0, 1, 127, 0]);
        let err = read_greeting_and_request(&mut cut).unwrap_err();
        assert!(is_client_gone(&err), "{err}");
    }

    #[test]
    fn replies_carry_their_code_and_an_unspecified_address() {
        assert_eq!(reply(ReplyCode::NotAllowed), [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply(ReplyCode::Succeeded)[1], 0);
    }
}
