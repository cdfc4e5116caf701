//! The signals a long-running command takes over, delivered on a
//! channel, and what each one means.
//!
//! A signal that kills the process ends its connections too, and a
//! process that dies closes its sockets with a FIN unless told otherwise:
//! a client would read a clean end of data after part of it. So the
//! signals an operator (or a closing terminal) sends are all taken over,
//! and every TCP connection the bridge holds is abortive until it ends
//! normally (see [`abort`](crate::carry::abort)): a signal nobody handles
//! (SIGKILL, say) then resets it.

use crossbeam_channel::{Receiver, unbounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use std::io;

/// The signals `serve`, `forward`, `http`, `socks` and `run` take over.
pub const LONG_RUNNING: &[i32] = &[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// What a long-running command does on a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGHUP: read again what can change (key files; `run`: its file).
    Reload,
    /// SIGINT, SIGTERM: stop accepting, give open connections their grace.
    Stop,
    /// SIGQUIT: stop now: open connections are reset at once.
    StopNow,
    /// SIGUSR1, SIGUSR2: logged and ignored (they would kill the process).
    Ignore,
}

/// What `signal` asks of a long-running command.
pub fn action(signal: i32) -> Action {
    match signal {
        SIGHUP => Action::Reload,
        SIGQUIT => Action::StopNow,
        SIGINT | SIGTERM => Action::Stop,
        _ => Action::Ignore,
    }
}

/// Takes over `signals` (from now on they no longer kill the process)
/// and delivers each one that comes on the channel returned.
pub fn take_over(signals: &[i32]) -> io::Result<Receiver<i32>> {
    let mut taken = Signals::new(signals)?;
    let (signal_tx, signal_rx) = unbounded();
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            for signal in taken.forever() {
                if signal_tx.send(signal).is_err() {
                    break;
                }
            }
        })?;
    Ok(signal_rx)
}

/// The signals that cut a stop's grace short: those that stop (a SIGHUP
/// or SIGUSR1 then is ignored, and logged).
pub fn stop_signals(signals: Receiver<i32>) -> Receiver<i32> {
    let (stop_tx, stop) = unbounded();
    let _ = std::thread::Builder::new()
        .name("stop-signals".to_string())
        .spawn(move || {
            for signal in signals.iter() {
                if matches!(action(signal), Action::Reload | Action::Ignore) {
                    log::info!("{}: ignored while stopping", name(signal));
                    continue;
                }
                if stop_tx.send(signal).is_err() {
                    break;
                }
            }
        });
    stop
}

/// A signal's name, for the logs.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_taken_over_has_a_meaning() {
        for &signal in LONG_RUNNING {
            assert_ne!(name(signal), "signal");
        }
        assert_eq!(action(SIGHUP), Action::Reload);
        assert_eq!(action(SIGTERM), Action::Stop);
        assert_eq!(action(SIGQUIT), Action::StopNow);
        assert_eq!(action(SIGUSR1), Action::Ignore);
    }
}
