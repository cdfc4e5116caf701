//! `amqp-bridge serve`: every stream accepted on a queue is connected to
//! a TCP service: the fixed `--to`, or (with `--allow`) the one the
//! stream's target request names.

use crate::allow::AllowList;
use crate::backoff::Backoff;
use crate::broker_stream;
use crate::chosen_target::serve_chosen;
use crate::cli::ServeArgs;
use crate::conn_log::ConnectionLog;
use crate::fatal::Fatal;
use crate::lifecycle::Connections;
use crate::link::BrokerLink;
use crate::metered::Metered;
use crate::metrics::TunnelMetrics;
use crate::single;
use crate::splice::{Duplex, splice};
use crate::target::Target;
use crate::target_request::RefuseTargetRequest;
use crate::tunnel::Tunnel;
use amqp_stream::secure::ServerConfig;
use amqp_stream::{Addr, Listener, Stream, StreamOptions};
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

/// Serves `args.queue` until SIGINT/SIGTERM.
pub fn run(url: &str, args: &ServeArgs) -> Result<(), Fatal> {
    single::run("serve", &args.queue, &args.metrics, |metrics| {
        start(url, args, metrics)
    })
}

/// Starts serving `args.queue` as a tunnel counted in `metrics`.
pub fn start(url: &str, args: &ServeArgs, metrics: Arc<TunnelMetrics>) -> Result<Tunnel, Fatal> {
    let secure = args.keys.load()?.map(Arc::new);
    let link = BrokerLink::open(url, metrics.reconnect_counter()).map_err(Fatal::broker)?;
    let (wake_tx, wake) = bounded(0);
    let connections = Connections::new(Arc::clone(&metrics));
    let server = Arc::new(Server {
        link: Arc::clone(&link),
        queue: args.queue.clone(),
        options: StreamOptions::new().shared(args.shared),
        route: Route::of(args),
        secure,
        listening: Mutex::new(None),
        stopping: AtomicBool::new(false),
        wake,
        connections: Arc::clone(&connections),
    });
    let listener = match server.bind_at_start() {
        Ok(listener) => listener,
        Err(err) => {
            link.close();
            return Err(Fatal::bind(err, "cannot serve"));
        }
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
    Ok(Tunnel::new(
        metrics,
        connections,
        link,
        args.stop.grace,
        Box::new(stopper),
    ))
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
    /// The secure handshake every stream must pass first, if any.
    secure: Option<Arc<ServerConfig>>,
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
        let connector = self.link.connector(None)?;
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
    /// the link has reconnected.
    fn accept_until_stopped(&self, mut listener: Arc<Listener>) {
        info!("streams on queue {:?} go to {}", self.queue, self.route);
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
        while !self.stopping() {
            match self.bind() {
                Ok(listener) => return Some(listener),
                Err(err) => {
                    let delay = backoff.next_delay();
                    warn!(
                        "cannot serve {:?} yet: {err}; next attempt in {delay:?}",
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
        let secure = self.secure.clone();
        let from = format!("stream {}", peer.queue());
        let spawned = match &self.route {
            Route::Chosen(allow) => {
                let (allow, guard) = (Arc::clone(allow), self.connections.enter());
                std::thread::Builder::new()
                    .name("serve".to_string())
                    .spawn(move || {
                        // A client without an accepted key ends here,
                        // reset, before its request is even read.
                        let conn = match broker_stream::accept(stream, secure.as_deref()) {
                            Ok(conn) => conn,
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
                        let stream = match broker_stream::accept(stream, secure.as_deref()) {
                            Ok(stream) => stream,
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
