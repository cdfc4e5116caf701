//! `serve --allow`: each stream names its target in a target request;
//! the allow-list decides, and `serve` answers before any byte of the
//! target's goes back. A refused request gets its answer and no TCP
//! connection is made.

use crate::abort::{abort_stream, abort_tcp};
use crate::allow::{AllowList, Decision};
use crate::conn_log::ConnectionLog;
use crate::lifecycle::ConnectionGuard;
use crate::splice::splice;
use crate::target::connect_to;
use crate::target_request::{Reply, RequestError, read_request, write_answer};
use amqp_stream::{Addr, Stream};
use log::{debug, info, warn};
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a client may take to send its target request once its stream
/// is up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream: reads its target request, decides it with `allow`,
/// connects and splices, logging what happened under `guard`'s number.
pub fn serve_chosen(stream: Stream, peer: &Addr, allow: &AllowList, guard: ConnectionGuard) {
    let from = format!("stream {}", peer.queue());
    let id = guard.id();
    let read = stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(RequestError::Io)
        .and_then(|()| read_request(&mut &stream));
    let request = match read {
        Ok(request) => request,
        Err(err) => return refuse_unread(stream, &from, id, err),
    };
    if let Err(err) = stream.set_read_timeout(None) {
        warn!("#{id} {from}: {err}");
        abort_stream(&stream);
        return;
    }
    let addrs = match allow.decide(&request, resolve) {
        Decision::Connect(addrs) => addrs,
        Decision::Refuse(reply, why) => {
            warn!("#{id} refused: {from} asked for {request}: {reply}: {why}");
            answer_and_close(&stream, reply);
            return;
        }
    };
    let log = ConnectionLog::open(guard, from, request.to_string());
    let tcp = match connect_any(&addrs) {
        Ok(tcp) => tcp,
        Err(err) => {
            answer_and_close(&stream, Reply::for_connect_error(&err));
            log.failed(&err);
            return;
        }
    };
    // The answer goes ahead of anything the target says.
    if let Err(err) = write_answer(&mut &stream, Reply::Connected) {
        abort_tcp(&tcp);
        abort_stream(&stream);
        log.failed(&err);
        return;
    }
    let transfer = splice(stream, tcp, |abort| log.on_abort(abort));
    log.closed(&transfer);
}

/// A stream whose request could not be read: a request of another version
/// or a malformed one is answered; anything else (a plain `forward` at a
/// `serve --allow`, a timeout) is reset, as no request means no answer
/// the client would understand.
fn refuse_unread(stream: Stream, from: &str, id: u64, err: RequestError) {
    match &err {
        RequestError::Version(_) => {
            warn!("#{id} refused: {from}: {err}");
            answer_and_close(&stream, Reply::UnsupportedVersion);
        }
        RequestError::Malformed(_) => {
            warn!("#{id} refused: {from}: {err}");
            answer_and_close(&stream, Reply::BadRequest);
        }
        RequestError::Io(io) if io.kind() == ErrorKind::UnexpectedEof => {
            info!("#{id} {from} ended before its target request");
            abort_stream(&stream);
        }
        RequestError::Io(io)
            if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            warn!(
                "#{id} refused: {from}: no target request within {REQUEST_TIMEOUT:?} \
                 (this serve runs with --allow, for `amqp-bridge socks`; a plain forward \
                 or connect needs a serve with --to)"
            );
            abort_stream(&stream);
        }
        RequestError::NotARequest | RequestError::Io(_) => {
            warn!("#{id} refused: {from}: {err}");
            abort_stream(&stream);
        }
    }
}

/// Answers `reply` and ends the stream cleanly: the answer is the
/// explanation.
fn answer_and_close(stream: &Stream, reply: Reply) {
    let sent = write_answer(&mut &*stream, reply).and_then(|()| stream.shutdown(Shutdown::Write));
    if let Err(err) = sent {
        debug!("answering {reply}: {err}");
        abort_stream(stream);
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
