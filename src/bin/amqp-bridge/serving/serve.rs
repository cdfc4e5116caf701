//! `amqp-bridge serve`: every stream accepted on a queue is connected to
//! a TCP service: the fixed `--to`, or (with `--allow`) the one the
//! stream's target request names.

use crate::args::{MetricsArgs, ServiceArgs, queue_name};
use crate::carry::abort::abort_stream;
use crate::carry::address::BrokerAddress;
use crate::carry::backoff::{Backoff, RetryLog};
use crate::carry::broker_stream::{self, BrokerStream};
use crate::carry::link::BrokerLink;
use crate::carry::metered::Metered;
use crate::carry::splice::{Duplex, splice};
use crate::carry::target_request::RefuseTargetRequest;
use crate::fatal::Fatal;
use crate::keys::options::ServeKeyArgs;
use crate::serving::admission::{Admission, Held};
use crate::serving::allow::AllowList;
use crate::serving::allow::AllowRule;
use crate::serving::chosen_target::serve_chosen;
use crate::serving::target::Target;
use crate::tunnel::Tunnel;
use crate::tunnel::conn_log::ConnectionLog;
use crate::tunnel::connections::Connections;
use crate::tunnel::metrics::TunnelMetrics;
use amqp_stream::{Addr, Listener, Stream, StreamOptions};
use clap::{ArgGroup, Args};
use crossbeam_channel::{Receiver, bounded};
use log::{debug, info, warn};
use std::fmt;
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long `serve` retries a queue that is in use when it starts: the
/// exclusive queue of a `serve` that just stopped may still be being
/// deleted by the broker.
const IN_USE_RETRY: Duration = Duration::from_secs(5);

/// How often a `serve` whose broker connection is down looks whether it
/// is up again, to bind its queue.
const LINK_POLL: Duration = Duration::from_millis(100);

/// `serve`'s options.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("route").required(true).args(["to", "allow"])))]
pub struct ServeArgs {
    /// The queue to serve (clients name it to reach the service)
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    /// The TCP service every stream is connected to (or --allow)
    #[arg(long, value_name = "HOST:PORT", value_parser = Target::parse)]
    pub to: Option<Target>,
    /// Instead of --to: each stream names its target (`amqp-bridge
    /// socks`), connected only when a rule allows it (repeatable; see
    /// below)
    #[arg(long, value_name = "HOST:PORTS", value_parser = AllowRule::parse)]
    pub allow: Vec<AllowRule>,
    /// Share the queue with other `serve --shared` processes: the broker
    /// spreads new streams over those ready for one, and a process that
    /// dies leaves the stream it was about to take to the others
    #[arg(long)]
    pub shared: bool,
    /// With --shared, on a RabbitMQ cluster: the queue is a quorum queue
    /// replicated over the nodes, so that serving goes on, and the streams
    /// waiting for a server are kept, when a node goes down
    #[arg(long, requires = "shared")]
    pub replicated: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub keys: ServeKeyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Starts serving `args.queue` as a tunnel counted in `metrics`. The
/// queue is bound before this returns when the broker can be reached;
/// otherwise (unless `--fail-fast`) once it can.
pub fn start(
    broker: &BrokerAddress,
    args: &ServeArgs,
    metrics: Arc<TunnelMetrics>,
) -> Result<Tunnel, Fatal> {
    let keys = args.keys.live()?;
    let link = BrokerLink::open(broker, metrics.reconnect_counter(), args.service.fail_fast)
        .map_err(Fatal::broker)?;
    let (wake_tx, wake) = bounded(0);
    let connections = Connections::new(Arc::clone(&metrics));
    let admission = keys.map(|keys| Admission::start(keys, Arc::clone(&connections)));
    let server = Arc::new(Server {
        link: Arc::clone(&link),
        queue: args.queue.clone(),
        options: StreamOptions::new()
            .shared(args.shared)
            .replicated(args.replicated),
        route: Route::of(args),
        admission: admission.clone(),
        listening: Mutex::new(None),
        stopping: AtomicBool::new(false),
        wake,
        connections: Arc::clone(&connections),
    });
    let listener = if link.is_connected() {
        match server.bind_at_start() {
            Ok(listener) => Some(listener),
            Err(err) => {
                link.close();
                return Err(Fatal::bind(err, "cannot serve"));
            }
        }
    } else {
        info!(
            "queue {:?} is served once the broker can be reached",
            args.queue
        );
        None
    };

    let accepting = Arc::clone(&server);
    let accept = std::thread::Builder::new()
        .name("accept".to_string())
        .spawn(move || accepting.accept_until_stopped(listener));
    let accept = match accept {
        Ok(accept) => accept,
        Err(err) => {
            server.listening().take();
            link.close();
            return Err(Fatal::runtime(err.to_string()));
        }
    };
    let stopper = move || {
        server.stopping.store(true, Ordering::SeqCst);
        drop(wake_tx);
        server.stop_accepting();
        // The listener goes, its queue with it: a `serve` started next
        // can take the queue at once.
        let _ = accept.join();
        server.listening().take();
    };
    let tunnel = Tunnel::new(
        metrics,
        connections,
        link,
        args.service.grace,
        Box::new(stopper),
    );
    Ok(match admission {
        Some(admission) => tunnel.with_reloader(Box::new(move || admission.reload())),
        None => tunnel,
    })
}

/// Where `serve` connects its streams.
#[derive(Clone)]
enum Route {
    /// Always to `--to`.
    Fixed(Target),
    /// Where each stream's target request asks, within `--allow`.
    Chosen(Arc<AllowList>),
}

impl Route {
    fn of(args: &ServeArgs) -> Route {
        match &args.to {
            Some(target) => Route::Fixed(target.clone()),
            None => Route::Chosen(Arc::new(AllowList::new(args.allow.clone()))),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Fixed(target) => write!(f, "{target}"),
            Route::Chosen(allow) => write!(f, "the targets they ask for, within --allow {allow}"),
        }
    }
}

struct Server {
    link: Arc<BrokerLink>,
    queue: String,
    options: StreamOptions,
    route: Route,
    /// The keys every stream's secure handshake must pass first, if any.
    admission: Option<Arc<Admission>>,
    /// The listener in use, for `stop_accepting` to close.
    listening: Mutex<Option<Arc<Listener>>>,
    /// Set when the tunnel stops accepting.
    stopping: AtomicBool,
    /// Disconnects when the tunnel stops: cuts a backoff short.
    wake: Receiver<()>,
    connections: Arc<Connections>,
}

impl Server {
    fn bind(&self) -> std::io::Result<Arc<Listener>> {
        let connector = self.link.connector(Some(Duration::ZERO))?;
        let listener = connector.bind_with(&self.queue, self.options.clone())?;
        info!(
            "serving queue {:?}{} on the broker at {}",
            self.queue,
            if self.options.get_shared() {
                " (shared)"
            } else {
                ""
            },
            connector.broker()
        );
        Ok(Arc::new(listener))
    }

