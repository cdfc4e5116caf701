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
}

pub(crate) const KINDS: [Kind; 9] = [
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

pub(crate) fn chaos_end(rng: &mut Rng, window: u64, big: u64) -> EndPlan {
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
