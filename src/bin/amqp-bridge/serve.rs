//! `amqp-bridge serve`: every stream accepted on a queue is connected to
//! a TCP service.

use crate::backoff::Backoff;
use crate::cli::ServeArgs;
use crate::fatal::Fatal;
use crate::lifecycle::Lifecycle;
use crate::link::BrokerLink;
use crate::splice::{ConnectionLog, splice};
use crate::target::Target;
use amqp_stream::{Addr, Listener, Stream};
use log::{info, warn};
use std::sync::Arc;
use std::time::Duration;

/// How long stopping waits for its own wake-up stream.
const WAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `args.queue` until SIGINT/SIGTERM.
pub fn run(url: &str, args: &ServeArgs) -> Result<(), Fatal> {
    let target = Target::parse(&args.to).map_err(Fatal::usage)?;
    let grace = args.stop.grace().map_err(Fatal::usage)?;
    let lifecycle = Lifecycle::install().map_err(|e| Fatal::runtime(e.to_string()))?;
    let link = BrokerLink::open(url).map_err(Fatal::broker)?;
    let queue = args.queue.clone();
    let listener = bind(&link, &queue).map_err(|e| Fatal::bind(e, "cannot serve"))?;

    let accepting = Arc::clone(&lifecycle);
    let server = Server {
        link: Arc::clone(&link),
        queue: queue.clone(),
        target,
    };
    std::thread::Builder::new()
        .name("accept".to_string())
        .spawn(move || server.accept_until_stopped(listener, &accepting))
        .map_err(|e| Fatal::runtime(e.to_string()))?;

    lifecycle.run_until_signalled(grace, || {
        // A stream of our own wakes the accepting thread, which then sees
        // that we are stopping and closes the listener.
        if let Ok(connector) = link.connector(Some(Duration::ZERO)) {
            let _ = connector.connect_timeout(&queue, WAKE_TIMEOUT);
        }
    });
    Ok(())
}

fn bind(link: &BrokerLink, queue: &str) -> std::io::Result<Listener> {
    let connector = link.connector(None)?;
    let listener = connector.bind(queue)?;
    info!(
        "serving queue {queue:?} on the broker at {}",
        connector.broker()
    );
    Ok(listener)
}

struct Server {
    link: Arc<BrokerLink>,
    queue: String,
    target: Target,
}

impl Server {
    /// Accepts streams and hands each to its own thread; when the
    /// listener fails (the broker connection was lost), binds again once
    /// the link has reconnected.
    fn accept_until_stopped(&self, mut listener: Listener, lifecycle: &Arc<Lifecycle>) {
        info!("streams on queue {:?} go to {}", self.queue, self.target);
        loop {
            match listener.accept() {
                Ok(_) if lifecycle.stopping() => break,
                Ok((stream, peer)) => self.start(stream, peer, lifecycle),
                Err(err) if lifecycle.stopping() => {
                    warn!("stopped listening on {:?}: {err}", self.queue);
                    break;
                }
                Err(err) => {
                    warn!("the listener on {:?} failed: {err}", self.queue);
                    drop(listener);
                    match self.bind_again(lifecycle) {
                        Some(again) => listener = again,
                        None => break,
                    }
                }
            }
        }
        info!("no longer serving queue {:?}", self.queue);
    }

    /// Binds the queue again, retrying with backoff (the old exclusive
    /// queue may linger until the broker notices the old connection died).
    fn bind_again(&self, lifecycle: &Lifecycle) -> Option<Listener> {
        let mut backoff = Backoff::reconnecting();
        while !lifecycle.stopping() {
            match bind(&self.link, &self.queue) {
                Ok(listener) => return Some(listener),
                Err(err) => {
                    let delay = backoff.next_delay();
                    warn!(
                        "cannot serve {:?} yet: {err}; next attempt in {delay:?}",
                        self.queue
                    );
                    std::thread::sleep(delay);
                }
            }
        }
        None
    }

    fn start(&self, stream: Stream, peer: Addr, lifecycle: &Arc<Lifecycle>) {
        let log = ConnectionLog::open(
            lifecycle.enter(),
            format!("stream {}", peer.queue()),
            self.target.to_string(),
        );
        let target = self.target.clone();
        let spawned = std::thread::Builder::new()
            .name("serve".to_string())
            .spawn(move || match target.connect() {
                Ok(tcp) => log.closed(&splice(stream, tcp)),
                // Dropping the stream closes it: the client reads EOF.
                Err(err) => log.failed(&err),
            });
        if let Err(err) = spawned {
            warn!("cannot start a thread for a stream: {err}");
        }
    }
}
