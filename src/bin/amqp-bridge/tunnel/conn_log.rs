//! The log lines of one bridged connection: one when it opens, one when
//! it closes (how it ended, the bytes each way and how long it lasted).
//! `warn` only for what a user must look at: a reset by a peer, or a
//! peer that resets after its own end of data, is an `info` line.

use crate::carry::splice::{Side, Transfer};
use crate::tunnel::connections::{Aborter, ConnectionGuard};
use crate::tunnel::metrics::reason;
use log::{info, warn};
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// The log of one connection from `from` to `to`.
pub struct ConnectionLog {
    guard: ConnectionGuard,
    from: String,
    to: String,
    started: Instant,
}

impl ConnectionLog {
    /// Logs the opening of a connection from `from` to `to`.
    pub fn open(guard: ConnectionGuard, from: impl Into<String>, to: impl Into<String>) -> Self {
        let log = ConnectionLog {
            guard,
            from: from.into(),
            to: to.into(),
            started: Instant::now(),
        };
        info!("#{} open: {} -> {}", log.guard.id(), log.from, log.to);
        log
    }

    /// The connection's number, for the logs.
    pub fn id(&self) -> u64 {
        self.guard.id()
    }

    /// How to reset the connection should the bridge stop with it open.
    pub fn on_abort(&self, abort: Aborter) {
        self.guard.on_abort(abort);
    }

    /// The far end is connected: counts how long it took.
    pub fn connected(&self) {
        self.guard.metrics().handshake(self.started.elapsed());
    }

    /// The tunnel's byte counters, for the connection's local TCP side
    /// (see [`Metered`](crate::carry::metered::Metered)).
    pub fn byte_counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        self.guard.metrics().byte_counters()
    }

    /// Logs that the far end could not be reached (the near end has been
    /// reset), and counts the connection refused.
    pub fn failed(self, err: &io::Error) {
        let why = reason(err);
        self.failed_because(&why, err);
    }

    /// As [`failed`](Self::failed), counted under the reason label `why`.
    pub fn failed_because(self, why: &str, err: &io::Error) {
        self.guard.metrics().refused(why);
        warn!(
            "#{} failed: {} -> {}: {err} (after {:.3} s)",
            self.guard.id(),
            self.from,
            self.to,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Logs that the near end failed the secure handshake (it has been
    /// reset); one that reset its end meanwhile is its own business.
    pub fn refused(self, err: &io::Error) {
        self.guard.metrics().refused(&reason(err));
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) {
            info!(
                "#{} reset during the secure handshake: {} -> {}: {err}",
                self.guard.id(),
                self.from,
                self.to
            );
            return;
        }
        warn!(
            "#{} refused: {} -> {}: {err} (after {:.3} s)",
            self.guard.id(),
            self.from,
            self.to,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Logs the end of a connection and what went through it; counts it
    /// failed when it ended abortively (but not a peer's reset after a
    /// half-close, which is a normal end).
    pub fn closed(self, transfer: &Transfer) {
        let id = self.guard.id();
        let (from, to) = (&self.from, &self.to);
        let totals = format!(
            "{} bytes sent, {} bytes received, {:.3} s",
            transfer.forth,
            transfer.back,
            self.started.elapsed().as_secs_f64()
        );
        let Some(failure) = &transfer.failure else {
            info!("#{id} closed: {from} -> {to}: {totals}");
            return;
        };
        let who = match failure.side {
            Side::First => from,
            Side::Second => to,
        };
        let err = &failure.error;
        if !(failure.after_fin && failure.is_peer_reset()) {
            self.guard.metrics().failed(&reason(err));
        }
        if failure.after_fin && failure.is_peer_reset() {
            info!("#{id} closed: {from} -> {to}: {totals} ({who} reset after a half-close: {err})");
        } else if failure.is_peer_reset() {
            info!("#{id} reset: {from} -> {to}: by {who}: {err}; {totals}");
        } else {
            warn!("#{id} closed with an error: {from} -> {to}: {who}: {err}; {totals}");
        }
    }
}
