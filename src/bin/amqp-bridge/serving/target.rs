//! The TCP service that `serve` connects streams to.

use crate::carry::abort::abort_tcp;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A `HOST:PORT` that resolved when the bridge started (it is resolved
/// again for each connection, so DNS changes are followed).
#[derive(Debug, Clone)]
pub struct Target {
    address: String,
}

impl Target {
    /// Checks that `address` is a `HOST:PORT` that resolves.
    pub fn parse(address: &str) -> Result<Target, String> {
        match address.to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(_)) => Ok(Target {
                address: address.to_string(),
            }),
            Ok(None) => Err(format!(
                "bad target address {address:?}: it resolves to no address"
            )),
            Err(err) => Err(format!(
                "bad target address {address:?}: {err} (expected HOST:PORT)"
            )),
        }
    }

    /// Opens a TCP connection to the target, with no-delay set (the
    /// bridge forwards what it reads at once).
    pub fn connect(&self) -> io::Result<TcpStream> {
        let mut last_error = None;
        for addr in self.address.to_socket_addrs()? {
            match connect_to(addr) {
                Ok(socket) => return Ok(socket),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the target resolves to no address")
        }))
    }
}

/// Opens a TCP connection to `addr`, with no-delay set, abortive until
/// it ends normally (see [`abort`](crate::carry::abort)).
pub fn connect_to(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    socket.set_nodelay(true)?;
    abort_tcp(&socket);
    Ok(socket)
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_port_are_refused() {
        assert!(Target::parse("127.0.0.1:22").is_ok());
        assert!(
            Target::parse("127.0.0.1")
                .unwrap_err()
                .contains("HOST:PORT")
        );
        assert!(Target::parse("127.0.0.1:99999").is_err());
    }
}
