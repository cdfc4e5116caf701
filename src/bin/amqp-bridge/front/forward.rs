//! `amqp-bridge forward`: every TCP client on a local port is carried to
//! a served queue.

use crate::args::{ListenAddress, MetricsArgs, ServiceArgs, listen_address, queue_name};
use crate::carry::abort::abort_tcp;
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
use log::info;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

/// `forward`'s options.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// The local address to accept TCP clients on (port 0: any free port)
    #[arg(long, value_name = "ADDR:PORT", value_parser = listen_address)]
    pub listen: ListenAddress,
    /// The queue that serves the far end
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Starts forwarding `args.listen` to `args.queue` as a tunnel counted
/// in `metrics`.
pub fn start(
    broker: &BrokerAddress,
    args: &ForwardArgs,
    metrics: Arc<TunnelMetrics>,
) -> Result<Tunnel, Fatal> {
    let secure = args.keys.live()?.map(Arc::new);
    let front = FrontDoor::open(broker, &args.listen.0, metrics, args.service.fail_fast)?;
    info!(
        "forwarding {} to queue {:?}",
        front.local_addr(),
        args.queue
    );
    let queue = args.queue.clone();
    let reload = secure.clone();
    let tunnel = front.start(args.service.grace, move |link, client, peer, guard| {
        forward(link, &queue, secure.as_deref(), client, peer, guard)
    })?;
    Ok(match reload {
        Some(live) => tunnel.with_reloader(reloader(live)),
        None => tunnel,
    })
}

fn forward(
    link: &BrokerLink,
    queue: &str,
    secure: Option<&LiveKeys<ClientConfig>>,
    client: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
) {
    let log = ConnectionLog::open(guard, peer.to_string(), format!("queue {queue:?}"));
    let _ = client.set_nodelay(true);
    let stream = link.connect(queue).and_then(|stream| {
        let keys = client_keys(secure)?;
        broker_stream::connect(stream, keys.as_deref())
    });
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
