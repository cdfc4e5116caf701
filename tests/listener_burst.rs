//! A burst of connects far above the backlog, on a busy machine: the
//! listener may refuse or delay some of them (as a TCP listener with a
//! full backlog does), but it never stops taking requests: once the burst
//! is over, every request has been acknowledged or rejected, and the next
//! connect is served at once.

mod common;

use amqp_stream::{Connector, ProtocolVersion, StreamOptions};
use common::{queue, queue_state, url};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

const CLIENTS: usize = 1_000;
const BYTES: usize = 64 * 1024;
const ROUNDS: usize = 3;

/// Threads that keep both cores busy until dropped.
struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Spinners {
    fn start(count: usize) -> Spinners {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Spinners { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects, echoes `BYTES` and checks them: `Ok` with the echo's
/// length, or the connect's (or the transfer's) error.
fn echo_once(connector: &Connector, q: &str) -> std::io::Result<usize> {
    let mut s = connector.connect(q)?;
    s.write_all(&vec![7u8; BYTES])?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    assert!(back.iter().all(|&b| b == 7), "the echo came back altered");
    Ok(back.len())
}

fn burst_then_serve(version: ProtocolVersion, tag: &str) {
    let options = StreamOptions::new()
        .protocol_version(Some(version))
        .handshake_timeout(Some(Duration::from_secs(10)));
    let client = Arc::new(Connector::open_with(&url(), options.clone()).unwrap());
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue(tag);
    let listener = Arc::new(server.bind(&q).unwrap());
    let accepting = Arc::clone(&listener);
    let acceptor = thread::spawn(move || {
        for stream in accepting.incoming() {
            let Ok(stream) = stream else { continue };
            thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let Ok(mut reader) = stream.try_clone() else {
                        return;
                    };
                    let mut writer = stream;
                    if std::io::copy(&mut reader, &mut writer).is_ok() {
                        let _ = writer.shutdown(Shutdown::Write);
                    }
                })
                .unwrap();
        }
    });

    let spinners = Spinners::start(2);
    for round in 0..ROUNDS {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, q) = (Arc::clone(&client), q.clone());
                thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || echo_once(&client, &q))
                    .unwrap()
            })
            .collect();
        let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let echoed = results
            .iter()
            .filter(|r| matches!(r, Ok(n) if *n == BYTES))
            .count();
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        eprintln!(
            "{tag} round {round}: {echoed} of {CLIENTS} echoed; failures: {:?}",
            failed.iter().take(3).collect::<Vec<_>>()
        );
        // A stream that connected never loses data quietly: a stream that
        // failed says so (checked in `echo_once`); those that echoed, echoed
        // everything.
        assert!(results.iter().all(|r| !matches!(r, Ok(n) if *n != BYTES)));
    }
    drop(spinners);

    // The burst is over: every request the listener was given has been
    // acknowledged or rejected, none is left in its queue or held unacked.
    common::eventually(
        Duration::from_secs(30),
        "the listener's queue drains",
        || match queue_state(&q) {
            Some((0, 0, 1)) => Ok(()),
            other => Err(format!("(ready, unacked, consumers) = {other:?}")),
        },
    );
    // And the listener serves the next connects at once.
    for _ in 0..20 {
        assert_eq!(echo_once(&client, &q).unwrap(), BYTES);
    }
    listener.close();
    acceptor.join().unwrap();
}

#[test]
fn a_version_3_listener_serves_again_after_bursts_on_a_busy_machine() {
    burst_then_serve(ProtocolVersion::V3, "burst-v3");
}

#[test]
fn a_version_2_listener_serves_again_after_bursts_on_a_busy_machine() {
    burst_then_serve(ProtocolVersion::V2, "burst-v2");
}

#[test]
fn requests_of_clients_that_gave_up_expire_instead_of_waiting_for_the_listener() {
    const BACKLOG: usize = 128;
    // More than the backlog again: beyond the requests the broker hands
    // the listener ahead (its prefetch, as many as the backlog), some wait
    // in the queue itself.
    const EXTRA: usize = 200;
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V2))
        .handshake_timeout(Some(Duration::from_secs(2)));
    let q = queue("expiring-requests");
    let listener = Connector::open_with(&url(), options.clone())
        .unwrap()
        .bind(&q)
        .unwrap();
    // Nobody accepts: the listener answers the first 128 by itself (its
    // backlog), and the rest wait in its queue until their clients give up.
    let clients: Vec<_> = (0..BACKLOG + EXTRA)
        .map(|_| {
            let (options, q) = (options.clone(), q.clone());
            thread::spawn(move || amqp_stream::Stream::connect_with(&url(), &q, options))
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let connected = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        connected <= BACKLOG,
        "{connected} connected past the backlog"
    );
    assert!(
        connected < BACKLOG + EXTRA,
        "nobody waited: the test proves nothing"
    );
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    }
    // Their requests expire: nothing is left waiting for the listener to
    // answer clients that are gone.
    common::eventually(
        Duration::from_secs(10),
        "requests expire",
        || match queue_state(&q) {
            Some((0, _, 1)) => Ok(()),
            other => Err(format!("(ready, unacked, consumers) = {other:?}")),
        },
    );
    drop(results);
    drop(listener);
}
