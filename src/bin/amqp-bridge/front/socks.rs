//! `amqp-bridge socks`: a SOCKS5 proxy whose connections go through a
//! served queue. Each CONNECT becomes a stream to the queue carrying a
//! target request; `serve --allow` connects the target (or refuses), and
//! its answer becomes the SOCKS reply.

use crate::args::{ListenAddress, MetricsArgs, ServiceArgs, listen_address, queue_name};
use crate::carry::abort::{abort_tcp, settle_tcp};
use crate::carry::address::BrokerAddress;
use crate::carry::broker_stream;
use crate::carry::deadline::ByDeadline;
use crate::carry::link::BrokerLink;
use crate::carry::metered::Metered;
use crate::carry::splice::{Duplex, splice};
use crate::carry::target_request::{AnswerError, Reply, ask};
use crate::fatal::Fatal;
use crate::front::door::FrontDoor;
use crate::front::door::{client_keys, reloader};
use crate::front::socks5::{Command, ReplyCode, is_client_gone, read_greeting_and_request, reply};
use crate::keys::live::LiveKeys;
use crate::keys::options::ClientKeyArgs;
use crate::tunnel::Tunnel;
use crate::tunnel::conn_log::ConnectionLog;
use crate::tunnel::connections::ConnectionGuard;
use crate::tunnel::metrics::TunnelMetrics;
use amqp_stream::secure::ClientConfig;
use clap::Args;
use log::{debug, info};
use std::io::{self, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long a SOCKS client may take over its greeting and request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `serve` may take to answer a target request: its connect
/// timeout (10 s) and more.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `socks`'s options.
#[derive(Debug, Args)]
pub struct SocksArgs {
    /// The local address to accept SOCKS5 clients on (port 0: any free
    /// port)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub listen: ListenAddress,
    /// The queue served with `serve --allow` that connects the targets
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Starts the SOCKS5 proxy on `args.listen` as a tunnel counted in
/// `metrics`.
pub fn start(
    broker: &BrokerAddress,
    args: &SocksArgs,
    metrics: Arc<TunnelMetrics>,
) -> Result<Tunnel, Fatal> {
    let secure = args.keys.live()?.map(Arc::new);
    let front = FrontDoor::open(broker, &args.listen.0, metrics, args.service.fail_fast)?;
    info!(
        "SOCKS5 proxy on {}: every CONNECT goes to queue {:?}",
        front.local_addr(),
        args.queue
    );
    let queue = args.queue.clone();
    let reload = secure.clone();
    let tunnel = front.start(args.service.grace, move |link, client, peer, guard| {
        serve_client(link, &queue, secure.as_deref(), client, peer, guard)
    })?;
    Ok(match reload {
        Some(live) => tunnel.with_reloader(reloader(live)),
        None => tunnel,
    })
}

/// The SOCKS5 reply for `serve`'s answer.
pub fn reply_code(answer: Reply) -> ReplyCode {
    match answer {
        Reply::Connected => ReplyCode::Succeeded,
        Reply::NotAllowed => ReplyCode::NotAllowed,
        Reply::NetworkUnreachable => ReplyCode::NetworkUnreachable,
        Reply::HostUnreachable => ReplyCode::HostUnreachable,
        Reply::ConnectionRefused => ReplyCode::ConnectionRefused,
        Reply::TimedOut => ReplyCode::TtlExpired,
        Reply::GeneralFailure | Reply::BadRequest | Reply::UnsupportedVersion => {
            ReplyCode::GeneralFailure
        }
    }
}

fn serve_client(
    link: &BrokerLink,
    queue: &str,
    secure: Option<&LiveKeys<ClientConfig>>,
    client: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
) {
    let _ = client.set_nodelay(true);
    // The whole greeting and request within the time, however slowly
    // they trickle in.
    let request =
        read_greeting_and_request(&mut ByDeadline::new(&client, HANDSHAKE_TIMEOUT, |limit| {
            client.set_read_timeout(limit)
        }));
    let request = match request {
        Ok(request) => request,
        Err(err) if is_client_gone(&err) => {
            debug!("{peer} went away before its SOCKS5 request: {err}");
            return;
        }
        // Answered where SOCKS5 has an answer for it: that goes out.
        Err(err) => {
            info!("{peer}: {err}");
            settle_tcp(&client);
            return;
        }
    };
    if let Command::Other(command) = request.command {
        info!("{peer}: SOCKS5 command {command} is not supported (only CONNECT)");
        answer_and_close(&client, ReplyCode::CommandNotSupported);
        return;
    }
    if let Err(err) = client.set_read_timeout(None) {
        debug!("{peer}: {err}");
        return;
    }
    let target = request.target;
    let log = ConnectionLog::open(
        guard,
        peer.to_string(),
        format!("{target} via queue {queue:?}"),
    );
    // The secure handshake, when there is one, goes before the request.
    let stream = link.connect(queue).and_then(|stream| {
        let keys = client_keys(secure)?;
        broker_stream::connect(stream, keys.as_deref())
    });
    let stream = match stream {
        Ok(stream) => stream,
        Err(err) => {
            answer_and_close(&client, ReplyCode::GeneralFailure);
            log.failed(&err);
            return;
        }
    };
    let limited = stream.stream();
    let answer = limited
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(AnswerError::Io)
        .and_then(|()| ask(&mut &stream, &target))
        .and_then(|answer| {
            limited.set_read_timeout(None)?;
            Ok(answer)
        });
    match answer {
        Ok(Reply::Connected) => {
            if let Err(err) = (&client).write_all(&reply(ReplyCode::Succeeded)) {
                stream.abort();
                abort_tcp(&client);
                log.failed(&err);
                return;
            }
            log.connected();
            let client = Metered::new(client, log.byte_counters());
            let transfer = splice(client, stream, |abort| log.on_abort(abort));
            log.closed(&transfer);
        }
        Ok(refused) => {
            answer_and_close(&client, reply_code(refused));
            log.failed_because(
                refused.reason(),
                &io::Error::other(format!("serve answered: {refused}")),
            );
        }
        Err(err) => {
            // Whatever came back is not for the client: the stream is
            // reset and the client told the proxy failed.
            stream.abort();
            answer_and_close(&client, ReplyCode::GeneralFailure);
            let kind = match &err {
                AnswerError::Io(io) => io.kind(),
                _ => ErrorKind::InvalidData,
            };
            log.failed(&io::Error::new(kind, err.to_string()));
        }
    }
}

/// Sends the SOCKS reply `code` and closes the client's connection.
fn answer_and_close(client: &TcpStream, code: ReplyCode) {
    settle_tcp(client);
    let mut client = client;
    if client.write_all(&reply(code)).is_ok() {
        let _ = client.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_maps_to_its_socks_reply() {
        let cases = [
            (Reply::Connected, 0),
            (Reply::GeneralFailure, 1),
            (Reply::NotAllowed, 2),
            (Reply::NetworkUnreachable, 3),
            (Reply::HostUnreachable, 4),
            (Reply::ConnectionRefused, 5),
            (Reply::TimedOut, 6),
            (Reply::BadRequest, 1),
            (Reply::UnsupportedVersion, 1),
        ];
        for (answer, code) in cases {
            assert_eq!(reply_code(answer) as u8, code, "{answer}");
        }
    }
}
