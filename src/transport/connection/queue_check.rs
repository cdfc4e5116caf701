//! Checks, shared by every stream of a connection, that another
//! connection's queue still exists.
//!
//! The only way AMQP has to ask is a passive declare, and on a queue
//! exclusive to another connection (every listener's and stream's queue)
//! RabbitMQ answers with a channel error, which it logs at `error` level
//! even when the queue is there. A burst of clients waiting for one busy
//! listener, each checking its queue every keepalive interval, filled the
//! broker's log with thousands of such lines: so a connection checks a
//! queue at most once per period, and the streams that ask meanwhile take
//! the last answer.

use crate::lock::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many queues' answers a connection keeps.
const REMEMBERED: usize = 4096;

/// The latest check of each queue a connection's streams asked about.
#[derive(Debug, Default)]
pub(crate) struct QueueChecks {
    recent: Mutex<HashMap<String, Checked>>,
}

#[derive(Debug, Clone, Copy)]
struct Checked {
    at: Instant,
    /// `None` while the check runs.
    gone: Option<bool>,
}

impl QueueChecks {
    /// Whether `queue` is gone: the answer of a check younger than
    /// `period` (one running counts as "there"), else `check`'s.
    pub(crate) fn is_gone(
        &self,
        queue: &str,
        period: Duration,
        check: impl FnOnce() -> bool,
    ) -> bool {
        {
            let mut recent = lock(&self.recent);
            if let Some(checked) = recent.get(queue)
                && checked.at.elapsed() < period
            {
                return checked.gone.unwrap_or(false);
            }
            if recent.len() >= REMEMBERED {
                recent.retain(|_, checked| checked.at.elapsed() < period);
            }
            let running = Checked {
                at: Instant::now(),
                gone: None,
            };
            recent.insert(queue.to_string(), running);
        }
        let gone = check();
        let done = Checked {
            at: Instant::now(),
            gone: Some(gone),
        };
        lock(&self.recent).insert(queue.to_string(), done);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_queue_is_checked_once_per_period_and_the_answer_shared() {
        let checks = QueueChecks::default();
        let asked = Cell::new(0);
        let check = |gone| {
            asked.set(asked.get() + 1);
            gone
        };
        let period = Duration::from_secs(60);
        assert!(!checks.is_gone("a", period, || check(false)));
        assert!(!checks.is_gone("a", period, || check(true)));
        assert_eq!(asked.get(), 1, "the second took the first's answer");
        assert!(checks.is_gone("b", period, || check(true)));
        assert_eq!(asked.get(), 2, "another queue is checked on its own");
        // Past the period, the queue is checked again.
        assert!(checks.is_gone("a", Duration::ZERO, || check(true)));
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn while_a_check_runs_others_take_the_queue_as_there() {
        let checks = QueueChecks::default();
        let period = Duration::from_secs(60);
        let inner = checks.is_gone("a", period, || {
            // Asked while this check runs: not checked again, not gone.
            !checks.is_gone("a", period, || panic!("checked twice"))
        });
        assert!(inner);
    }
}
