//! `amqp-bridge http`: an HTTP/1.x front door. The first request of each
//! connection names the server queue in the `X-AMQP-Server-Queue` header;
//! the whole connection (that request included, unchanged) then goes
//! through a stream to that queue.

use crate::args::{ListenAddress, MetricsArgs, ServiceArgs, listen_address};
use crate::carry::abort::{abort_tcp, settle_tcp};
use crate::carry::address::BrokerAddress;
use crate::carry::broker_stream;
use crate::carry::link::BrokerLink;
use crate::carry::metered::Metered;
use crate::carry::splice::splice;
use crate::fatal::Fatal;
use crate::front::door::FrontDoor;
use crate::front::door::{client_keys, reloader};
use crate::keys::live::LiveKeys;
use crate::keys::options::ClientKeyArgs;
use crate::tunnel::Tunnel;
use crate::tunnel::conn_log::ConnectionLog;
use crate::tunnel::connections::ConnectionGuard;
use crate::tunnel::metrics::TunnelMetrics;
use amqp_stream::secure::ClientConfig;
use clap::Args;
use log::{debug, info};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The request header that names the server queue.
pub const QUEUE_HEADER: &str = "X-AMQP-Server-Queue";
/// The largest request head accepted (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers parsed at most.
const MAX_HEADERS: usize = 100;

/// `http`'s options.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The local address to accept HTTP clients on (port 0: any free port)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub listen: ListenAddress,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Starts the HTTP front door on `args.listen` as a tunnel counted in
/// `metrics`.
pub fn start(
    broker: &BrokerAddress,
    args: &HttpArgs,
    metrics: Arc<TunnelMetrics>,
) -> Result<Tunnel, Fatal> {
    let secure = args.keys.live()?.map(Arc::new);
    let front = FrontDoor::open(broker, &args.listen.0, metrics, args.service.fail_fast)?;
    info!(
        "HTTP front door on {}: the {QUEUE_HEADER} header picks the queue",
        front.local_addr()
    );
    let reload = secure.clone();
    let tunnel = front.start(args.service.grace, move |link, client, peer, guard| {
        serve_client(link, secure.as_deref(), client, peer, guard)
    })?;
    Ok(match reload {
        Some(live) => tunnel.with_reloader(reloader(live)),
        None => tunnel,
    })
}

/// Why a request head cannot be forwarded, with the HTTP answer for it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, or without the queue header: `400`.
    BadRequest(String),
    /// The head does not fit in `MAX_HEAD`: `431`.
    TooLarge,
}

/// Looks at what the client sent so far: `Ok(None)` when the head is not
/// complete yet, else the server queue its header names.
pub fn queue_of(head: &[u8]) -> Result<Option<String>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => Err(Refusal::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let value = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(QUEUE_HEADER))
                .map(|h| h.value)
                .ok_or_else(|| {
                    Refusal::BadRequest(format!(
                        "missing {QUEUE_HEADER} header: it names the server queue to connect to"
                    ))
                })?;
            let queue = std::str::from_utf8(value)
                .map(str::trim)
                .ok()
                .filter(|q| !q.is_empty() && q.len() <= 255)
                .ok_or_else(|| {
                    Refusal::BadRequest(format!(
                        "bad {QUEUE_HEADER} header: a queue name is 1 to 255 bytes of UTF-8"
                    ))
                })?;
            Ok(Some(queue.to_string()))
        }
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::TooLarge),
        Err(err) => Err(Refusal::BadRequest(format!(
            "malformed HTTP request: {err}"
        ))),
    }
}

