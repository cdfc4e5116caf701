//! What each kind of stress schedule has its two ends do: A is the end
//! the kind is about, B its peer.

use super::*;

/// A writes flat out while its controller shuts down writing (or both) mid-way; B reads to the end.
pub(crate) fn race_shutdown(rng: &mut Rng, s: &Scale, kind: Kind) -> (EndPlan, EndPlan) {
    let (window, big, long) = (s.window, s.big, s.long);
    let total = rng.size(window, big * 2);
    let mut aw = random_write(rng, total);
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
    let mut br = ReadPlan::to_end(rng);
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
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
        EndPlan {
            write: random_write(rng, bw_total),
            control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
            read: br,
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}

/// B stops reading for seconds, so A's write blocks; A shuts down meanwhile.
pub(crate) fn shutdown_while_blocked(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (window, big, long) = (s.window, s.big, s.long);
    let total = window * rng.range(3, 6) + rng.range(0, window);
    let mut aw = random_write(rng, total.min(4 * big));
    aw.timeout = rng.chance(0.2).then(|| rng.millis(2000, 5000));
    aw.retry_timeouts = true;
    aw.flush_every = None;
    aw.pause_every = None;
    let action = if rng.chance(0.6) {
        Action::ShutdownWrite
    } else {
        Action::ShutdownBoth
    };
    let mut br = ReadPlan::to_end(rng);
    br.pause = Some((rng.range(0, window / 2), rng.millis(4500, 6000)));
    (
        EndPlan {
            write: aw,
            control: vec![(Trigger::Delay(rng.millis(200, 1500)), action)],
            read: ReadPlan::to_end(rng),
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
                random_write(rng, total)
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

/// A stops reading early and is dropped right after its last write: an abortive close.
pub(crate) fn drop_with_unread(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (window, big, long) = (s.window, s.big, s.long);
    let b_total = rng.size(window, big);
    let mut ar = ReadPlan::to_end(rng);
    ar.stop_after = Some(rng.range(0, b_total / 2));
    let a_total = rng.size(window / 2, big * 2);
    let mut aw = random_write(rng, a_total);
    // A stops reading: its writer must end on its own.
    aw.timeout = Some(rng.millis(100, 1500));
    let mut bw = random_write(rng, b_total);
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
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}

/// A writes and is dropped without shutdown, having read everything.
pub(crate) fn clean_drop(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (big, long) = (s.big, s.long);
    let (a_total, b_total) = (rng.size(1, big), rng.size(1, 64 * KIB));
    let aw = random_write(rng, a_total);
    let bw = random_write(rng, b_total);
    (
        EndPlan {
            write: aw,
            control: vec![],
            read: ReadPlan::to_end(rng),
            hold: rng.millis(0, 50),
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
        EndPlan {
            write: bw,
            control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}

/// A reads B's FIN, then shuts down writing and flushes.
pub(crate) fn shutdown_then_flush(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (big, long) = (s.big, s.long);
    let (a_total, b_total) = (rng.size(1, big / 2), rng.size(1, big / 2));
    let aw = random_write(rng, a_total);
    let bw = random_write(rng, b_total);
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
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
        EndPlan {
            write: bw,
            control: b_control,
            read: ReadPlan::to_end(rng),
            hold: rng.millis(0, 20),
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}

/// Flushes between writes and from another thread, racing shutdown.
pub(crate) fn flush_race(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (big, long) = (s.big, s.long);
    let a_total = rng.size(1, big);
    let mut aw = random_write(rng, a_total);
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
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
        EndPlan {
            write: {
                let total = rng.size(1, 64 * KIB);
                random_write(rng, total)
            },
            control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}

/// A writes and closes with linger 0.
pub(crate) fn abortive_close(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (big, long) = (s.big, s.long);
    let a_total = rng.size(1, big * 2);
    let mut aw = random_write(rng, a_total);
    aw.timeout = Some(rng.millis(100, 1500));
    let b_total = if rng.chance(0.5) {
        0
    } else {
        rng.size(1, 64 * KIB)
    };
    let mut ar = ReadPlan::to_end(rng);
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
            write: random_write(rng, b_total),
            control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}

/// Everything random on both ends.
pub(crate) fn chaos(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (window, big) = (s.window, s.big);
    let a = chaos_end(rng, window, big);
    let b = chaos_end(rng, window, big);
    (a, b)
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

/// A writes a little, shuts down writing and reads little or nothing,
/// while B writes far more than A's window (without a write timeout, most
/// often); then A dies, its broker connection cut. B's writer, waiting
/// for credit from a peer whose FIN it may have read, must fail within a
/// few keepalive intervals.
pub(crate) fn die_after_fin(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (window, big, long) = (s.window, s.big, s.long);
    let a_total = rng.size(1, 64 * KIB);
    let mut ar = ReadPlan::to_end(rng);
    ar.stop_after = Some(rng.range(0, window / 2));
    let b_total = window * rng.range(3, 6) + rng.range(0, window);
    let mut bw = random_write(rng, b_total.min(4 * big));
    bw.timeout = rng.chance(0.3).then(|| rng.millis(100, 1000));
    bw.retry_timeouts = true;
    bw.flush_every = None;
    bw.pause_every = None;
    (
        EndPlan {
            write: random_write(rng, a_total),
            control: vec![
                (Trigger::WriterDone, Action::ShutdownWrite),
                (Trigger::Delay(rng.millis(0, 1500)), Action::Die),
            ],
            read: ar,
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
        EndPlan {
            write: bw,
            control: if rng.chance(0.5) {
                vec![(Trigger::WriterDoneAndReaderEnded, Action::ShutdownWrite)]
            } else {
                vec![]
            },
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}

/// A writes one to a few bytes per write, each its own message
/// (`nodelay`), as fast as credit lets it, while B stops reading for
/// seconds and then reads to the end: a peer that keeps to the window
/// with tiny messages. B's process must hold little more than the window
/// for it (version 3 counts each message's cost in credit); the run's
/// memory bound checks it.
pub(crate) fn tiny_messages(rng: &mut Rng, s: &Scale) -> (EndPlan, EndPlan) {
    let (window, long) = (s.window, s.long);
    let a_total = window * rng.range(2, 8);
    let mut aw = random_write(rng, a_total);
    aw.max_write = rng.range(1, 8);
    aw.timeout = rng.chance(0.5).then(|| rng.millis(50, 1000));
    aw.retry_timeouts = true;
    aw.flush_every = rng.chance(0.1).then(|| rng.range(64, 4096) as u32);
    aw.pause_every = None;
    let mut br = ReadPlan::to_end(rng);
    br.pause = Some((rng.range(0, window / 4), rng.millis(2000, 5000)));
    let b_total = rng.size(0, 16 * KIB);
    (
        EndPlan {
            write: aw,
            control: vec![(Trigger::WriterDone, Action::ShutdownWrite)],
            read: ReadPlan::to_end(rng),
            hold: Duration::ZERO,
            patience: long,
            nodelay: true,
            linger: None,
        },
        EndPlan {
            write: random_write(rng, b_total),
            control: vec![(Trigger::WriterDoneAndReaderEnded, Action::ShutdownWrite)],
            read: br,
            hold: Duration::ZERO,
            patience: long,
            nodelay: rng.chance(0.3),
            linger: None,
        },
    )
}
