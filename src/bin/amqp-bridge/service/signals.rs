//! The signals a long-running command takes over, delivered on a channel.

use crossbeam_channel::{Receiver, unbounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io;

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

/// A signal's name, for the logs.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
