//! The bridge's broker connection, kept up: a supervisor thread notices
//! when it ends and reconnects with capped exponential backoff.

use crate::backoff::Backoff;
use amqp_stream::{Connector, Stream};
use log::{info, warn};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a new stream waits for the broker while the link reconnects.
const RECONNECT_WAIT: Duration = Duration::from_secs(10);

/// A broker connection that reconnects by itself.
pub struct BrokerLink {
    url: String,
    current: Mutex<Option<Connector>>,
    changed: Condvar,
}

impl BrokerLink {
    /// Connects to the broker (a failure here is the caller's to report)
    /// and starts the supervisor that reconnects after a loss.
    pub fn open(url: &str) -> io::Result<Arc<BrokerLink>> {
        let connector = Connector::open(url)?;
        let link = Arc::new(BrokerLink {
            url: url.to_string(),
            current: Mutex::new(Some(connector)),
            changed: Condvar::new(),
        });
        let supervised = Arc::clone(&link);
        std::thread::Builder::new()
            .name("broker-supervisor".to_string())
            .spawn(move || supervised.supervise())?;
        Ok(link)
    }

    /// The live connection, waiting up to `wait` (forever: `None`) while
    /// the supervisor reconnects.
    pub fn connector(&self, wait: Option<Duration>) -> io::Result<Connector> {
        let current = self.lock();
        let current = match wait {
            Some(wait) => {
                self.changed
                    .wait_timeout_while(current, wait, |c| c.is_none())
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self
                .changed
                .wait_while(current, |c| c.is_none())
                .unwrap_or_else(|e| e.into_inner()),
        };
        current.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "not connected to the broker (reconnecting)",
            )
        })
    }

    /// Opens a stream to the listener on `queue`, waiting a while for the
    /// broker if the link is reconnecting.
    pub fn connect(&self, queue: &str) -> io::Result<Stream> {
        self.connector(Some(RECONNECT_WAIT))?.connect(queue)
    }

    /// Waits for the connection to end, then reconnects; forever.
    fn supervise(&self) {
        let mut backoff = Backoff::reconnecting();
        loop {
            let Some(connector) = self.lock().clone() else {
                return;
            };
            connector.wait_closed();
            warn!(
                "lost the connection to the broker at {}; reconnecting",
                connector.broker()
            );
            *self.lock() = None;
            drop(connector);
            let connector = loop {
                match Connector::open(&self.url) {
                    Ok(connector) => break connector,
                    Err(err) => {
                        let delay = backoff.next_delay();
                        warn!("cannot reconnect: {err}; next attempt in {delay:?}");
                        std::thread::sleep(delay);
                    }
                }
            };
            info!("reconnected to the broker at {}", connector.broker());
            backoff.reset();
            *self.lock() = Some(connector);
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connector>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}
