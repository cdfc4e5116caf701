//! The bridge's broker connection, kept up: a supervisor thread notices
//! when it ends and reconnects with capped exponential backoff; closed
//! properly (AMQP `connection.close`) when the bridge stops. A broker
//! that cannot be reached when the link opens is tried the same way,
//! unless the caller wants to fail fast.

use crate::carry::address::BrokerAddress;
use crate::carry::backoff::{Backoff, RetryLog};
use crate::fatal;
use amqp_stream::{Connector, Stream};
use crossbeam_channel::{Receiver, Sender, bounded};
use log::{debug, info, warn};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a new stream waits for the broker while the link reconnects.
const RECONNECT_WAIT: Duration = Duration::from_secs(10);

/// How often the supervisor looks whether the link is being closed (it
/// must let go of its handle to the connection for the close to happen).
const SUPERVISOR_POLL: Duration = Duration::from_millis(100);

/// A broker connection that reconnects by itself.
pub struct BrokerLink {
    address: BrokerAddress,
    current: Mutex<Option<Connector>>,
    changed: Condvar,
    closing: AtomicBool,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// Disconnected by `close`: wakes the supervisor from its backoff.
    wake: Receiver<()>,
    wake_tx: Mutex<Option<Sender<()>>>,
    /// Counts the reconnections (for the metrics).
    reconnects: Arc<AtomicU64>,
}

impl BrokerLink {
    /// Connects to the broker and starts the supervisor that reconnects
    /// after a loss, counting each reconnection in `reconnects`. When the
    /// first attempt fails, the error is returned if `fail_fast` is set
    /// or the error is one that trying again cannot mend (a bad URL or
    /// TLS setting); otherwise the supervisor goes on trying, with the
    /// backoff of a reconnection, and the link is returned unconnected
    /// (see [`is_connected`](BrokerLink::is_connected)).
    pub fn open(
        address: &BrokerAddress,
        reconnects: Arc<AtomicU64>,
        fail_fast: bool,
    ) -> io::Result<Arc<BrokerLink>> {
        let first = address.resolve().and_then(|url| Connector::open(&url));
        let connector = match first {
            Ok(connector) => Some(connector),
            Err(err) if fail_fast || !fatal::is_worth_retrying(&err) => return Err(err),
            Err(err) => {
                warn!(
                    "cannot reach the broker: {err}; trying again until it can be reached \
                     (--fail-fast exits instead)"
                );
                None
            }
        };
        let (wake_tx, wake) = bounded(0);
        let link = Arc::new(BrokerLink {
            address: address.clone(),
            current: Mutex::new(connector),
            changed: Condvar::new(),
            closing: AtomicBool::new(false),
            supervisor: Mutex::new(None),
            wake,
            wake_tx: Mutex::new(Some(wake_tx)),
            reconnects,
        });
        let supervised = Arc::clone(&link);
        let supervisor = std::thread::Builder::new()
            .name("broker-supervisor".to_string())
            .spawn(move || supervised.supervise())?;
        *link.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(supervisor);
        Ok(link)
    }

    /// Stops reconnecting and closes the connection properly, now (AMQP
    /// `connection.close`, so the broker deletes our queues at once and
    /// logs no "unexpectedly closed" connection): for the process to exit
    /// right after, with threads of the library (a listener's prepared
    /// streams, say) perhaps still letting go of it. Streams still on it
    /// fail; listeners must be dropped first.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        drop(
            self.wake_tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.join();
        }
        let connector = self.lock().take();
        self.changed.notify_all();
        if let Some(connector) = connector
            && let Err(err) = connector.close()
        {
            debug!("closing the broker connection: {err}");
        }
    }

    /// The live connection, waiting up to `wait` (forever: `None`) while
    /// the supervisor reconnects.
    pub fn connector(&self, wait: Option<Duration>) -> io::Result<Connector> {
        let current = self.lock();
        let current = match wait {
            Some(wait) => {
                self.changed
                    .wait_timeout_while(current, wait, |c| c.is_none() && !self.is_closing())
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self
                .changed
                .wait_while(current, |c| c.is_none() && !self.is_closing())
                .unwrap_or_else(|e| e.into_inner()),
        };
        current.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                if self.is_closing() {
                    "the bridge is stopping"
                } else {
                    "not connected to the broker (reconnecting)"
                },
            )
        })
    }

    /// Whether the broker connection is up now.
    pub fn is_connected(&self) -> bool {
        self.lock().as_ref().is_some_and(|c| !c.is_closed())
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Opens a stream to the listener on `queue`, waiting a while for the
    /// broker if the link is reconnecting.
    pub fn connect(&self, queue: &str) -> io::Result<Stream> {
        self.connector(Some(RECONNECT_WAIT))?.connect(queue)
    }

    /// Connects when there is no connection, waits for it to end, and
    /// connects again; until closed.
    fn supervise(&self) {
        let mut backoff = Backoff::reconnecting();
        let mut retries = RetryLog::new();
        if self.lock().is_none() {
            // The first attempt, in `open`, failed: wait before the next.
            let _ = self.wake.recv_timeout(backoff.next_delay());
        }
        loop {
            let current = self.lock().clone();
            let reconnecting = current.is_some();
            if let Some(connector) = current {
                while !connector.wait_closed_timeout(SUPERVISOR_POLL) {
                    if self.is_closing() {
                        return;
                    }
                }
                if self.is_closing() {
                    return;
                }
                warn!(
                    "lost the connection to the broker at {}; reconnecting",
                    connector.broker()
                );
                *self.lock() = None;
                drop(connector);
            }
            let connector = loop {
                if self.is_closing() {
                    return;
                }
                match self.address.resolve().and_then(|url| Connector::open(&url)) {
                    Ok(connector) => break connector,
                    Err(err) => {
                        let delay = backoff.next_delay();
                        let what = if reconnecting {
                            "cannot reconnect"
                        } else {
                            "cannot reach the broker yet"
                        };
                        let (level, note) = retries.failed();
                        log::log!(level, "{what}: {err}; next attempt in {delay:?}{note}");
                        // Cut short by `close`.
                        let _ = self.wake.recv_timeout(delay);
                    }
                }
            };
            if reconnecting {
                info!("reconnected to the broker at {}", connector.broker());
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            } else {
                info!("connected to the broker at {}", connector.broker());
            }
            backoff.reset();
            retries.reset();
            let mut guard = self.lock();
            if self.is_closing() {
                return;
            }
            *guard = Some(connector);
            drop(guard);
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connector>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}
