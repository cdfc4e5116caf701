//! systemd's readiness notification (`Type=notify`): a datagram on the
//! socket in `$NOTIFY_SOCKET` says when the tunnels are up, when a
//! reload starts and ends, and when the bridge is stopping, so that
//! `systemctl start` returns once they are up and `systemctl status`
//! shows how they stand. Without `$NOTIFY_SOCKET` nothing is sent.
//!
//! ```ignore
//! readiness::ready("3 tunnel(s) up");
//! ```

use sd_notify::NotifyState;

/// The tunnels are up (or trying to reach their broker, as `status`
/// says).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP) has begun; [`ready`] ends it.
pub fn reloading() {
    // systemd >= 253 (Type=notify-reload) wants the time of the reload.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The bridge is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        log::debug!("readiness notification: {err}");
    }
}
