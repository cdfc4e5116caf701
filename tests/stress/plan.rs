//! Stress schedules: the option profiles and, drawn from a seed, what
//! each end of one schedule does.

use super::*;

pub(crate) struct Profile {
    pub(crate) name: &'static str,
    pub(crate) version: ProtocolVersion,
    pub(crate) options: StreamOptions,
    /// A large amount of data for one direction with these options.
    pub(crate) big: u64,
}

pub(crate) fn profiles() -> Vec<Profile> {
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
        Profile {
            name: "v3-tiny-window",
            version: ProtocolVersion::V3,
            options: base(ProtocolVersion::V3)
                .window(4 * 1024)
                .max_message_size(1024)
                .write_queue(1)
                .linger(Duration::from_millis(2))
                .keepalive_interval(Duration::from_millis(100)),
            big: 128 * KIB,
        },
        Profile {
            name: "v3-default",
            version: ProtocolVersion::V3,
            options: base(ProtocolVersion::V3)
                .linger(Duration::from_secs(2))
                .keepalive_interval(Duration::from_millis(500)),
            big: 2048 * KIB,
        },
    ]
}

// ---------------------------------------------------------------------
// Plans: what each end of one schedule does, drawn from its seed.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
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
    /// A (the client) writes a little, shuts down writing and reads
    /// little; B writes far more than A's window; then A dies (its broker
    /// connection is cut, as when its process is killed).
    DieAfterFin,
    /// A writes one to a few bytes per write with `nodelay` (a message
    /// each) while B stops reading for seconds: what B's process holds
    /// must stay within the run's memory bound.
    TinyMessages,
}

pub(crate) const KINDS: [Kind; 11] = [
    Kind::RaceShutdownWrite,
    Kind::RaceShutdownBoth,
    Kind::ShutdownWhileBlocked,
    Kind::DropWithUnread,
    Kind::CleanDrop,
    Kind::ShutdownThenFlush,
    Kind::FlushRace,
    Kind::AbortiveClose,
    Kind::Chaos,
    Kind::DieAfterFin,
    Kind::TinyMessages,
];

impl Kind {
    pub(crate) fn name(self) -> &'static str {
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
            Kind::DieAfterFin => "die_after_fin",
            Kind::TinyMessages => "tiny_messages",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct WritePlan {
    pub(crate) total: u64,
    pub(crate) max_write: u64,
    pub(crate) timeout: Option<Duration>,
    /// After a write times out, try again (else stop writing).
    pub(crate) retry_timeouts: bool,
    /// Flush after every this many writes.
    pub(crate) flush_every: Option<u32>,
    /// Sleep this long after every this many writes.
    pub(crate) pause_every: Option<(u32, Duration)>,
}

impl WritePlan {
    pub(crate) fn none() -> WritePlan {
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
pub(crate) enum Trigger {
    Delay(Duration),
    /// Once the writer has this many bytes accepted (or is done; 3 s at most).
    Accepted(u64),
    /// Once the writer is done.
    WriterDone,
    /// Once the writer is done and the reader has ended (read the FIN).
    WriterDoneAndReaderEnded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    ShutdownWrite,
    ShutdownBoth,
    ShutdownRead,
    Flush,
    /// The end's broker connection is cut, as when its process dies
    /// (only for the client, whose connection is its own).
    Die,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadTimeouts {
    Never,
    /// Every read with a timeout in this range of milliseconds.
    Always(u64, u64),
    /// Some reads without a timeout, most with one up to 300 ms.
    Mixed,
}

#[derive(Debug, Clone)]
pub(crate) struct ReadPlan {
    pub(crate) max_buf: u64,
    pub(crate) timeouts: ReadTimeouts,
    /// After this many bytes, stop reading for this long.
    pub(crate) pause: Option<(u64, Duration)>,
    /// Stop reading for good after this many bytes.
    pub(crate) stop_after: Option<u64>,
}

impl ReadPlan {
    pub(crate) fn to_end(rng: &mut Rng) -> ReadPlan {
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
pub(crate) struct EndPlan {
    pub(crate) write: WritePlan,
    pub(crate) control: Vec<(Trigger, Action)>,
    pub(crate) read: ReadPlan,
    /// After the writer and the controller are done, wait this long...
    pub(crate) hold: Duration,
    /// ...then at most this long for the reader, then shut down reading,
    /// then drop the stream.
    pub(crate) patience: Duration,
    pub(crate) nodelay: bool,
    /// `Stream::set_linger` before anything else; `Some(ZERO)` makes the
    /// close abortive.
    pub(crate) linger: Option<Duration>,
}

impl EndPlan {
    pub(crate) fn shuts_down_writing(&self) -> bool {
        self.control
            .iter()
            .any(|(_, a)| matches!(a, Action::ShutdownWrite | Action::ShutdownBoth))
    }

    /// Whether this end dies (its broker connection is cut).
    pub(crate) fn dies(&self) -> bool {
        self.control.iter().any(|(_, a)| *a == Action::Die)
    }
}

/// The sizes and times a schedule's plans scale with.
pub(crate) struct Scale {
    /// The peer's window (version 1: a few messages).
    pub(crate) window: u64,
    /// A large amount of data for one direction.
    pub(crate) big: u64,
    /// How long a reader waits for its peer's end.
    pub(crate) long: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) seed: u64,
    pub(crate) kind: Kind,
    pub(crate) profile: usize,
    /// Whether A (the end the kind is about) is the client.
    pub(crate) a_is_client: bool,
    pub(crate) client: EndPlan,
    pub(crate) server: EndPlan,
}

pub(crate) fn write_timeout(rng: &mut Rng) -> Option<Duration> {
    rng.chance(0.4).then(|| rng.millis(20, 1500))
}

pub(crate) fn random_write(rng: &mut Rng, total: u64) -> WritePlan {
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

pub(crate) fn plan(seed: u64, profiles: &[Profile]) -> Plan {
    let mut rng = Rng::new(seed);
    let kind = rng.pick(&KINDS);
    let profile = rng.range(0, profiles.len() as u64 - 1) as usize;
    let p = &profiles[profile];
    let window = if p.version >= ProtocolVersion::V2 {
        p.options.get_window() as u64
    } else {
        p.options.get_max_message_size() as u64 * 4
    };
    let big = p.big;
    let long = READER_DEADLINE + Duration::from_secs(1);
    let scale = Scale { window, big, long };
    let (a, b) = match kind {
        Kind::RaceShutdownWrite | Kind::RaceShutdownBoth => race_shutdown(&mut rng, &scale, kind),
        Kind::ShutdownWhileBlocked => shutdown_while_blocked(&mut rng, &scale),
        Kind::DropWithUnread => drop_with_unread(&mut rng, &scale),
        Kind::CleanDrop => clean_drop(&mut rng, &scale),
        Kind::ShutdownThenFlush => shutdown_then_flush(&mut rng, &scale),
        Kind::FlushRace => flush_race(&mut rng, &scale),
        Kind::AbortiveClose => abortive_close(&mut rng, &scale),
        Kind::Chaos => chaos(&mut rng, &scale),
        Kind::DieAfterFin => die_after_fin(&mut rng, &scale),
        Kind::TinyMessages => tiny_messages(&mut rng, &scale),
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
    // An end that dies is the client: its connection is its own.
    let a_is_client = kind == Kind::DieAfterFin || rng.chance(0.5);
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
