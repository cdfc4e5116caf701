//! The threads of one end of a stress schedule (writer, reader,
//! controller, closer) and the monitor that watches their calls.

use super::*;

pub(crate) fn plus_slack(timeout: Option<Duration>) -> Option<Duration> {
    timeout.map(|t| t + SLACK)
}

pub(crate) fn writer(end: &End, stream: &Stream, plan: &WritePlan, salt: u64, rng: &mut Rng) {
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
                    s.accepted_writes.push(t0, t1, offset, n as u64);
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
pub(crate) fn flush(end: &End, slot: Slot, stream: &Stream, timeout: Option<Duration>) -> bool {
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

pub(crate) fn controller(end: &End, stream: &Stream, plan: &EndPlan) {
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
            Action::Die => {
                let Some(die) = lock(&end.death).take() else {
                    end.violate("test-panic", "this end cannot die".into());
                    continue;
                };
                die();
                let now = Instant::now();
                end.event(
                    Slot::Controller,
                    "died: its broker connection is cut".into(),
                );
                end.update(|s| s.died = Some(now));
            }
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

pub(crate) fn reader(end: &End, stream: &Stream, plan: &ReadPlan, salt: u64, rng: &mut Rng) {
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
pub(crate) fn run_end(
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
/// bound, writes left blocked by their own end's shutdown and calls left
/// blocked by the peer's death.
pub(crate) fn monitor(ends: &[Arc<End>; 2], finished: &AtomicBool) {
    while !finished.load(Ordering::SeqCst) {
        let now = Instant::now();
        for (e, end) in ends.iter().enumerate() {
            let (shut_returned, read_shut) = {
                let s = lock(&end.state);
                (s.write_shut_returned, s.local_read_shut)
            };
            let peer_died = lock(&ends[1 - e].state).died;
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
                } else if let Some(died) = peer_died
                    && now > died.max(call.started) + PEER_DEATH_NOTICE
                {
                    why = Some((
                        "not-woken-by-peer-death",
                        format!(
                            "{} (since {:.3}s) still running {:.1?} after the peer died at {:.3}s",
                            call.what,
                            end.at(call.started).as_secs_f64(),
                            now - died.max(call.started),
                            end.at(died).as_secs_f64()
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
