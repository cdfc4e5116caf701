//! The TCP side of `forward` and `http`: bind a local port, accept
//! clients until stopped, each on its own thread.

use crate::carry::abort::abort_tcp;
use crate::carry::address::BrokerAddress;
use crate::carry::link::BrokerLink;
use crate::fatal::Fatal;
use crate::keys::live::{Change, LiveKeys};
use crate::tunnel::Tunnel;
use crate::tunnel::connections::{ConnectionGuard, Connections};
use crate::tunnel::metrics::TunnelMetrics;
use crate::tunnel::{Reloaded, Reloader};
use amqp_stream::secure::ClientConfig;
use log::{error, info, warn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long accepting pauses after a failed `accept` (out of file
/// descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A bound TCP port with the broker link behind it.
pub struct FrontDoor {
    listener: TcpListener,
    local: SocketAddr,
    link: Arc<BrokerLink>,
    metrics: Arc<TunnelMetrics>,
}

impl FrontDoor {
    /// Binds `listen` (a port in use is exit code 5) and connects to the
    /// broker at `broker`: the port is checked before the broker is
    /// contacted. A broker that cannot be reached is tried again until
    /// it can, clients meanwhile waiting a while and then reset, unless
    /// `fail_fast`. Its connections are counted in `metrics`.
    pub fn open(
        broker: &BrokerAddress,
        listen: &[SocketAddr],
        metrics: Arc<TunnelMetrics>,
        fail_fast: bool,
    ) -> Result<FrontDoor, Fatal> {
        let listener = TcpListener::bind(listen).map_err(|err| {
            let shown: Vec<String> = listen.iter().map(ToString::to_string).collect();
            Fatal::bind(err, &format!("cannot listen on {}", shown.join(", ")))
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| Fatal::runtime(e.to_string()))?;
        let link = BrokerLink::open(broker, metrics.reconnect_counter(), fail_fast)
            .map_err(Fatal::broker)?;
        Ok(FrontDoor {
            listener,
            local,
            link,
            metrics,
        })
    }

    /// The address clients connect to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts clients until the tunnel returned stops accepting, each
    /// handed to `handle` on a thread of its own with the broker link.
    /// `grace`: how long open connections may go on once the process
    /// stops.
    pub fn start<H>(self, grace: Duration, handle: H) -> Result<Tunnel, Fatal>
    where
        H: Fn(&BrokerLink, TcpStream, SocketAddr, ConnectionGuard) + Send + Sync + 'static,
    {
        let FrontDoor {
            listener,
            local,
            link,
            metrics,
        } = self;
        let connections = Connections::new(Arc::clone(&metrics));
        let stopping = Arc::new(AtomicBool::new(false));
        let accepting = Arc::clone(&connections);
        let accepting_stopping = Arc::clone(&stopping);
        let handle = Arc::new(handle);
        let accepting_link = Arc::clone(&link);
        let accept = std::thread::Builder::new()
            .name("accept".to_string())
            .spawn(move || {
                loop {
                    let accepted = listener.accept();
                    if accepting_stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    match accepted {
                        Ok((client, peer)) => {
                            // Until it ends normally, a close resets it: a
                            // bridge killed by a signal leaves it reset,
                            // never cut short with a clean end of data.
                            abort_tcp(&client);
                            let guard = accepting.enter();
                            let handle = Arc::clone(&handle);
                            let link = Arc::clone(&accepting_link);
                            let spawned = std::thread::Builder::new()
                                .name("client".to_string())
                                .spawn(move || handle(&link, client, peer, guard));
                            if let Err(err) = spawned {
                                warn!("cannot start a thread for {peer}: {err}");
                            }
                        }
                        Err(err) => {
                            warn!("accepting on {local}: {err}");
                            std::thread::sleep(ACCEPT_RETRY);
                        }
                    }
                }
                // Closed before it is said: a client that reads the log
                // line and connects is refused, not reset.
                drop(listener);
                info!("no longer accepting on {local}");
            });
        let accept = match accept {
            Ok(accept) => accept,
            Err(err) => {
                link.close();
                return Err(Fatal::runtime(err.to_string()));
            }
        };
        let stopper = move || {
            stopping.store(true, Ordering::SeqCst);
            // A connection of our own wakes the accepting thread, which
            // then sees that we are stopping and closes the port.
            let _ = TcpStream::connect_timeout(&reachable(local), Duration::from_secs(2));
            let _ = accept.join();
        };
        Ok(Tunnel::new(
            metrics,
            connections,
            link,
            grace,
            Box::new(stopper),
        ))
    }
}

/// An address that reaches a socket bound to `local` (a wildcard address
/// is reached through loopback).
fn reachable(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// The client keys for a new connection: the files are looked at (and
/// read again if they changed; the change is logged once). Fails while
/// changed files do not read.
pub fn client_keys(live: Option<&LiveKeys<ClientConfig>>) -> io::Result<Option<Arc<ClientConfig>>> {
    let Some(live) = live else {
        return Ok(None);
    };
    let (keys, change) = live.current();
    log_change(&change);
    keys.map(Some)
}

/// Logs what a look at the key files found.
fn log_change<K>(change: &Change<K>) {
    match change {
        Change::Unchanged => {}
        Change::Taken(_) => info!("the key files changed: read again"),
        Change::Failed(why) => {
            error!(
                "the key files changed and do not read: {why}; new connections fail until they do"
            )
        }
    }
}

/// Reads a client tunnel's key files again (SIGHUP).
pub fn reloader(live: Arc<LiveKeys<ClientConfig>>) -> Reloader {
    Box::new(move || {
        let mut reloaded = Reloaded::default();
        match live.reload() {
            Change::Taken(_) => reloaded.changes.push("key files read again".to_string()),
            Change::Failed(why) => reloaded.errors.push(format!(
                "the key files do not read: {why}; new connections fail until they do"
            )),
            Change::Unchanged => {}
        }
        reloaded
    })
}
