//! Keeps the password out of the logs while amiquip logs in.
//!
//! amiquip 0.4 logs every method of the AMQP handshake at `debug`, the
//! `start-ok` among them, whose SASL PLAIN response holds the user name
//! and password in clear. A library cannot filter its user's logger, but
//! the `log` crate checks its process-wide maximum level before a record
//! reaches any logger: while a login runs, that maximum is held at `info`
//! (and put back afterwards, once the last of any concurrent logins is
//! done). The cost: `debug` and `trace` records from other threads are
//! dropped for those few milliseconds.

use log::LevelFilter;
use std::sync::Mutex;

/// How many logins are running, and the maximum level to put back.
static LOGINS: Mutex<(usize, LevelFilter)> = Mutex::new((0, LevelFilter::Off));

/// Holds the log level at `info` at most while it lives.
pub(crate) struct QuietLogin(());

impl QuietLogin {
    /// Quiets `debug` and `trace` logging until the returned guard drops.
    pub(crate) fn begin() -> QuietLogin {
        let mut logins = LOGINS.lock().unwrap_or_else(|e| e.into_inner());
        if logins.0 == 0 {
            logins.1 = log::max_level();
            log::set_max_level(logins.1.min(LevelFilter::Info));
        }
        logins.0 += 1;
        QuietLogin(())
    }
}

impl Drop for QuietLogin {
    fn drop(&mut self) {
        let mut logins = LOGINS.lock().unwrap_or_else(|e| e.into_inner());
        logins.0 -= 1;
        if logins.0 == 0 {
            log::set_max_level(logins.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_level_at_info_until_the_last_login_ends() {
        log::set_max_level(LevelFilter::Trace);
        let first = QuietLogin::begin();
        assert_eq!(log::max_level(), LevelFilter::Info);
        let second = QuietLogin::begin();
        drop(first);
        assert_eq!(log::max_level(), LevelFilter::Info);
        drop(second);
        assert_eq!(log::max_level(), LevelFilter::Trace);
        // A level already below info is left alone.
        log::set_max_level(LevelFilter::Warn);
        let quiet = QuietLogin::begin();
        assert_eq!(log::max_level(), LevelFilter::Warn);
        drop(quiet);
        assert_eq!(log::max_level(), LevelFilter::Warn);
    }
}
