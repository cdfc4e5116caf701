//! What a secured connection needs of the connection under it besides
//! `Read` and `Write`: timeouts (so a handshake cannot hang), handles
//! for other threads, and a half-close.

use crate::Stream;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// A connection with the socket-like calls a [`SecureStream`] uses:
/// [`TcpStream`], [`UnixStream`](std::os::unix::net::UnixStream) and
/// [`Stream`] have it; implement it for any other `Read + Write`.
///
/// [`SecureStream`]: super::SecureStream
///
/// ```
/// use amqp_stream::secure::Channel;
/// use std::net::{TcpListener, TcpStream};
/// use std::time::Duration;
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let tcp = TcpStream::connect(listener.local_addr()?)?;
/// Channel::set_read_timeout(&tcp, Some(Duration::from_secs(1)))?;
/// let other = Channel::try_clone(&tcp)?;
/// # let _ = other;
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Channel: Read + Write + Sized {
    /// Bounds how long a read blocks (`None`: forever); a read that
    /// runs out of time fails with `WouldBlock` or `TimedOut`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Bounds how long a write blocks (`None`: forever).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Another handle to the same connection (for another thread).
    fn try_clone(&self) -> io::Result<Self>;
    /// Shuts one direction or both down, as `TcpStream::shutdown` does.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Channel for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

#[cfg(unix)]
impl Channel for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, timeout)
    }
    fn try_clone(&self) -> io::Result<Self> {
        std::os::unix::net::UnixStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        std::os::unix::net::UnixStream::shutdown(self, how)
    }
}

impl Channel for Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Stream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Stream::set_write_timeout(self, timeout)
    }
    fn try_clone(&self) -> io::Result<Self> {
        Stream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        Stream::shutdown(self, how)
    }
}
