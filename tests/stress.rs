//! Stress: random, seeded schedules of `write` / `flush` / `shutdown` /
//! drop / read, run concurrently from several threads on both ends of a
//! stream, protocol versions 1 and 2, with small windows, messages and
//! write queues and short linger and keepalive times to reach the edge
//! paths. Each schedule checks, for both directions:
//!
//! * the reader gets exactly a prefix of what was written, in order (the
//!   data depends on its position: a reorder, duplicate or gap shows);
//! * it ends with a clean EOF after *every* byte a `write` returned Ok
//!   for, or with an error on both sides (the reader gets an error; the
//!   writer got one from write/flush/shutdown, or closed abortively, with
//!   unread data). A clean EOF after a strict prefix of accepted data is
//!   the worst bug there is;
//! * nothing blocks past its bound: a call with a timeout returns within
//!   it (plus slack for a loaded machine), a write blocked when its own
//!   end shuts down writing is woken, and no schedule runs past a
//!   watchdog limit;
//! * on a healthy stream (the peer read everything and a clean EOF),
//!   `flush` and `shutdown` succeed.
//!
//! `STRESS_SCHEDULES=N` sets how many schedules run (default 240),
//! `STRESS_SEED=S` replays one schedule (`STRESS_SCHEDULES` times, default
//! once), `STRESS_BASE=B` fixes the seeds of a whole run, `STRESS_LANES=L`
//! how many schedules run at once (default 4), `STRESS_KIND=name` and
//! `STRESS_PROTOCOL=v1|v2` keep only matching seeds.

mod common;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::schedule::{Rng, fill_pattern, first_mismatch, locate, mix};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Allowance on top of a call's own timeout on a busy two-core machine.
const SLACK: Duration = Duration::from_secs(5);
/// A call without a timeout that should still be quick (a flush, a
/// shutdown) is flagged after this long.
const QUICK: Duration = Duration::from_secs(15);
/// A write blocked when its own end shut down writing must return within
/// this long after the shutdown returned.
const WAKE: Duration = Duration::from_secs(3);
/// A schedule still running after this long is a hang.
const HANG: Duration = Duration::from_secs(60);
/// Writers start no new write after this long into the schedule.
const WRITER_DEADLINE: Duration = Duration::from_secs(6);
/// Readers with a read timeout give up after this long into the schedule.
const READER_DEADLINE: Duration = Duration::from_secs(16);
/// A reader must see the end this long after its peer shut down or closed.
const END_GRACE: Duration = Duration::from_secs(5);

const KIB: u64 = 1024;

// ---------------------------------------------------------------------
// Option profiles: each runs on its own pair of connectors.

struct Profile {
    name: &'static str,
    version: ProtocolVersion,
    options: StreamOptions,
    /// A large amount of data for one direction with these options.
    big: u64,
}

fn profiles() -> Vec<Profile> {
    let base = |version| {
        StreamOptions::new()
            .protocol_version(Some(version))
            .handshake_timeout(Some(Duration::from_secs(20)))
    };
    vec![
        Profile {
            name: "v1-small",
            version: ProtocolVersion::V1,
            options: base(ProtocolVersion::V1)
                .max_message_size(8 * 1024)
                .write_queue(1)
                .prefetch(4)
                .linger(Duration::from_millis(300))
                .keepalive_interval(Duration::from_millis(100)),
            big: 1024 * KIB,
        },
        Profile {
            name: "v1-default",
            version: ProtocolVersion::V1,
            options: base(ProtocolVersion::V1)
                .linger(Duration::from_secs(2))
                .keepalive_interval(Duration::from_millis(300)),
            big: 2048 * KIB,
        },
        Profile {
            name: "v2-tiny-window",
            version: ProtocolVersion::V2,
            options: base(ProtocolVersion::V2)
                .window(4 * 1024)
                .max_message_size(1024)
                .write_queue(1)
                .prefetch(4)
                .linger(Duration::from_millis(2))
                .keepalive_interval(Duration::from_millis(100)),
            big: 128 * KIB,
        },
        Profile {
            name: "v2-small",
            version: ProtocolVersion::V2,
            options: base(ProtocolVersion::V2)
                .window(64 * 1024)
                .max_message_size(16 * 1024)
                .write_queue(2)
                .linger(Duration::from_secs(1))
                .keepalive_interval(Duration::from_millis(200)),
            big: 512 * KIB,
        },
        Profile {
            name: "v2-default",
            version: ProtocolVersion::V2,
            options: base(ProtocolVersion::V2)
                .linger(Duration::from_secs(2))
                .keepalive_interval(Duration::from_millis(500)),
            big: 2048 * KIB,
        },
    ]
}

// ---------------------------------------------------------------------
// Plans: what each end of one schedule does, drawn from its seed.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A writes flat out; another thread of A shuts down writing mid-way.
    RaceShutdownWrite,
    /// The same with `shutdown(Both)`.
    RaceShutdownBoth,
    /// B stops reading for seconds, A's write blocks (on credit in v2), A
    /// shuts down writing meanwhile.
    ShutdownWhileBlocked,
    /// A stops reading with data unread and is dropped right after its
    /// last write: an abortive close.
    DropWithUnread,
    /// A writes and is dropped without shutdown, having read everything.
    CleanDrop,
    /// A reads B's FIN, then shuts down writing and flushes.
    ShutdownThenFlush,
    /// Flushes between writes and from another thread, racing shutdown.
    FlushRace,
    /// A writes and closes abortively (`set_linger(Some(ZERO))`).
    AbortiveClose,
    /// Everything random on both ends.
    Chaos,
}

const KINDS: [Kind; 9] = [
    Kind::RaceShutdownWrite,
    Kind::RaceShutdownBoth,
    Kind::ShutdownWhileBlocked,
    Kind::DropWithUnread,
    Kind::CleanDrop,
    Kind::ShutdownThenFlush,
    Kind::FlushRace,
    Kind::AbortiveClose,
    Kind::Chaos,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::RaceShutdownWrite => "race_shutdown_write",
            Kind::RaceShutdownBoth => "race_shutdown_both",
            Kind::ShutdownWhileBlocked => "shutdown_while_blocked",
            Kind::DropWithUnread => "drop_with_unread",
            Kind::CleanDrop => "clean_drop",
            Kind::ShutdownThenFlush => "shutdown_then_flush",
            Kind::FlushRace => "flush_race",
            Kind::AbortiveClose => "abortive_close",
            Kind::Chaos => "chaos",
        }
    }
}

