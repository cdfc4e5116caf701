//! Stress: random, seeded schedules of `write` / `flush` / `shutdown` /
//! drop / read, run concurrently from several threads on both ends of a
//! stream, protocol versions 1, 2 and 3, with small windows, messages and
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
//!   `flush` and `shutdown` succeed;
//! * when an end dies (a client whose broker connection is cut, as when
//!   its process is killed, after its FIN), every call of the other end
//!   returns within a few keepalive intervals: a writer waiting for the
//!   dead end's credit fails;
//! * memory stays bounded: the process's resident memory, sampled all
//!   through the run, never grows by more than [`MEMORY_BOUND`] over
//!   what it was once the connectors were open, tiny-message schedules
//!   (a peer writing a message per byte to a reader that stops) included.
//!
//! `STRESS_SCHEDULES=N` sets how many schedules run (default 240),
//! `STRESS_SEED=S` replays one schedule (`STRESS_SCHEDULES` times, default
//! once), `STRESS_BASE=B` fixes the seeds of a whole run, `STRESS_LANES=L`
//! how many schedules run at once (default 4), `STRESS_KIND=name` and
//! `STRESS_PROTOCOL=v1|v2|v3` keep only matching seeds, `STRESS_VERBOSE=1`
//! prints every schedule's plan and events, not only failed ones.

#[path = "stress/actors.rs"]
mod actors;
#[path = "stress/check.rs"]
mod check;
mod common;
#[path = "stress/end.rs"]
mod end;
#[path = "stress/kinds.rs"]
mod kinds;
#[path = "stress/plan.rs"]
mod plan;

use actors::*;
use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use check::*;
use common::schedule::{Rng, fill_pattern, first_mismatch, locate, mix};
use end::*;
use kinds::*;
use plan::*;
use std::collections::{BTreeMap, VecDeque};
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
/// Every call of an end must return this long after its peer died (or
/// after it started, if later): a few keepalive intervals (500 ms at
/// most in the profiles), plus slack.
const PEER_DEATH_NOTICE: Duration = Duration::from_secs(2).saturating_add(SLACK);

const KIB: u64 = 1024;

/// How far the process's resident memory may grow during a run: a few
/// windows and bulk transfers per lane (2 MiB each at most), with room
/// for the allocator. A stream that held a delivery of some hundred
/// bytes per byte of window (version 3 before message costs) grew by
/// far more in one tiny-message schedule.
const MEMORY_BOUND: u64 = 256 * KIB * KIB;

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
    // A client that dies has a broker connection of its own, through a
    // relay that cuts it.
    let mortal = plan.client.dies().then(|| {
        let relay = Arc::new(common::relay::Relay::to_broker());
        let connector = Connector::open_with(&relay.url(), profile.options.clone());
        (relay, connector)
    });
    let connected = match &mortal {
        Some((_, Ok(connector))) => connector.connect(queue),
        Some((_, Err(err))) => Err(io::Error::new(err.kind(), err.to_string())),
        None => side.client.connect(queue),
    };
    let client = match connected {
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
    if let Some((relay, _)) = &mortal {
        let relay = Arc::clone(relay);
        *lock(&ends[0].death) = Some(Box::new(move || relay.cut()));
    }
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
        let let_go: usize = ends.iter().map(|e| lock(&e.events).1).sum();
        let mut events: Vec<String> = ends
            .iter()
            .flat_map(|e| lock(&e.events).0.clone())
            .collect();
        events.sort();
        let skip = events.len().saturating_sub(60) + let_go;
        if skip > 0 {
            let _ = writeln!(dump, "  ... {skip} earlier events");
        }
        for e in &events[skip - let_go..] {
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
    let memory = common::MemoryPeak::start();
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
    let grown = memory.stop();
    let results = std::mem::take(&mut *lock(&results));
    report(&results, &profiles, took, base, grown);
}

fn report(results: &[ScheduleResult], profiles: &[Profile], took: Duration, base: u64, grown: u64) {
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
        "stress: {} schedules in {took:.1?} (STRESS_BASE={base}), {failed} failed, resident memory +{} MiB at most (bound {} MiB)\n  kind                     proto  runs failed\n",
        results.len(),
        grown / KIB / KIB,
        MEMORY_BOUND / KIB / KIB
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
    assert!(
        grown <= MEMORY_BOUND,
        "resident memory grew by {} MiB, more than {} MiB\n{text}",
        grown / KIB / KIB,
        MEMORY_BOUND / KIB / KIB
    );
    common::summary::record(
        "stress: random concurrent schedules",
        &format!(
            "{} schedules, v1, v2 and v3, {} option profiles",
            results.len(),
            profiles.len()
        ),
        "races of write/flush/shutdown/drop/read",
        &format!(
            "no violation, {took:.0?}, resident +{} MiB at most",
            grown / KIB / KIB
        ),
        0,
    );
}