/// A complete HTTP/1.1 answer with a plain-text body; the connection
/// closes after it.
pub fn response(status: u16, reason: &str, message: &str) -> Vec<u8> {
    let body = format!("{message}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve_client(
    link: &BrokerLink,
    secure: Option<&LiveKeys<ClientConfig>>,
    mut client: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
) {
    let _ = client.set_nodelay(true);
    let (head, queue) = match read_head(&mut client) {
        Ok(Some(found)) => found,
        Ok(None) => {
            debug!("{peer} closed before sending a request");
            return;
        }
        Err(Answer(status, reason, message)) => {
            info!("{peer}: answered {status} {reason}: {message}");
            guard.metrics().refused(&format!("http_{status}"));
            settle_tcp(&client);
            let _ = client.write_all(&response(status, reason, &message));
            let _ = client.shutdown(std::net::Shutdown::Write);
            return;
        }
    };
    let log = ConnectionLog::open(guard, peer.to_string(), format!("queue {queue:?}"));
    let stream = link.connect(&queue).and_then(|stream| {
        let keys = client_keys(secure)?;
        broker_stream::connect(stream, keys.as_deref())
    });
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(err) => {
            let (status, reason) = match err.kind() {
                ErrorKind::TimedOut => (504, "Gateway Timeout"),
                _ => (502, "Bad Gateway"),
            };
            settle_tcp(&client);
            let _ = client.write_all(&response(status, reason, &err.to_string()));
            let _ = client.shutdown(std::net::Shutdown::Write);
            log.failed(&err);
            return;
        }
    };
    match stream.write_all(&head) {
        Ok(()) => {
            log.connected();
            let counters = log.byte_counters();
            counters.0.fetch_add(head.len() as u64, Ordering::Relaxed);
            let client = Metered::new(client, counters);
            let mut transfer = splice(client, stream, |abort| log.on_abort(abort));
            transfer.forth += head.len() as u64;
            log.closed(&transfer);
        }
        Err(err) => {
            abort_tcp(&client);
            log.failed(&err);
        }
    }
}

/// An HTTP error answer: status, reason phrase, message.
struct Answer(u16, &'static str, String);

/// Reads until the request head is complete: the bytes read (the head
/// and maybe more) and the queue; `None` if the client closed first.
fn read_head(client: &mut TcpStream) -> Result<Option<(Vec<u8>, String)>, Answer> {
    let timed_out = |_| {
        Answer(
            408,
            "Request Timeout",
            "no complete request head in time".into(),
        )
    };
    client
        .set_read_timeout(Some(HEAD_TIMEOUT))
        .map_err(timed_out)?;
    let mut head = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(read_failure(err)),
        };
        head.extend_from_slice(&buf[..n]);
        match queue_of(&head) {
            Ok(Some(queue)) => {
                client.set_read_timeout(None).map_err(timed_out)?;
                return Ok(Some((head, queue)));
            }
            Ok(None) => {}
            Err(Refusal::BadRequest(message)) => return Err(Answer(400, "Bad Request", message)),
            Err(Refusal::TooLarge) => {
                return Err(Answer(
                    431,
                    "Request Header Fields Too Large",
                    format!("the request head is over {MAX_HEAD} bytes or {MAX_HEADERS} headers"),
                ));
            }
        }
    }
}

fn read_failure(err: io::Error) -> Answer {
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Answer(
            408,
            "Request Timeout",
            "no complete request head in time".into(),
        ),
        _ => Answer(400, "Bad Request", err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_queue_header_in_any_case() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nx-amqp-server-queue:  web \r\n\r\n";
        assert_eq!(queue_of(head), Ok(Some("web".to_string())));
    }

    #[test]
    fn waits_for_the_rest_of_the_head() {
        assert_eq!(queue_of(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(queue_of(b""), Ok(None));
    }

    #[test]
    fn a_missing_or_empty_header_is_a_bad_request() {
        let missing = queue_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
        assert!(matches!(missing, Refusal::BadRequest(m) if m.contains(QUEUE_HEADER)));
        let empty = queue_of(b"GET / HTTP/1.1\r\nX-AMQP-Server-Queue: \r\n\r\n").unwrap_err();
        assert!(matches!(empty, Refusal::BadRequest(_)));
    }

    #[test]
    fn garbage_is_a_bad_request_and_endless_heads_are_too_large() {
        assert!(matches!(
            queue_of(b"\x00\x01 nonsense\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
        let mut endless = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        endless.resize(MAX_HEAD, b'a');
        assert_eq!(queue_of(&endless), Err(Refusal::TooLarge));
    }

    #[test]
    fn responses_are_complete_http() {
        let text = String::from_utf8(response(400, "Bad Request", "no header")).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("Content-Length: 10\r\n"));
        assert!(text.ends_with("\r\n\r\nno header\n"));
    }
}
