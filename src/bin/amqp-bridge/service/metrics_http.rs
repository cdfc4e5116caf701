//! `--metrics ADDR`: the tunnels' counters over HTTP, in the Prometheus
//! text format, at `/metrics`.

use crate::fatal::Fatal;
use crate::tunnel::metrics::{TunnelMetrics, render};
use log::{debug, info};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// What the endpoint shows: the tunnels of the moment.
pub type Source = Arc<dyn Fn() -> Vec<Arc<TunnelMetrics>> + Send + Sync>;

/// Listens on `listen` (a port in use is exit code 5) and answers each
/// scrape with what `source` gives, on a thread of its own, for the
/// rest of the process's life. Returns the address bound.
pub fn serve(listen: &[SocketAddr], source: Source) -> Result<SocketAddr, Fatal> {
    let listener = TcpListener::bind(listen).map_err(|err| {
        let shown: Vec<String> = listen.iter().map(ToString::to_string).collect();
        Fatal::bind(
            err,
            &format!("cannot serve metrics on {}", shown.join(", ")),
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Fatal::runtime(e.to_string()))?;
    std::thread::Builder::new()
        .name("metrics".to_string())
        .spawn(move || {
            for client in listener.incoming() {
                match client {
                    Ok(client) => answer(client, &source),
                    Err(err) => debug!("metrics endpoint: {err}"),
                }
            }
        })
        .map_err(|e| Fatal::runtime(e.to_string()))?;
    info!("metrics on http://{local}/metrics");
    Ok(local)
}

/// Answers one request (then closes): the metrics for `GET /metrics`.
fn answer(mut client: TcpStream, source: &Source) {
    let _ = client.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = client.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let path = loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break (request.method, request.path.map(str::to_string));
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_REQUEST => {}
            _ => break (None, None),
        }
    };
    let (status, body) = match path {
        (Some("GET"), Some(path)) if path == "/metrics" || path.starts_with("/metrics?") => {
            ("200 OK", render(&source()))
        }
        (Some(_), Some(_)) => ("404 Not Found", "the metrics are at /metrics\n".to_string()),
        _ => ("400 Bad Request", "malformed request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes());
}
