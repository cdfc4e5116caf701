//! Abortive closes: how the bridge passes a reset on. A TCP connection is
//! reset (RST) and a stream is reset towards its peer once the last
//! handle to it is dropped; a real end of data travels as a FIN instead.
//!
//! Every TCP connection the bridge holds is abortive from the start
//! (clients as they are accepted, targets as they are connected) and made
//! orderly ([`settle_tcp`]) only where it ends normally: a bridge that
//! dies (a signal it cannot handle, SIGKILL) leaves its connections
//! reset, never cut short with a clean end of data.

use amqp_stream::Stream;
use std::net::TcpStream;
use std::time::Duration;

/// Makes closing `tcp` abortive: once its last handle is dropped the
/// peer gets a RST (SO_LINGER 0), and its reads fail with
/// `ConnectionReset`, as when a TCP server dies. Shutting down with
/// `Shutdown::Write` first would send a FIN: do not.
pub fn abort_tcp(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// Makes closing `tcp` orderly again (after [`abort_tcp`]): once its last
/// handle is dropped, what was written is sent, then a FIN. For a
/// connection that ended normally, or one answered and closed on purpose.
pub fn settle_tcp(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(None);
}

/// Makes closing `stream` abortive: once its last handle is dropped the
/// peer's reads and writes fail with `ConnectionReset` (linger 0).
pub fn abort_stream(stream: &Stream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}