    /// Binds the queue when `serve` starts. A queue in use is tried
    /// again for [`IN_USE_RETRY`]: it may be the exclusive queue of a
    /// `serve` that just stopped, which the broker is still deleting.
    fn bind_at_start(&self) -> io::Result<Arc<Listener>> {
        let deadline = Instant::now() + IN_USE_RETRY;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            match self.bind() {
                Err(err) if err.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                    let delay = backoff.next_delay();
                    debug!(
                        "queue {:?} in use: {err}; trying again in {delay:?}",
                        self.queue
                    );
                    std::thread::sleep(delay);
                }
                other => return other,
            }
        }
    }

    /// The listener in use, locked.
    fn listening(&self) -> MutexGuard<'_, Option<Arc<Listener>>> {
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the listener in use: the accepting thread's `accept` fails
    /// and it ends. A listener bound later is closed as it is watched.
    fn stop_accepting(&self) {
        if let Some(listener) = self.listening().as_ref() {
            listener.close();
        }
    }

    /// Makes `listener` the one `stop_accepting` closes; `false` (and
    /// closed) when the stop has already come.
    fn watch(&self, listener: &Arc<Listener>) -> bool {
        let mut listening = self.listening();
        // Under the lock: either we see the stop, or the stop sees this
        // listener.
        if self.stopping() {
            listener.close();
            return false;
        }
        *listening = Some(Arc::clone(listener));
        true
    }

    /// Accepts streams and hands each to its own thread; when the
    /// listener fails (the broker connection was lost), binds again once
    /// the link has reconnected. Without a listener (the broker could not
    /// be reached at start), binds first.
    fn accept_until_stopped(&self, listener: Option<Arc<Listener>>) {
        info!("streams on queue {:?} go to {}", self.queue, self.route);
        let Some(mut listener) = listener.or_else(|| self.bind_again()) else {
            info!("no longer serving queue {:?}", self.queue);
            return;
        };
        let mut watched = self.watch(&listener);
        while watched {
            match listener.accept() {
                // Connected before the stop, but not served: dropped, it
                // closes, as a TCP server's backlog is reset.
                Ok(_) if self.stopping() => break,
                Ok((stream, peer)) => self.start(stream, peer),
                Err(_) if self.stopping() => break,
                Err(err) => {
                    warn!("the listener on {:?} failed: {err}", self.queue);
                    let Some(again) = self.bind_again() else {
                        break;
                    };
                    listener = again;
                    watched = self.watch(&listener);
                }
            }
        }
        info!("no longer serving queue {:?}", self.queue);
    }

    /// Binds the queue again, retrying with backoff (the old exclusive
    /// queue may linger until the broker notices the old connection died).
    fn bind_again(&self) -> Option<Arc<Listener>> {
        let mut backoff = Backoff::reconnecting();
        let mut retries = RetryLog::new();
        while !self.stopping() {
            if !self.link.is_connected() {
                // The link says how its attempts go; a stop cuts the
                // wait short.
                let _ = self.wake.recv_timeout(LINK_POLL);
                continue;
            }
            match self.bind() {
                Ok(listener) => return Some(listener),
                Err(err) => {
                    let delay = backoff.next_delay();
                    let (level, note) = retries.failed();
                    log::log!(
                        level,
                        "cannot serve {:?} yet: {err}; next attempt in {delay:?}{note}",
                        self.queue
                    );
                    // Cut short when the tunnel stops.
                    let _ = self.wake.recv_timeout(delay);
                }
            }
        }
        None
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn start(&self, stream: Stream, peer: Addr) {
        let admission = self.admission.clone();
        let from = format!("stream {}", peer.queue());
        let spawned = match &self.route {
            Route::Chosen(allow) => {
                let (allow, guard) = (Arc::clone(allow), self.connections.enter());
                std::thread::Builder::new()
                    .name("serve".to_string())
                    .spawn(move || {
                        // A client without an accepted key ends here,
                        // reset, before its request is even read.
                        let (conn, _held) = match handshake(admission, stream, guard.id()) {
                            Ok(accepted) => accepted,
                            Err(err) => {
                                let log = ConnectionLog::open(guard, from, "a chosen target");
                                return log.refused(&err);
                            }
                        };
                        match conn.stream().try_clone() {
                            Ok(limited) => {
                                let read_limit = move |limit| limited.set_read_timeout(limit);
                                serve_chosen(conn, read_limit, &from, &allow, guard);
                            }
                            Err(err) => {
                                warn!("#{} {from}: {err}", guard.id());
                                conn.abort();
                            }
                        }
                    })
            }
            Route::Fixed(target) => {
                let log = ConnectionLog::open(self.connections.enter(), from, target.to_string());
                let target = target.clone();
                std::thread::Builder::new()
                    .name("serve".to_string())
                    .spawn(move || {
                        // A client without an accepted key ends here,
                        // reset, before anything connects to the target.
                        let (stream, _held) = match handshake(admission, stream, log.id()) {
                            Ok(accepted) => accepted,
                            Err(err) => return log.refused(&err),
                        };
                        match target.connect() {
                            Ok(tcp) => {
                                log.connected();
                                let tcp = Metered::new(tcp, log.byte_counters());
                                // A target request (a `socks` at the wrong
                                // serve) is refused, not passed to the target.
                                let stream = RefuseTargetRequest::new(stream);
                                let transfer = splice(stream, tcp, |abort| log.on_abort(abort));
                                log.closed(&transfer);
                            }
                            // Reset: the client sees what a refused TCP
                            // connection would give it, not an empty reply.
                            Err(err) => {
                                stream.abort();
                                drop(stream);
                                log.failed(&err);
                            }
                        }
                    })
            }
        };
        if let Err(err) = spawned {
            warn!("cannot start a thread for a stream: {err}");
        }
    }
}

/// The secure handshake of connection `id` when `admission` holds keys
/// (the stream plain otherwise): a client without an admitted key is
/// reset. The credential it proved is held until it ends, for its key to
/// be revoked.
fn handshake(
    admission: Option<Arc<Admission>>,
    stream: Stream,
    id: u64,
) -> io::Result<(BrokerStream, Option<Held>)> {
    let Some(admission) = admission else {
        return Ok((broker_stream::accept(stream, None)?, None));
    };
    let keys = match admission.keys() {
        Ok(keys) => keys,
        Err(err) => {
            abort_stream(&stream);
            return Err(err);
        }
    };
    let secured = broker_stream::accept(stream, Some(&keys.config))?;
    match admission.admit(id, keys.credential(secured.peer_key())) {
        Ok(held) => Ok((secured, Some(held))),
        Err(err) => {
            secured.abort();
            Err(err)
        }
    }
}
