//! Deadlines for what amiquip waits for without one: its synchronous
//! methods (opening a channel, a declare, `qos`, a consume, closing)
//! wait for the broker's answer however long it takes, for ever on a
//! link that stalled without closing (and with heartbeats off).
//!
//! Two ways round it: make the call on a helper thread and stop waiting
//! for it at the caller's deadline ([`until`], [`spawn`]), leaving the
//! helper to finish on its own; or shut the connection's socket at the
//! deadline ([`Watchdog`]), which ends amiquip's I/O thread and so fails
//! every call still waiting on that connection.

use crate::error::Error;
use crate::lock::lock;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use log::{debug, warn};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Starts `work` on a thread named `name`; its result comes on the
/// receiver, which disconnects without one if the thread could not start
/// (or panicked).
pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Receiver<T> {
    let (result_tx, result_rx) = bounded(1);
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = result_tx.send(work());
        });
    if let Err(err) = started {
        debug!("cannot start a {name} thread: {err}");
    }
    result_rx
}

/// Runs `work` and waits for its result until `deadline`: in this thread
/// when there is no deadline, else on a helper thread named `name`.
/// `None` when the deadline came first: the helper is left to finish on
/// its own and its result is dropped.
pub(crate) fn until<T: Send + 'static>(
    deadline: Option<Instant>,
    name: &str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Option<Result<T, Error>> {
    let Some(deadline) = deadline else {
        return Some(work());
    };
    match spawn(name, work).recv_deadline(deadline) {
        Ok(result) => Some(result),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => Some(Err(Error::InvalidArgument(format!(
            "cannot start a {name} thread"
        )))),
    }
}

/// Shuts sockets at a deadline unless disarmed first.
pub(crate) struct Watchdog {
    /// Dropped to disarm.
    disarm: Sender<()>,
    /// Answers whether it shut the sockets.
    thread: Option<JoinHandle<bool>>,
}

impl Watchdog {
    /// Shuts every socket in `sockets` (as they are then) at `deadline`,
    /// unless [`disarm`](Self::disarm)ed first. `what` says, in the log,
    /// what did not finish in time.
    pub(crate) fn arm(
        sockets: Arc<Mutex<Vec<TcpStream>>>,
        deadline: Instant,
        what: String,
    ) -> Watchdog {
        let (disarm, disarmed) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("amqp-stream-watchdog".to_string())
            .spawn(move || {
                if disarmed.recv_deadline(deadline) != Err(RecvTimeoutError::Timeout) {
                    return false;
                }
                warn!("{what}: no answer from the broker in time; shutting the socket");
                for socket in lock(&sockets).iter() {
                    let _ = socket.shutdown(Shutdown::Both);
                }
                true
            });
        let thread = thread
            .inspect_err(|err| debug!("cannot start a watchdog thread: {err}"))
            .ok();
        Watchdog { disarm, thread }
    }

    /// Stops the watchdog; answers whether it had shut the sockets.
    pub(crate) fn disarm(self) -> bool {
        let Watchdog { disarm, thread } = self;
        drop(disarm);
        thread.is_some_and(|thread| thread.join().unwrap_or(false))
    }
}
