//! `amqp-bridge forward`: every TCP client on a local port is carried to
//! a served queue.

use crate::carry::abort::abort_tcp;
use crate::carry::broker_stream;
use crate::carry::link::BrokerLink;
use crate::carry::metered::Metered;
use crate::carry::splice::splice;
use crate::cli::ForwardArgs;
use crate::fatal::Fatal;
use crate::front::door::FrontDoor;
use crate::service::single;
use crate::tunnel::Tunnel;
use crate::tunnel::conn_log::ConnectionLog;
use crate::tunnel::connections::ConnectionGuard;
use crate::tunnel::metrics::TunnelMetrics;
use amqp_stream::secure::ClientConfig;
use log::info;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

/// Forwards `args.listen` to `args.queue` until SIGINT/SIGTERM.
pub fn run(url: &str, args: &ForwardArgs) -> Result<(), Fatal> {
    single::run("forward", &args.queue, &args.metrics, |metrics| {
        start(url, args, metrics)
    })
}

/// Starts forwarding `args.listen` to `args.queue` as a tunnel counted
/// in `metrics`.
pub fn start(url: &str, args: &ForwardArgs, metrics: Arc<TunnelMetrics>) -> Result<Tunnel, Fatal> {
    let secure = args.keys.load()?;
    let front = FrontDoor::open(url, &args.listen.0, metrics)?;
    info!(
        "forwarding {} to queue {:?}",
        front.local_addr(),
        args.queue
    );
    let queue = args.queue.clone();
    front.start(args.stop.grace, move |link, client, peer, guard| {
        forward(link, &queue, secure.as_ref(), client, peer, guard)
    })
}

fn forward(
    link: &BrokerLink,
    queue: &str,
    secure: Option<&ClientConfig>,
    client: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
) {
    let log = ConnectionLog::open(guard, peer.to_string(), format!("queue {queue:?}"));
    let _ = client.set_nodelay(true);
    let stream = link
        .connect(queue)
        .and_then(|stream| broker_stream::connect(stream, secure));
    match stream {
        Ok(stream) => {
            log.connected();
            let client = Metered::new(client, log.byte_counters());
            let transfer = splice(client, stream, |abort| log.on_abort(abort));
            log.closed(&transfer);
        }
        // Reset, as a TCP client of a server that is not there would be.
        Err(err) => {
            abort_tcp(&client);
            log.failed(&err);
        }
    }
}
