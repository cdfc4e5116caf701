//! What one end of a stress schedule records while its threads run:
//! its calls in progress (for the monitor), its outcomes and its events.

use super::*;

/// The threads of one end, each with at most one call in progress.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    Writer = 0,
    Reader = 1,
    Controller = 2,
    Closer = 3,
}

pub(crate) const SLOT_NAMES: [&str; 4] = ["writer", "reader", "controller", "closer"];

pub(crate) struct Call {
    pub(crate) what: String,
    pub(crate) started: Instant,
    /// How long it may take, with slack; `None`: as long as it likes.
    pub(crate) bound: Option<Duration>,
    pub(crate) flagged: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum ReadEnd {
    Eof,
    /// `Ok(0)` after this end shut down its own reading.
    LocalShutdown,
    Error(io::ErrorKind, String),
    /// The plan said to stop reading.
    Stopped,
    /// The reader's deadline passed.
    GaveUp,
    /// Wrong bytes arrived (reported as a violation already).
    Corrupt,
}

#[derive(Debug, Clone)]
pub(crate) struct CallError {
    pub(crate) t: Duration,
    pub(crate) op: &'static str,
    pub(crate) kind: io::ErrorKind,
    pub(crate) text: String,
    /// This end had started `shutdown(Write)` before the call.
    pub(crate) after_own_shutdown: bool,
}

#[derive(Default)]
pub(crate) struct EndState {
    pub(crate) accepted: u64,
    pub(crate) writer_done: bool,
    pub(crate) controller_done: bool,
    pub(crate) reader: Option<(ReadEnd, Instant)>,
    pub(crate) read_total: u64,
    /// This end shut down its own reading (the reader's `Ok(0)` then is
    /// not the peer's FIN).
    pub(crate) local_read_shut: Option<Instant>,
    pub(crate) write_shut_called: Option<Instant>,
    pub(crate) write_shut_returned: Option<Instant>,
    pub(crate) write_shut_ok: Option<Instant>,
    pub(crate) errors: Vec<CallError>,
    /// The writes that returned Ok.
    pub(crate) accepted_writes: AcceptedWrites,
    pub(crate) flushes_failed: Vec<CallError>,
    pub(crate) shutdowns_failed: Vec<CallError>,
    pub(crate) dropped: Option<(Instant, u64)>,
    /// Closed with `set_linger(Some(ZERO))`.
    pub(crate) abortive: bool,
    /// When this end died (its broker connection was cut).
    pub(crate) died: Option<Instant>,
}

/// How many runs of accepted writes an end keeps at most.
const WRITES_KEPT: usize = 4096;

/// The writes an end's `write` returned Ok for, as runs of neighbouring
/// writes: (first called, last returned, offset, bytes). Each write is a
/// run of its own until there are [`WRITES_KEPT`]; then neighbouring runs
/// are merged in pairs, so a schedule of millions of one-byte writes
/// keeps a bounded record (as it was, it grew the process by 100 MiB in
/// 20 tiny-message schedules) that still says roughly when the write of
/// any byte was called.
#[derive(Debug, Default)]
pub(crate) struct AcceptedWrites {
    runs: Vec<(Duration, Duration, u64, u64)>,
}

impl AcceptedWrites {
    /// A write of `bytes` at `offset`, called at `called`, returned Ok at
    /// `returned` (both since the schedule's start).
    pub(crate) fn push(&mut self, called: Duration, returned: Duration, offset: u64, bytes: u64) {
        if self.runs.len() >= WRITES_KEPT {
            self.runs = self
                .runs
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => (a.0, b.1, a.2, a.3 + b.3),
                    [a] => *a,
                    _ => unreachable!("chunks of 2"),
                })
                .collect();
        }
        self.runs.push((called, returned, offset, bytes));
    }

    /// Says which writes carried byte `at`, and when.
    pub(crate) fn describe(&self, at: u64) -> Option<String> {
        self.runs
            .iter()
            .find(|(_, _, offset, n)| *offset <= at && at < offset + n)
            .map(|(t0, t1, offset, n)| {
                format!(
                    "the write(s) of [{offset}..{}) called from {:.3}s, returned Ok by {:.3}s",
                    offset + n,
                    t0.as_secs_f64(),
                    t1.as_secs_f64()
                )
            })
    }
}

/// How many of its latest events an end keeps for the dump.
pub(crate) const EVENTS_KEPT: usize = 500;

pub(crate) struct End {
    pub(crate) name: &'static str,
    pub(crate) start: Instant,
    pub(crate) state: Mutex<EndState>,
    pub(crate) changed: Condvar,
    pub(crate) calls: [Mutex<Option<Call>>; 4],
    /// The latest [`EVENTS_KEPT`] events, and how many earlier ones were
    /// let go (a tiny-message schedule makes hundreds of thousands).
    pub(crate) events: Mutex<(VecDeque<String>, usize)>,
    pub(crate) violations: Arc<Mutex<Vec<Violation>>>,
    /// Kills this end (cuts its broker connection), for [`Action::Die`].
    pub(crate) death: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl End {
    pub(crate) fn new(
        name: &'static str,
        start: Instant,
        violations: Arc<Mutex<Vec<Violation>>>,
    ) -> End {
        End {
            name,
            start,
            state: Mutex::new(EndState::default()),
            changed: Condvar::new(),
            calls: Default::default(),
            events: Mutex::new((VecDeque::new(), 0)),
            violations,
            death: Mutex::new(None),
        }
    }

    pub(crate) fn at(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.start)
    }

    pub(crate) fn event(&self, slot: Slot, text: String) {
        let t = self.start.elapsed();
        let mut events = lock(&self.events);
        if events.0.len() == EVENTS_KEPT {
            events.0.pop_front();
            events.1 += 1;
        }
        events.0.push_back(format!(
            "{:>8.3}s {} {}: {text}",
            t.as_secs_f64(),
            self.name,
            SLOT_NAMES[slot as usize]
        ));
    }

    pub(crate) fn violate(&self, category: &'static str, text: String) {
        lock(&self.violations).push(Violation {
            category,
            text: format!(
                "[{} @{:.3}s] {text}",
                self.name,
                self.start.elapsed().as_secs_f64()
            ),
        });
    }

    /// Runs one blocking call, visible to the monitor while it runs.
    pub(crate) fn call<T>(
        &self,
        slot: Slot,
        what: String,
        bound: Option<Duration>,
        f: impl FnOnce() -> T,
    ) -> T {
        *lock(&self.calls[slot as usize]) = Some(Call {
            what,
            started: Instant::now(),
            bound,
            flagged: false,
        });
        let out = f();
        *lock(&self.calls[slot as usize]) = None;
        out
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut EndState)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }

    /// Waits until `ready` holds or `limit` passes; whether it holds.
    pub(crate) fn wait_for(&self, limit: Duration, ready: impl Fn(&EndState) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = lock(&self.state);
        while !ready(&state) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    pub(crate) fn record_error(&self, op: &'static str, err: &io::Error) -> CallError {
        let mut state = lock(&self.state);
        let e = CallError {
            t: self.start.elapsed(),
            op,
            kind: err.kind(),
            text: err.to_string(),
            after_own_shutdown: state.write_shut_called.is_some(),
        };
        state.errors.push(e.clone());
        e
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Violation {
    pub(crate) category: &'static str,
    pub(crate) text: String,
}
