//! `serve --allow`: each stream names its target in a target request;
//! the allow-list decides, and `serve` answers before any byte of the
//! target's goes back. A refused request gets its answer and no TCP
//! connection is made.

use crate::carry::abort::abort_tcp;
use crate::carry::deadline::ByDeadline;
use crate::carry::metered::Metered;
use crate::carry::splice::{Duplex, splice};
use crate::carry::target_request::{Reply, RequestError, read_request, write_answer};
use crate::serving::allow::{AllowList, Decision};
use crate::serving::target::connect_to;
use crate::tunnel::conn_log::ConnectionLog;
use crate::tunnel::connections::ConnectionGuard;
use log::{debug, info, warn};
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a client may take to send its target request once its stream
/// is up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection `from` a client (a stream, or the secure layer
/// over it): reads its target request, decides it with `allow`, connects
/// and splices, logging what happened under `guard`'s number.
/// `read_limit` bounds the reads of `conn` (the stream's read timeout).
pub fn serve_chosen<D: Duplex>(
    mut conn: D,
    read_limit: impl Fn(Option<Duration>) -> io::Result<()>,
    from: &str,
    allow: &AllowList,
    guard: ConnectionGuard,
) {
    let id = guard.id();
    // The whole request within the time, however slowly it trickles in.
    let read = read_request(&mut ByDeadline::new(
        &mut conn,
        REQUEST_TIMEOUT,
        &read_limit,
    ));
    let request = match read {
        Ok(request) => request,
        Err(err) => return refuse_unread(conn, from, id, err),
    };
    if let Err(err) = read_limit(None) {
        warn!("#{id} {from}: {err}");
        conn.abort();
        return;
    }
    // It may hold a handle to the connection: the splice's must be the
    // last ones.
    drop(read_limit);
    let addrs = match allow.decide(&request, resolve) {
        Decision::Connect(addrs) => addrs,
        Decision::Refuse(reply, why) => {
            warn!("#{id} refused: {from} asked for {request}: {reply}: {why}");
            guard.metrics().refused(reply.reason());
            answer_and_close(conn, reply);
            return;
        }
    };
    let log = ConnectionLog::open(guard, from, request.to_string());
    let tcp = match connect_any(&addrs) {
        Ok(tcp) => tcp,
        Err(err) => {
            let reply = Reply::for_connect_error(&err);
            answer_and_close(conn, reply);
            log.failed_because(reply.reason(), &err);
            return;
        }
    };
    // The answer goes ahead of anything the target says.
    if let Err(err) = write_answer(&mut conn, Reply::Connected) {
        abort_tcp(&tcp);
        conn.abort();
        log.failed(&err);
        return;
    }
    log.connected();
    let tcp = Metered::new(tcp, log.byte_counters());
    let transfer = splice(conn, tcp, |abort| log.on_abort(abort));
    log.closed(&transfer);
}

/// A stream whose request could not be read: a request of another version
/// or a malformed one is answered; anything else (a plain `forward` at a
/// `serve --allow`, a timeout) is reset, as no request means no answer
/// the client would understand.
fn refuse_unread<D: Duplex>(conn: D, from: &str, id: u64, err: RequestError) {
    match &err {
        RequestError::Version(_) => {
            warn!("#{id} refused: {from}: {err}");
            answer_and_close(conn, Reply::UnsupportedVersion);
        }
        RequestError::Malformed(_) => {
            warn!("#{id} refused: {from}: {err}");
            answer_and_close(conn, Reply::BadRequest);
        }
        RequestError::Io(io) if io.kind() == ErrorKind::UnexpectedEof => {
            info!("#{id} {from} ended before its target request");
            conn.abort();
        }
        RequestError::Io(io)
            if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            warn!(
                "#{id} refused: {from}: no target request within {REQUEST_TIMEOUT:?} \
                 (this serve runs with --allow, for `amqp-bridge socks`; a plain forward \
                 or connect needs a serve with --to)"
            );
            conn.abort();
        }
        RequestError::NotARequest | RequestError::Io(_) => {
            warn!("#{id} refused: {from}: {err}");
            conn.abort();
        }
    }
}

/// Answers `reply` and ends the connection cleanly: the answer is the
/// explanation.
fn answer_and_close<D: Duplex>(mut conn: D, reply: Reply) {
    let sent = write_answer(&mut conn, reply).and_then(|()| conn.finish());
    if let Err(err) = sent {
        debug!("answering {reply}: {err}");
        conn.abort();
    }
}

/// Looks `name` up (on this side, as `ssh -D` does).
fn resolve(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((name, port).to_socket_addrs()?.collect())
}

/// Connects to the first of `addrs` that answers; the last error if none
/// does.
fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last_error = None;
    for &addr in addrs {
        match connect_to(addr) {
            Ok(tcp) => return Ok(tcp),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::new(ErrorKind::NotFound, "no address to connect")))
}
