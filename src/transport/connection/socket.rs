//! The socket an AMQP connection runs on: TCP opened here (with
//! `TCP_NODELAY`), TLS over it for `amqps://`, and the password put in
//! place of its mask as the login goes out (see `password_swap`).
//!
//! amiquip drives it from its I/O thread through mio 0.6, non-blocking;
//! the TLS handshake is done before that, blocking, within the login's
//! deadline, so amiquip only ever sees an established stream.

use super::password_swap::PasswordSwap;
use mio::{Evented, Poll, PollOpt, Ready, Token};
use std::io::{self, Read, Write};

/// A broker connection's socket, handed to amiquip.
pub(crate) struct BrokerSocket {
    transport: Transport,
    swap: Option<PasswordSwap>,
}

enum Transport {
    Plain(mio::net::TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<native_tls::TlsStream<SocketIo>>),
}

impl BrokerSocket {
    /// A plain TCP connection; `swap` puts the password in the login.
    pub(crate) fn plain(
        socket: std::net::TcpStream,
        swap: Option<PasswordSwap>,
    ) -> io::Result<BrokerSocket> {
        Ok(BrokerSocket {
            transport: Transport::Plain(mio::net::TcpStream::from_stream(socket)?),
            swap,
        })
    }

    /// TLS over `tls`'s socket, its handshake done blocking; the socket
    /// turns non-blocking for amiquip here.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(
        mut tls: native_tls::TlsStream<SocketIo>,
        swap: Option<PasswordSwap>,
    ) -> io::Result<BrokerSocket> {
        tls.get_mut().make_evented()?;
        Ok(BrokerSocket {
            transport: Transport::Tls(Box::new(tls)),
            swap,
        })
    }

    fn evented(&self) -> &mio::net::TcpStream {
        match &self.transport {
            Transport::Plain(socket) => socket,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.get_ref().evented(),
        }
    }

    fn write_raw(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.transport {
            Transport::Plain(socket) => socket.write(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write(buf),
        }
    }
}

impl Read for BrokerSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.transport {
            Transport::Plain(socket) => socket.read(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for BrokerSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(mut swap) = self.swap.take() else {
            return self.write_raw(buf);
        };
        let outgoing = swap.outgoing(buf);
        let written = self.write_raw(&outgoing);
        if let Ok(n) = written {
            swap.wrote(n);
        }
        if !swap.done() {
            self.swap = Some(swap);
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.transport {
            Transport::Plain(socket) => socket.flush(),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

impl Evented for BrokerSocket {
    fn register(&self, poll: &Poll, token: Token, ready: Ready, opts: PollOpt) -> io::Result<()> {
        self.evented().register(poll, token, ready, opts)
    }

    fn reregister(&self, poll: &Poll, token: Token, ready: Ready, opts: PollOpt) -> io::Result<()> {
        self.evented().reregister(poll, token, ready, opts)
    }

    fn deregister(&self, poll: &Poll) -> io::Result<()> {
        self.evented().deregister(poll)
    }
}

impl amiquip::IoStream for BrokerSocket {}

/// The TCP socket under TLS: blocking (with timeouts) for the handshake,
/// then mio's non-blocking stream for amiquip. (A mio 0.6 socket belongs
/// to the first `Poll` it joins, amiquip's, so the handshake cannot
/// wait on a `Poll` of its own.)
#[cfg(feature = "tls")]
pub(crate) enum SocketIo {
    Blocking(std::net::TcpStream),
    Evented(mio::net::TcpStream),
    /// Only while turning from one into the other.
    Moving,
}

#[cfg(feature = "tls")]
impl SocketIo {
    fn make_evented(&mut self) -> io::Result<()> {
        if let SocketIo::Blocking(socket) = std::mem::replace(self, SocketIo::Moving) {
            socket.set_read_timeout(None)?;
            socket.set_write_timeout(None)?;
            *self = SocketIo::Evented(mio::net::TcpStream::from_stream(socket)?);
        }
        Ok(())
    }

    fn evented(&self) -> &mio::net::TcpStream {
        match self {
            SocketIo::Evented(socket) => socket,
            // `BrokerSocket::tls` made it evented before amiquip saw it.
            SocketIo::Blocking(_) | SocketIo::Moving => {
                unreachable!("a TLS socket is given to amiquip only once evented")
            }
        }
    }
}

#[cfg(feature = "tls")]
impl Read for SocketIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SocketIo::Blocking(socket) => socket.read(buf),
            SocketIo::Evented(socket) => socket.read(buf),
            SocketIo::Moving => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

#[cfg(feature = "tls")]
impl Write for SocketIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SocketIo::Blocking(socket) => socket.write(buf),
            SocketIo::Evented(socket) => socket.write(buf),
            SocketIo::Moving => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SocketIo::Blocking(socket) => socket.flush(),
            SocketIo::Evented(socket) => socket.flush(),
            SocketIo::Moving => Ok(()),
        }
    }
}