#[derive(Debug, Clone)]
struct WritePlan {
    total: u64,
    max_write: u64,
    timeout: Option<Duration>,
    /// After a write times out, try again (else stop writing).
    retry_timeouts: bool,
    /// Flush after every this many writes.
    flush_every: Option<u32>,
    /// Sleep this long after every this many writes.
    pause_every: Option<(u32, Duration)>,
}

impl WritePlan {
    fn none() -> WritePlan {
        WritePlan {
            total: 0,
            max_write: 1,
            timeout: None,
            retry_timeouts: false,
            flush_every: None,
            pause_every: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Trigger {
    Delay(Duration),
    /// Once the writer has this many bytes accepted (or is done; 3 s at most).
    Accepted(u64),
    /// Once the writer is done.
    WriterDone,
    /// Once the writer is done and the reader has ended (read the FIN).
    WriterDoneAndReaderEnded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    ShutdownWrite,
    ShutdownBoth,
    ShutdownRead,
    Flush,
}

#[derive(Debug, Clone, Copy)]
enum ReadTimeouts {
    Never,
    /// Every read with a timeout in this range of milliseconds.
    Always(u64, u64),
    /// Some reads without a timeout, most with one up to 300 ms.
    Mixed,
}

#[derive(Debug, Clone)]
struct ReadPlan {
    max_buf: u64,
    timeouts: ReadTimeouts,
    /// After this many bytes, stop reading for this long.
    pause: Option<(u64, Duration)>,
    /// Stop reading for good after this many bytes.
    stop_after: Option<u64>,
}

impl ReadPlan {
    fn to_end(rng: &mut Rng) -> ReadPlan {
        ReadPlan {
            max_buf: rng.size(1, 256 * KIB),
            timeouts: match rng.range(0, 2) {
                0 => ReadTimeouts::Never,
                1 => ReadTimeouts::Always(1, rng.range(1, 500)),
                _ => ReadTimeouts::Mixed,
            },
            pause: None,
            stop_after: None,
        }
    }
}

#[derive(Debug, Clone)]
struct EndPlan {
    write: WritePlan,
    control: Vec<(Trigger, Action)>,
    read: ReadPlan,
    /// After the writer and the controller are done, wait this long...
    hold: Duration,
    /// ...then at most this long for the reader, then shut down reading,
    /// then drop the stream.
    patience: Duration,
    nodelay: bool,
    /// `Stream::set_linger` before anything else; `Some(ZERO)` makes the
    /// close abortive.
    linger: Option<Duration>,
}

impl EndPlan {
    fn shuts_down_writing(&self) -> bool {
        self.control
            .iter()
            .any(|(_, a)| matches!(a, Action::ShutdownWrite | Action::ShutdownBoth))
    }
}

#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    kind: Kind,
    profile: usize,
    /// Whether A (the end the kind is about) is the client.
    a_is_client: bool,
    client: EndPlan,
    server: EndPlan,
}

fn write_timeout(rng: &mut Rng) -> Option<Duration> {
    rng.chance(0.4).then(|| rng.millis(20, 1500))
}

fn random_write(rng: &mut Rng, total: u64) -> WritePlan {
    let timeout = write_timeout(rng);
    WritePlan {
        total,
        max_write: rng.size(1, 256 * KIB),
        timeout,
        retry_timeouts: rng.chance(0.7),
        flush_every: rng.chance(0.2).then(|| rng.range(1, 8) as u32),
        pause_every: rng
            .chance(0.2)
            .then(|| (rng.range(1, 16) as u32, rng.millis(1, 50))),
    }
}

fn plan(seed: u64, profiles: &[Profile]) -> Plan {
    let mut rng = Rng::new(seed);
    let kind = rng.pick(&KINDS);
    let profile = rng.range(0, profiles.len() as u64 - 1) as usize;
    let p = &profiles[profile];
    let window = if p.version == ProtocolVersion::V2 {
        p.options.get_window() as u64
    } else {
        p.options.get_max_message_size() as u64 * 4
    };
    let big = p.big;
    let long = READER_DEADLINE + Duration::from_secs(1);
    let (a, b) = match kind {
        Kind::RaceShutdownWrite | Kind::RaceShutdownBoth => {
            let total = rng.size(window, big * 2);
            let mut aw = random_write(&mut rng, total);
            aw.timeout = rng.chance(0.3).then(|| rng.millis(50, 1000));
            aw.retry_timeouts = true;
            aw.flush_every = None;
            aw.pause_every = None;
            let trigger = if rng.chance(0.5) {
                Trigger::Delay(rng.millis(0, 400))
            } else {
                Trigger::Accepted(rng.range(0, total))
            };
            let action = if kind == Kind::RaceShutdownWrite {
                Action::ShutdownWrite
            } else {
                Action::ShutdownBoth
            };
            let mut br = ReadPlan::to_end(&mut rng);
            if rng.chance(0.3) {
                br.pause = Some((rng.range(0, window), rng.millis(10, 600)));
            }
            let bw_total = if rng.chance(0.5) {
                0
            } else {
                rng.size(1, 128 * KIB)
            };
            (
                EndPlan {
                    write: aw,
                    control: vec![(trigger, action)],
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
                EndPlan {
                    write: random_write(&mut rng, bw_total),
                    control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
                    read: br,
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
            )
        }
        Kind::ShutdownWhileBlocked => {
            let total = window * rng.range(3, 6) + rng.range(0, window);
            let mut aw = random_write(&mut rng, total.min(4 * big));
            aw.timeout = rng.chance(0.2).then(|| rng.millis(2000, 5000));
            aw.retry_timeouts = true;
            aw.flush_every = None;
            aw.pause_every = None;
            let action = if rng.chance(0.6) {
                Action::ShutdownWrite
            } else {
                Action::ShutdownBoth
            };
            let mut br = ReadPlan::to_end(&mut rng);
            br.pause = Some((rng.range(0, window / 2), rng.millis(4500, 6000)));
            (
                EndPlan {
                    write: aw,
                    control: vec![(Trigger::Delay(rng.millis(200, 1500)), action)],
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
                EndPlan {
                    // B keeps its direction open until it has read A's
                    // FIN: A's worker must not end early and wake the
                    // blocked write for the wrong reason.
                    write: if rng.chance(0.5) {
                        WritePlan::none()
                    } else {
                        let total = rng.size(1, 16 * KIB);
                        random_write(&mut rng, total)
                    },
                    control: vec![(Trigger::WriterDoneAndReaderEnded, Action::ShutdownWrite)],
                    read: br,
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: false,
                    linger: None,
                },
            )
        }
        Kind::DropWithUnread => {
            let b_total = rng.size(window, big);
            let mut ar = ReadPlan::to_end(&mut rng);
            ar.stop_after = Some(rng.range(0, b_total / 2));
            let a_total = rng.size(window / 2, big * 2);
            let mut aw = random_write(&mut rng, a_total);
            // A stops reading: its writer must end on its own.
            aw.timeout = Some(rng.millis(100, 1500));
            let mut bw = random_write(&mut rng, b_total);
            bw.timeout = Some(rng.millis(50, 1000));
            bw.retry_timeouts = false;
            let b_control = if rng.chance(0.3) {
                vec![(Trigger::WriterDone, Action::ShutdownWrite)]
            } else {
                vec![]
            };
            (
                EndPlan {
                    write: aw,
                    control: vec![],
                    read: ar,
                    hold: if rng.chance(0.7) {
                        Duration::ZERO
                    } else {
                        rng.millis(1, 200)
                    },
                    patience: Duration::ZERO,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
                EndPlan {
                    write: bw,
                    control: b_control,
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
            )
        }
        Kind::CleanDrop => {
            let (a_total, b_total) = (rng.size(1, big), rng.size(1, 64 * KIB));
            let aw = random_write(&mut rng, a_total);
            let bw = random_write(&mut rng, b_total);
            (
                EndPlan {
                    write: aw,
                    control: vec![],
                    read: ReadPlan::to_end(&mut rng),
                    hold: rng.millis(0, 50),
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
                EndPlan {
                    write: bw,
                    control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
            )
        }
        Kind::ShutdownThenFlush => {
            let (a_total, b_total) = (rng.size(1, big / 2), rng.size(1, big / 2));
            let aw = random_write(&mut rng, a_total);
            let bw = random_write(&mut rng, b_total);
            let mut b_control = vec![(Trigger::WriterDone, Action::ShutdownWrite)];
            if rng.chance(0.5) {
                b_control.push((Trigger::Delay(Duration::ZERO), Action::Flush));
            }
            (
                EndPlan {
                    write: aw,
                    control: vec![
                        (Trigger::WriterDoneAndReaderEnded, Action::ShutdownWrite),
                        (Trigger::Delay(rng.millis(0, 5)), Action::Flush),
                    ],
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
                EndPlan {
                    write: bw,
                    control: b_control,
                    read: ReadPlan::to_end(&mut rng),
                    hold: rng.millis(0, 20),
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
            )
        }
        Kind::FlushRace => {
            let a_total = rng.size(1, big);
            let mut aw = random_write(&mut rng, a_total);
            aw.flush_every = Some(rng.range(1, 4) as u32);
            let mut control = vec![(Trigger::Delay(rng.millis(0, 300)), Action::Flush)];
            control.push((
                if rng.chance(0.5) {
                    Trigger::Delay(rng.millis(0, 300))
                } else {
                    Trigger::WriterDone
                },
                Action::ShutdownWrite,
            ));
            control.push((Trigger::Delay(Duration::ZERO), Action::Flush));
            (
                EndPlan {
                    write: aw,
                    control,
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
                EndPlan {
                    write: {
                        let total = rng.size(1, 64 * KIB);
                        random_write(&mut rng, total)
                    },
                    control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
            )
        }
        Kind::AbortiveClose => {
            let a_total = rng.size(1, big * 2);
            let mut aw = random_write(&mut rng, a_total);
            aw.timeout = Some(rng.millis(100, 1500));
            let b_total = if rng.chance(0.5) {
                0
            } else {
                rng.size(1, 64 * KIB)
            };
            let mut ar = ReadPlan::to_end(&mut rng);
            if rng.chance(0.3) {
                ar.stop_after = Some(rng.range(0, b_total));
            }
            (
                EndPlan {
                    write: aw,
                    control: if rng.chance(0.3) {
                        vec![(Trigger::Delay(rng.millis(0, 300)), Action::Flush)]
                    } else {
                        vec![]
                    },
                    read: ar,
                    hold: if rng.chance(0.7) {
                        Duration::ZERO
                    } else {
                        rng.millis(1, 100)
                    },
                    patience: rng.millis(0, 500),
                    nodelay: rng.chance(0.3),
                    linger: Some(Duration::ZERO),
                },
                EndPlan {
                    write: random_write(&mut rng, b_total),
                    control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
                    read: ReadPlan::to_end(&mut rng),
                    hold: Duration::ZERO,
                    patience: long,
                    nodelay: rng.chance(0.3),
                    linger: None,
                },
            )
        }
        Kind::Chaos => {
            let a = chaos_end(&mut rng, window, big);
            let b = chaos_end(&mut rng, window, big);
            (a, b)
        }
    };
    let (mut a, mut b) = (a, b);
    // A reader that waits a long time only makes sense if its peer will
    // end its direction by itself; a reader that stops for good needs a
    // writer on its end that gives up by itself (or both ends could wait
    // for each other forever, legitimately).
    if kind == Kind::Chaos {
        let (a_shuts, b_shuts) = (a.shuts_down_writing(), b.shuts_down_writing());
        let short = Duration::from_millis(300);
        if !b_shuts {
            a.patience = a.patience.min(short);
        }
        if !a_shuts {
            b.patience = b.patience.min(short);
        }
    }
    for end in [&mut a, &mut b] {
        if end.read.stop_after.is_some() && end.write.timeout.is_none() {
            end.write.timeout = Some(Duration::from_millis(500));
        }
    }
    let a_is_client = rng.chance(0.5);
    let (client, server) = if a_is_client { (a, b) } else { (b, a) };
    Plan {
        seed,
        kind,
        profile,
        a_is_client,
        client,
        server,
    }
}

fn chaos_end(rng: &mut Rng, window: u64, big: u64) -> EndPlan {
    let total = match rng.range(0, 3) {
        0 => 0,
        1 => rng.size(1, 64 * KIB),
        _ => rng.size(window, big * 2),
    };
    let write = random_write(rng, total);
    let mut control = Vec::new();
    for _ in 0..rng.range(0, 3) {
        let trigger = match rng.range(0, 2) {
            0 => Trigger::Delay(rng.millis(0, 800)),
            1 => Trigger::Accepted(rng.range(0, total)),
            _ => Trigger::WriterDone,
        };
        let action = rng.pick(&[
            Action::ShutdownWrite,
            Action::ShutdownWrite,
            Action::ShutdownBoth,
            Action::Flush,
            Action::Flush,
            Action::ShutdownRead,
        ]);
        control.push((trigger, action));
    }
    let mut read = ReadPlan::to_end(rng);
    if rng.chance(0.3) {
        read.pause = Some((rng.range(0, window), rng.millis(10, 2000)));
    }
    if rng.chance(0.25) {
        read.stop_after = Some(rng.range(0, big));
    }
    EndPlan {
        write,
        control,
        read,
        hold: rng.millis(0, 100),
        patience: rng.millis(0, 3000),
        nodelay: rng.chance(0.3),
        linger: match rng.range(0, 6) {
            0 => Some(Duration::ZERO),
            1 => Some(rng.millis(1, 200)),
            _ => None,
        },
    }
}

// ---------------------------------------------------------------------
// What one end records while its threads run.

/// The threads of one end, each with at most one call in progress.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Writer = 0,
    Reader = 1,
    Controller = 2,
    Closer = 3,
}

const SLOT_NAMES: [&str; 4] = ["writer", "reader", "controller", "closer"];

struct Call {
    what: String,
    started: Instant,
    /// How long it may take, with slack; `None`: as long as it likes.
    bound: Option<Duration>,
    flagged: bool,
}

#[derive(Debug, Clone)]
enum ReadEnd {
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
struct CallError {
    t: Duration,
    op: &'static str,
    kind: io::ErrorKind,
    text: String,
    /// This end had started `shutdown(Write)` before the call.
    after_own_shutdown: bool,
}

#[derive(Default)]
struct EndState {
    accepted: u64,
    writer_done: bool,
    controller_done: bool,
    reader: Option<(ReadEnd, Instant)>,
    read_total: u64,
    /// This end shut down its own reading (the reader's `Ok(0)` then is
    /// not the peer's FIN).
    local_read_shut: Option<Instant>,
    write_shut_called: Option<Instant>,
    write_shut_returned: Option<Instant>,
    write_shut_ok: Option<Instant>,
    errors: Vec<CallError>,
    /// Accepted writes: (called, returned, offset, bytes).
    accepted_writes: Vec<(Duration, Duration, u64, u64)>,
    flushes_failed: Vec<CallError>,
    shutdowns_failed: Vec<CallError>,
    dropped: Option<(Instant, u64)>,
    /// Closed with `set_linger(Some(ZERO))`.
    abortive: bool,
}

struct End {
    name: &'static str,
    start: Instant,
    state: Mutex<EndState>,
    changed: Condvar,
    calls: [Mutex<Option<Call>>; 4],
    events: Mutex<Vec<String>>,
    violations: Arc<Mutex<Vec<Violation>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl End {
    fn new(name: &'static str, start: Instant, violations: Arc<Mutex<Vec<Violation>>>) -> End {
        End {
            name,
            start,
            state: Mutex::new(EndState::default()),
            changed: Condvar::new(),
            calls: Default::default(),
            events: Mutex::new(Vec::new()),
            violations,
        }
    }

    fn at(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.start)
    }

    fn event(&self, slot: Slot, text: String) {
        let t = self.start.elapsed();
        lock(&self.events).push(format!(
            "{:>8.3}s {} {}: {text}",
            t.as_secs_f64(),
            self.name,
            SLOT_NAMES[slot as usize]
        ));
    }

    fn violate(&self, category: &'static str, text: String) {
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
    fn call<T>(
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

    fn update(&self, f: impl FnOnce(&mut EndState)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }

    /// Waits until `ready` holds or `limit` passes; whether it holds.
    fn wait_for(&self, limit: Duration, ready: impl Fn(&EndState) -> bool) -> bool {
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

    fn record_error(&self, op: &'static str, err: &io::Error) -> CallError {
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
struct Violation {
    category: &'static str,
    text: String,
}

// ---------------------------------------------------------------------
// The threads of one end.

fn plus_slack(timeout: Option<Duration>) -> Option<Duration> {
    timeout.map(|t| t + SLACK)
}

fn writer(end: &End, stream: &Stream, plan: &WritePlan, salt: u64, rng: &mut Rng) {
    let mut offset = 0u64;
    let mut writes = 0u32;
    let mut buf = Vec::new();
    while offset < plan.total && end.start.elapsed() < WRITER_DEADLINE {
        let len = rng.size(1, plan.max_write).min(plan.total - offset) as usize;
        buf.resize(len, 0);
        fill_pattern(salt, offset, &mut buf);
        let what = format!("write({len}) at {offset}");
        let t0 = end.start.elapsed();
        let result = end.call(Slot::Writer, what, plus_slack(plan.timeout), || {
            (&*stream).write(&buf)
        });
        writes += 1;
        match result {
            Ok(0) => {
                end.event(
                    Slot::Writer,
                    format!("write({len}) at {offset} (called at {t0:.3?}) -> Ok(0)"),
                );
                end.violate("write-ok-0", format!("write of {len} bytes returned Ok(0)"));
                break;
            }
            Ok(n) => {
                end.event(
                    Slot::Writer,
                    format!(
                        "write({len}) at {offset} (called at {t0:.3?}) -> Ok({n}) [{offset}..{})",
                        offset + n as u64
                    ),
                );
                let t1 = end.start.elapsed();
                end.update(|s| {
                    s.accepted_writes.push((t0, t1, offset, n as u64));
                    s.accepted = offset + n as u64;
                });
                offset += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                end.event(
                    Slot::Writer,
                    format!("write({len}) at {offset} (called at {t0:.3?}) -> {err:?}"),
                );
                if !plan.retry_timeouts {
                    break;
                }
                continue;
            }
            Err(err) => {
                end.event(
                    Slot::Writer,
                    format!("write({len}) at {offset} (called at {t0:.3?}) -> {err:?}"),
                );
                end.record_error("write", &err);
                break;
            }
        }
        if plan.flush_every.is_some_and(|k| writes.is_multiple_of(k))
            && !flush(end, Slot::Writer, stream, plan.timeout)
        {
            break;
        }
        if let Some((k, pause)) = plan.pause_every
            && writes.is_multiple_of(k)
        {
            thread::sleep(pause);
        }
    }
    end.event(Slot::Writer, format!("done, {offset} bytes accepted"));
    end.update(|s| s.writer_done = true);
}

/// Flushes; whether writing may go on.
fn flush(end: &End, slot: Slot, stream: &Stream, timeout: Option<Duration>) -> bool {
    let result = end.call(
        slot,
        "flush".into(),
        Some(timeout.unwrap_or(QUICK) + SLACK),
        || (&*stream).flush(),
    );
    end.event(slot, format!("flush -> {result:?}"));
    match result {
        Ok(()) => true,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => true,
        Err(err) => {
            let e = end.record_error("flush", &err);
            lock(&end.state).flushes_failed.push(e);
            false
        }
    }
}

fn controller(end: &End, stream: &Stream, plan: &EndPlan) {
    for &(trigger, action) in &plan.control {
        match trigger {
            Trigger::Delay(d) => thread::sleep(d),
            Trigger::Accepted(n) => {
                end.wait_for(Duration::from_secs(3), |s| s.accepted >= n || s.writer_done);
            }
            Trigger::WriterDone => {
                end.wait_for(Duration::from_secs(20), |s| s.writer_done);
            }
            Trigger::WriterDoneAndReaderEnded => {
                end.wait_for(READER_DEADLINE, |s| s.writer_done && s.reader.is_some());
            }
        }
        let bound = Some(plan.write.timeout.unwrap_or(QUICK) + SLACK);
        match action {
            Action::Flush => {
                flush(end, Slot::Controller, stream, plan.write.timeout);
            }
            Action::ShutdownRead => {
                end.update(|s| {
                    s.local_read_shut.get_or_insert(Instant::now());
                });
                let result = end.call(
                    Slot::Controller,
                    "shutdown(Read)".into(),
                    Some(SLACK),
                    || stream.shutdown(Shutdown::Read),
                );
                end.event(Slot::Controller, format!("shutdown(Read) -> {result:?}"));
                if let Err(err) = result {
                    end.record_error("shutdown(Read)", &err);
                }
            }
            Action::ShutdownWrite | Action::ShutdownBoth => {
                let how = if action == Action::ShutdownBoth {
                    Shutdown::Both
                } else {
                    Shutdown::Write
                };
                end.update(|s| {
                    let now = Instant::now();
                    s.write_shut_called.get_or_insert(now);
                    if how == Shutdown::Both {
                        s.local_read_shut.get_or_insert(now);
                    }
                });
                let accepted = lock(&end.state).accepted;
                let result = end.call(
                    Slot::Controller,
                    format!("shutdown({how:?})"),
                    bound,
                    || stream.shutdown(how),
                );
                end.event(
                    Slot::Controller,
                    format!("shutdown({how:?}) with {accepted} accepted -> {result:?}"),
                );
                let now = Instant::now();
                match result {
                    Ok(()) => end.update(|s| {
                        s.write_shut_returned.get_or_insert(now);
                        s.write_shut_ok.get_or_insert(now);
                    }),
                    Err(err) => {
                        end.update(|s| {
                            s.write_shut_returned.get_or_insert(now);
                        });
                        if err.kind() != io::ErrorKind::WouldBlock {
                            let e = end.record_error("shutdown", &err);
                            lock(&end.state).shutdowns_failed.push(e);
                        }
                    }
                }
            }
        }
    }
    end.update(|s| s.controller_done = true);
}

fn reader(end: &End, stream: &Stream, plan: &ReadPlan, salt: u64, rng: &mut Rng) {
    let mut total = 0u64;
    let mut paused = false;
    let mut buf = vec![0; plan.max_buf as usize];
    let outcome = loop {
        if plan.stop_after.is_some_and(|n| total >= n) {
            break ReadEnd::Stopped;
        }
        if let Some((after, pause)) = plan.pause
            && !paused
            && total >= after
        {
            paused = true;
            end.event(Slot::Reader, format!("pausing {pause:?} at {total}"));
            thread::sleep(pause);
        }
        if end.start.elapsed() > READER_DEADLINE {
            break ReadEnd::GaveUp;
        }
        let timeout = match plan.timeouts {
            ReadTimeouts::Never => None,
            ReadTimeouts::Always(lo, hi) => Some(rng.millis(lo, hi)),
            ReadTimeouts::Mixed => rng.chance(0.8).then(|| rng.millis(1, 300)),
        };
        // The deadline is checked between reads: no read without a
        // timeout once it is near.
        let timeout = match timeout {
            None if end.start.elapsed() + SLACK > READER_DEADLINE => Some(SLACK),
            t => t,
        };
        stream.set_read_timeout(timeout).expect("set_read_timeout");
        let mut len = rng.size(1, plan.max_buf) as usize;
        if let Some(stop) = plan.stop_after {
            len = len.min((stop - total).max(1) as usize);
        }
        let t0 = end.start.elapsed();
        let result = end.call(
            Slot::Reader,
            format!("read({len}) at {total}, timeout {timeout:?}"),
            plus_slack(timeout),
            || (&*stream).read(&mut buf[..len]),
        );
        match result {
            Ok(0) => {
                let local = lock(&end.state).local_read_shut.is_some();
                end.event(
                    Slot::Reader,
                    format!("read -> Ok(0) at {total} (local shutdown: {local})"),
                );
                break if local {
                    ReadEnd::LocalShutdown
                } else {
                    ReadEnd::Eof
                };
            }
            Ok(n) => {
                if let Some(i) = first_mismatch(salt, total, &buf[..n]) {
                    let at = total + i as u64;
                    let found = locate(salt, &buf[i..n], at + 8 * 1024 * 1024);
                    end.event(
                        Slot::Reader,
                        format!("read -> Ok({n}) at {total}: WRONG BYTES at {at}"),
                    );
                    end.violate(
                        "corrupt",
                        format!(
                            "read {n} bytes at offset {total}: byte {at} differs from what was written there; \
                             the bytes from {at} on are the stream's bytes from {}",
                            match found {
                                Some(j) => format!("offset {j} (a {} of {} bytes)", if j < at { "duplicate/rewind" } else { "gap/skip" }, at.abs_diff(j)),
                                None => "nowhere in the first 8 MiB (foreign data)".to_string(),
                            }
                        ),
                    );
                    total += i as u64;
                    end.update(|s| s.read_total = total);
                    break ReadEnd::Corrupt;
                }
                total += n as u64;
                end.update(|s| s.read_total = total);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => {
                end.event(
                    Slot::Reader,
                    format!("read at {total} (called at {t0:.3?}) -> {err:?}"),
                );
                end.record_error("read", &err);
                break ReadEnd::Error(err.kind(), err.to_string());
            }
        }
    };
    end.event(
        Slot::Reader,
        format!("done: {outcome:?} after {total} bytes"),
    );
    let now = Instant::now();
    end.update(|s| s.reader = Some((outcome, now)));
}

/// Runs one end: its writer, reader and controller threads, then closes
/// it as the plan says. Returns when the stream is dropped.
fn run_end(
    end: Arc<End>,
    stream: Stream,
    plan: EndPlan,
    salts: (u64, u64),
    seed: u64,
    linger: Duration,
) {
    stream.set_nodelay(plan.nodelay).expect("set_nodelay");
    stream.set_linger(plan.linger).expect("set_linger");
    let linger = plan.linger.unwrap_or(linger);
    stream
        .set_write_timeout(plan.write.timeout)
        .expect("set_write_timeout");
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .expect("a thread")
    };
    let w = {
        let (end, stream, plan) = (end.clone(), stream.try_clone().unwrap(), plan.write.clone());
        spawn(
            "stress-writer",
            Box::new(move || writer(&end, &stream, &plan, salts.0, &mut Rng::new(mix(seed ^ 1)))),
        )
    };
    let r = {
        let (end, stream, plan) = (end.clone(), stream.try_clone().unwrap(), plan.read.clone());
        spawn(
            "stress-reader",
            Box::new(move || reader(&end, &stream, &plan, salts.1, &mut Rng::new(mix(seed ^ 2)))),
        )
    };
    let c = {
        let (end, stream, plan) = (end.clone(), stream.try_clone().unwrap(), plan.clone());
        spawn(
            "stress-controller",
            Box::new(move || controller(&end, &stream, &plan)),
        )
    };
    for (name, handle) in [("writer", w), ("controller", c)] {
        if handle.join().is_err() {
            end.violate("test-panic", format!("the {name} thread panicked"));
        }
    }
    thread::sleep(plan.hold);
    if !end.wait_for(plan.patience, |s| s.reader.is_some()) {
        end.update(|s| {
            s.local_read_shut.get_or_insert(Instant::now());
        });
        let result = end.call(
            Slot::Closer,
            "shutdown(Read) to stop the reader".into(),
            Some(SLACK),
            || stream.shutdown(Shutdown::Read),
        );
        end.event(
            Slot::Closer,
            format!("patience over: shutdown(Read) -> {result:?}"),
        );
    }
    if r.join().is_err() {
        end.violate("test-panic", "the reader thread panicked".into());
    }
    let read_total = lock(&end.state).read_total;
    if plan.linger == Some(Duration::ZERO) {
        end.update(|s| s.abortive = true);
    }
    // Dropping waits up to the linger for the worker twice, and up to a
    // second for the inbox.
    let bound = Some(2 * linger + Duration::from_secs(1) + SLACK);
    end.call(
        Slot::Closer,
        format!("drop (read {read_total})"),
        bound,
        || drop(stream),
    );
    end.event(Slot::Closer, format!("dropped, having read {read_total}"));
    let now = Instant::now();
    end.update(|s| s.dropped = Some((now, read_total)));
}

/// Watches both ends' calls until `finished`, flagging calls past their
/// bound and writes left blocked by their own end's shutdown.
fn monitor(ends: &[Arc<End>; 2], finished: &AtomicBool) {
    while !finished.load(Ordering::SeqCst) {
        let now = Instant::now();
        for end in ends {
            let (shut_returned, read_shut) = {
                let s = lock(&end.state);
                (s.write_shut_returned, s.local_read_shut)
            };
            for (i, slot) in end.calls.iter().enumerate() {
                let mut slot = lock(slot);
                let Some(call) = slot.as_mut() else { continue };
                if call.flagged {
                    continue;
                }
                let ran = now - call.started;
                let mut why = None;
                if call.bound.is_some_and(|b| ran > b) {
                    why = Some((
                        "overran",
                        format!(
                            "{} still running after {ran:.1?} (bound {:?})",
                            call.what,
                            call.bound.unwrap()
                        ),
                    ));
                } else if i == Slot::Writer as usize
                    && let Some(shut) = shut_returned
                    && call.started < shut
                    && now > shut + WAKE
                {
                    why = Some((
                        "write-not-woken-by-shutdown",
                        format!(
                            "{} blocked since {:.3}s, still blocked {:.1?} after this end's shutdown(Write) returned at {:.3}s",
                            call.what,
                            end.at(call.started).as_secs_f64(),
                            now - shut,
                            end.at(shut).as_secs_f64()
                        ),
                    ));
                } else if i == Slot::Reader as usize
                    && let Some(shut) = read_shut
                    && call.started < shut
                    && now > shut + WAKE
                {
                    why = Some((
                        "read-not-woken-by-shutdown",
                        format!(
                            "{} still blocked {:.1?} after this end shut down reading",
                            call.what,
                            now - shut
                        ),
                    ));
                }
                if let Some((category, text)) = why {
                    call.flagged = true;
                    drop(slot);
                    end.event(Slot::Closer, format!("MONITOR: {text}"));
                    end.violate(category, format!("{} {text}", SLOT_NAMES[i]));
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------
// The checks, once both ends are done.

/// Why `end` may have failed its peer's reads: its errors (not timeouts,
/// not writes refused after its own shutdown) and whether its close was
/// abortive (it left data unread).
fn failure_evidence(end: &EndState, peer: &EndState) -> Vec<String> {
    let mut why: Vec<String> = end
        .errors
        .iter()
        .filter(|e| {
            !(e.kind == io::ErrorKind::BrokenPipe && e.after_own_shutdown && e.op == "write")
        })
        .map(|e| {
            format!(
                "{} failed at {:.3}s: {:?} {}",
                e.op,
                e.t.as_secs_f64(),
                e.kind,
                e.text
            )
        })
        .collect();
    if end.abortive {
        why.push("closed abortively (linger 0)".to_string());
    }
    if let Some((_, read)) = end.dropped
        && read < peer.accepted
    {
        why.push(format!(
            "closed with possibly unread data (read {read} of {} accepted from the peer)",
            peer.accepted
        ));
    }
    why
}

fn check_direction(from: &End, to: &End, violations: &mut Vec<Violation>) {
    let (f, t) = (lock(&from.state), lock(&to.state));
    let accepted = f.accepted;
    let got = t.read_total;
    let dir = format!("{} -> {}", from.name, to.name);
    if got > accepted {
        violations.push(Violation {
            category: "excess",
            text: format!("{dir}: read {got} bytes, but writes accepted only {accepted}"),
        });
    }
    let evidence = failure_evidence(&f, &t);
    let Some((outcome, ended)) = t.reader.clone() else {
        violations.push(Violation {
            category: "test-panic",
            text: format!("{dir}: the reader never finished"),
        });
        return;
    };
    match &outcome {
        ReadEnd::Eof if got < accepted => {
            let shut = f
                .write_shut_called
                .map(|s| format!("{:.3}s", from.at(s).as_secs_f64()))
                .unwrap_or_else(|| "never".into());
            let dropped = f
                .dropped
                .map(|(d, _)| format!("{:.3}s", from.at(d).as_secs_f64()))
                .unwrap_or_else(|| "never".into());
            let lost_write = f
                .accepted_writes
                .iter()
                .find(|(_, _, at, n)| *at <= got && got < at + n)
                .map(|(t0, t1, at, n)| {
                    format!(
                        "write [{at}..{}) called at {:.3}s, returned Ok at {:.3}s",
                        at + n,
                        t0.as_secs_f64(),
                        t1.as_secs_f64()
                    )
                })
                .unwrap_or_default();
            violations.push(Violation {
                category: "clean-eof-after-prefix",
                text: format!(
                    "{dir}: CLEAN EOF after {got} of {accepted} accepted bytes ({} lost); the first lost byte came from {lost_write}; writer's shutdown(Write) called at {shut}, dropped at {dropped}; writer's own evidence of failure: {evidence:?}",
                    accepted - got
                ),
            });
        }
        ReadEnd::Error(kind, text) if evidence.is_empty() => {
            violations.push(Violation {
                category: "spurious-error",
                text: format!(
                    "{dir}: the reader failed ({kind:?} {text}) after {got} of {accepted} bytes, though the writer saw no error and closed cleanly"
                ),
            });
        }
        ReadEnd::GaveUp | ReadEnd::LocalShutdown => {
            let closed = [f.write_shut_ok, f.dropped.map(|(d, _)| d)]
                .into_iter()
                .flatten()
                .min();
            if let Some(closed) = closed
                && ended > closed + END_GRACE
            {
                violations.push(Violation {
                    category: "no-end",
                    text: format!(
                        "{dir}: the writer closed its direction at {:.3}s ({accepted} bytes), but the reader saw neither EOF nor an error by {:.3}s ({outcome:?}, {got} bytes read)",
                        from.at(closed).as_secs_f64(),
                        to.at(ended).as_secs_f64()
                    ),
                });
            }
        }
        _ => {}
    }
    // A healthy stream: the peer read everything and the FIN, saw no
    // error and closed cleanly; the writer had no trouble either.
    let healthy = matches!(outcome, ReadEnd::Eof)
        && got == accepted
        && t.errors.is_empty()
        && evidence
            .iter()
            .all(|e| e.starts_with("flush") || e.starts_with("shutdown"))
        && failure_evidence(&t, &f).is_empty();
    if healthy {
        for e in f.flushes_failed.iter() {
            violations.push(Violation {
                category: "flush-failed-on-healthy-stream",
                text: format!(
                    "{dir}: flush at {:.3}s failed ({:?} {}) {} though the peer read all {accepted} bytes and a clean EOF",
                    e.t.as_secs_f64(), e.kind, e.text,
                    if e.after_own_shutdown { "after this end's shutdown(Write)" } else { "before shutdown" }
                ),
            });
        }
        for e in f.shutdowns_failed.iter() {
            violations.push(Violation {
                category: "shutdown-failed-on-healthy-stream",
                text: format!(
                    "{dir}: shutdown at {:.3}s failed ({:?} {}) though the peer read all {accepted} bytes and a clean EOF",
                    e.t.as_secs_f64(), e.kind, e.text
                ),
            });
        }
    }
}

// ---------------------------------------------------------------------
// Running schedules.

struct ScheduleResult {
    seed: u64,
    kind: Kind,
    profile: &'static str,
    took: Duration,
    violations: Vec<Violation>,
    abandoned: bool,
}

struct Side {
    client: Connector,
    server: Connector,
}

fn run_schedule(
    plan: &Plan,
    profile: &Profile,
    side: &Side,
    listener: &Listener,
    queue: &str,
) -> (ScheduleResult, String) {
    let started = Instant::now();
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut result = ScheduleResult {
        seed: plan.seed,
        kind: plan.kind,
        profile: profile.name,
        took: Duration::ZERO,
        violations: Vec::new(),
        abandoned: false,
    };
    let client = match side.client.connect(queue) {
        Ok(s) => s,
        Err(err) => {
            result.violations.push(Violation {
                category: "setup",
                text: format!("connect: {err}"),
            });
            return (result, String::new());
        }
    };
    let server = match listener.accept() {
        Ok((s, _)) => s,
        Err(err) => {
            result.violations.push(Violation {
                category: "setup",
                text: format!("accept: {err}"),
            });
            return (result, String::new());
        }
    };
    for (name, s) in [("client", &client), ("server", &server)] {
        if s.protocol_version() != profile.version {
            result.violations.push(Violation {
                category: "setup",
                text: format!(
                    "{name} speaks {} instead of {}",
                    s.protocol_version(),
                    profile.version
                ),
            });
        }
    }
    let start = Instant::now();
    let ends = [
        Arc::new(End::new("client", start, violations.clone())),
        Arc::new(End::new("server", start, violations.clone())),
    ];
    let c2s = mix(plan.seed ^ 0xc2c2_c2c2);
    let s2c = mix(plan.seed ^ 0x5c5c_5c5c);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let linger = profile.options.get_linger();
    for (end, stream, end_plan, salts) in [
        (&ends[0], client, plan.client.clone(), (c2s, s2c)),
        (&ends[1], server, plan.server.clone(), (s2c, c2s)),
    ] {
        let end = end.clone();
        let done = done_tx.clone();
        let seed = mix(plan.seed ^ end.name.len() as u64 ^ salts.0);
        thread::Builder::new()
            .name(format!("stress-{}", end.name))
            .spawn(move || {
                run_end(end, stream, end_plan, salts, seed, linger);
                let _ = done.send(());
            })
            .expect("a thread");
    }
    let finished = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (ends, finished) = (ends.clone(), finished.clone());
        thread::spawn(move || monitor(&ends, &finished))
    };
    let deadline = start + HANG;
    let mut done = 0;
    while done < 2 {
        match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => done += 1,
            Err(_) => break,
        }
    }
    if done < 2 {
        result.abandoned = true;
        let mut text = format!("the schedule did not finish within {HANG:?}; calls still running:");
        for end in &ends {
            for (i, slot) in end.calls.iter().enumerate() {
                if let Some(call) = lock(slot).as_ref() {
                    let _ = write!(
                        text,
                        "\n    {} {}: {} (for {:.1?})",
                        end.name,
                        SLOT_NAMES[i],
                        call.what,
                        call.started.elapsed()
                    );
                }
            }
        }
        lock(&violations).push(Violation {
            category: "hang",
            text,
        });
    }
    finished.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let mut found = std::mem::take(&mut *lock(&violations));
    if !result.abandoned {
        check_direction(&ends[0], &ends[1], &mut found);
        check_direction(&ends[1], &ends[0], &mut found);
    }
    result.violations.extend(found);
    result.took = started.elapsed();
    let mut dump = String::new();
    if !result.violations.is_empty() || std::env::var_os("STRESS_VERBOSE").is_some() {
        let _ = writeln!(
            dump,
            "---- schedule seed={} (STRESS_SEED={}) kind={} profile={} A={} took {:.1?}: {} violations",
            plan.seed,
            plan.seed,
            plan.kind.name(),
            profile.name,
            if plan.a_is_client { "client" } else { "server" },
            result.took,
            result.violations.len()
        );
        let _ = writeln!(dump, "plan: {plan:#?}");
        for v in &result.violations {
            let _ = writeln!(dump, "VIOLATION {}: {}", v.category, v.text);
        }
        for end in &ends {
            let s = lock(&end.state);
            let _ = writeln!(
                dump,
                "{}: accepted {} read {} reader {:?} shutdown(Write) ok at {:?} errors {:?}",
                end.name,
                s.accepted,
                s.read_total,
                s.reader.as_ref().map(|r| &r.0),
                s.write_shut_ok.map(|t| end.at(t)),
                s.errors
                    .iter()
                    .map(|e| format!("{} {:?} {}", e.op, e.kind, e.text))
                    .collect::<Vec<_>>()
            );
        }
        let mut events: Vec<String> = ends.iter().flat_map(|e| lock(&e.events).clone()).collect();
        events.sort();
        let skip = events.len().saturating_sub(60);
        if skip > 0 {
            let _ = writeln!(dump, "  ... {skip} earlier events");
        }
        for e in &events[skip..] {
            let _ = writeln!(dump, "  {e}");
        }
    }
    (result, dump)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn random_schedules_keep_the_stream_guarantees() {
    let profiles = Arc::new(profiles());
    let replay = env_u64("STRESS_SEED");
    let count =
        env_u64("STRESS_SCHEDULES").unwrap_or(if replay.is_some() { 1 } else { 240 }) as usize;
    let lanes = env_u64("STRESS_LANES").unwrap_or(4).max(1) as usize;
    let base = env_u64("STRESS_BASE").unwrap_or_else(|| {
        mix(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64)
    });
    let kind_filter = std::env::var("STRESS_KIND").ok();
    let protocol_filter = std::env::var("STRESS_PROTOCOL").ok();
    let mut seeds = Vec::new();
    let mut i = 0u64;
    while seeds.len() < count {
        let seed = match replay {
            Some(seed) => seed,
            None => mix(base.wrapping_add(i)) >> 1,
        };
        i += 1;
        let p = plan(seed, &profiles);
        let version = format!("v{}", profiles[p.profile].version.number());
        if kind_filter.as_deref().is_some_and(|k| k != p.kind.name())
            || protocol_filter.as_deref().is_some_and(|v| v != version)
        {
            assert!(i < 1_000_000, "no seed matches STRESS_KIND/STRESS_PROTOCOL");
            continue;
        }
        seeds.push(seed);
    }
    eprintln!(
        "stress: {count} schedules, {lanes} at a time, STRESS_BASE={base}{}",
        replay
            .map(|s| format!(", replaying STRESS_SEED={s}"))
            .unwrap_or_default()
    );
    let url = common::url();
    let sides: Arc<Vec<Side>> = Arc::new(
        profiles
            .iter()
            .map(|p| Side {
                client: Connector::open_with(&url, p.options.clone()).expect("client connector"),
                server: Connector::open_with(&url, p.options.clone()).expect("server connector"),
            })
            .collect(),
    );
    let seeds = Arc::new(seeds);
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let lanes: Vec<_> = (0..lanes)
        .map(|lane| {
            let (profiles, sides, seeds, next, results) = (
                profiles.clone(),
                sides.clone(),
                seeds.clone(),
                next.clone(),
                results.clone(),
            );
            thread::spawn(move || {
                let mut listeners: BTreeMap<usize, (Listener, String)> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(i) else { break };
                    let plan = plan(seed, &profiles);
                    let (listener, queue) = listeners.entry(plan.profile).or_insert_with(|| {
                        let queue = common::queue(&format!(
                            "stress-{lane}-{}",
                            profiles[plan.profile].name
                        ));
                        let listener = sides[plan.profile]
                            .server
                            .bind(&queue)
                            .expect("bind a listener");
                        (listener, queue)
                    });
                    let (result, dump) = run_schedule(
                        &plan,
                        &profiles[plan.profile],
                        &sides[plan.profile],
                        listener,
                        queue,
                    );
                    if !dump.is_empty() {
                        eprintln!("{dump}");
                    }
                    let abandoned = result.abandoned;
                    lock(&results).push(result);
                    if abandoned {
                        // Its threads still hold a stream accepted from
                        // this listener: use a fresh one.
                        listeners.remove(&plan.profile);
                    }
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.join().expect("a lane panicked");
    }
    let took = started.elapsed();
    let results = std::mem::take(&mut *lock(&results));
    report(&results, &profiles, took, base);
}

fn report(results: &[ScheduleResult], profiles: &[Profile], took: Duration, base: u64) {
    let version_of = |name: &str| {
        profiles
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.version.number())
            .unwrap_or(0)
    };
    // kind × version: runs, failed
    let mut runs: BTreeMap<(Kind, u64), (usize, usize)> = BTreeMap::new();
    // (category, kind, version) -> seeds
    let mut failures: BTreeMap<(&'static str, Kind, u64), Vec<u64>> = BTreeMap::new();
    for r in results {
        let v = version_of(r.profile);
        let entry = runs.entry((r.kind, v)).or_default();
        entry.0 += 1;
        if !r.violations.is_empty() {
            entry.1 += 1;
        }
        let mut cats: Vec<&'static str> = r.violations.iter().map(|v| v.category).collect();
        cats.sort();
        cats.dedup();
        for c in cats {
            failures.entry((c, r.kind, v)).or_default().push(r.seed);
        }
    }
    let failed = results.iter().filter(|r| !r.violations.is_empty()).count();
    let mut text = format!(
        "stress: {} schedules in {took:.1?} (STRESS_BASE={base}), {failed} failed\n  kind                     proto  runs failed\n",
        results.len()
    );
    for ((kind, v), (n, f)) in &runs {
        let _ = writeln!(text, "  {:<24} v{v}   {n:>5} {f:>6}", kind.name());
    }
    if !failures.is_empty() {
        let _ = writeln!(
            text,
            "  violations (category / kind / proto: count, seeds):"
        );
        for ((cat, kind, v), seeds) in &failures {
            let shown: Vec<String> = seeds.iter().take(6).map(|s| s.to_string()).collect();
            let _ = writeln!(
                text,
                "  {cat:<34} {:<24} v{v}: {:>3}  e.g. {}",
                kind.name(),
                seeds.len(),
                shown.join(" ")
            );
        }
        let _ = writeln!(
            text,
            "  replay one with: STRESS_SEED=<seed> cargo test --all-features --test stress -- --nocapture"
        );
    }
    eprintln!("{text}");
    assert_eq!(failed, 0, "{text}");
    common::summary::record(
        "stress: random concurrent schedules",
        &format!("{} schedules, v1 and v2, 5 option profiles", results.len()),
        "races of write/flush/shutdown/drop/read",
        &format!("no violation, {took:.0?}"),
        0,
    );
}
