//! Scale, version 3: 10,000 concurrent streams on one `Connector` and one
//! `Listener`, each echoing 16 KiB, every byte verified, with the
//! library's threads, broker channels and queues, and resident memory per
//! stream. A target of its own: the threads and memory it counts are its
//! process's alone, with no earlier test's threads winding down or freed
//! memory reused.

mod common;

use amqp_stream::{Connector, ProtocolVersion, StreamOptions};
use common::summary::record;
use common::{broker_channels_of, queue, resident_bytes, threads_of_this_process, url};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

/// Runs `work` on each item from `pool` threads at once, each taking the
/// next item as it finishes one; returns the results in item order.
fn in_pool<T: Send, R: Send>(
    items: Vec<T>,
    pool: usize,
    work: impl Fn(usize, T) -> R + Sync,
) -> Vec<R> {
    let queue = Mutex::new(items.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..pool {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((i, item)) = next else { return };
                    let result = work(i, item);
                    results.lock().unwrap().push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn ten_thousand_version_3_streams_on_one_connector_and_one_listener() {
    const STREAMS: usize = 10_000;
    const BYTES: usize = 16 * 1024;
    const POOL: usize = 16;
    let v3 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V3));
    let client = Connector::open_with(&url(), v3.clone()).unwrap();
    let server = Connector::open_with(&url(), v3).unwrap();
    let q = queue("scale-10k");
    let listener = std::sync::Arc::new(server.bind(&q).unwrap());
    let ports = [
        client.local_socket_addr().port(),
        server.local_socket_addr().port(),
    ];
    let (threads_before, memory_before) = (threads_of_this_process(), resident_bytes());

    let started = Instant::now();
    let accepting = std::sync::Arc::clone(&listener);
    let acceptor = thread::spawn(move || {
        (0..STREAMS)
            .map(|_| accepting.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let clients = in_pool(vec![(); STREAMS], POOL, |_, ()| client.connect(&q).unwrap());
    let servers = acceptor.join().unwrap();
    let opening = started.elapsed();

    // The library's threads settle (each setup's handshake thread ends
    // once the connection's engine has the stream): a handful per
    // connection, not one per stream.
    let library_threads = || threads_of_this_process().saturating_sub(threads_before);
    common::eventually(
        std::time::Duration::from_secs(30),
        "handshake threads",
        || {
            (library_threads() <= 8)
                .then_some(())
                .ok_or_else(|| format!("{} threads for {STREAMS} streams", library_threads()))
        },
    );
    let threads = library_threads();
    let queues = common::queues_owned_by(&ports);
    let channels: u32 = ports
        .iter()
        .map(|&port| broker_channels_of(port).unwrap())
        .sum();
    let memory_kib =
        (resident_bytes().saturating_sub(memory_before)) as f64 / 1024.0 / STREAMS as f64;
    assert_eq!(
        queues.len(),
        3,
        "the listener's and one per connection: {queues:?}"
    );
    assert!(
        channels <= 8,
        "{channels} broker channels for {STREAMS} streams"
    );

    // Every stream echoes 16 KiB, checked byte for byte. 16 KiB fits in
    // the windows, so a pool of threads can drive them all: the clients
    // write and half-close, the servers read each to its end and answer.
    let moving = Instant::now();
    in_pool(clients.iter().collect(), POOL, |i, s| {
        (&*s)
            .write_all(&common::random_bytes(BYTES, i as u64))
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    in_pool(servers, POOL, |_, s| {
        let mut got = Vec::new();
        (&s).read_to_end(&mut got).unwrap();
        (&s).write_all(&got).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    let verified: usize = in_pool(clients, POOL, |i, s| {
        let mut back = Vec::new();
        (&s).read_to_end(&mut back).unwrap();
        assert!(
            back == common::random_bytes(BYTES, i as u64),
            "stream {i} echoed other bytes"
        );
        2 * back.len()
    })
    .into_iter()
    .sum();
    let moved = moving.elapsed();
    let line = format!(
        "{threads} library threads in all, {channels} broker channels, {} queues, {memory_kib:.1} KiB resident per stream (both ends); opened in {opening:.1?}, 16 KiB each echoed in {moved:.1?}",
        queues.len()
    );
    eprintln!("{STREAMS} version-3 streams: {line}");
    record(
        "scale, 10,000 version-3 streams",
        "16 KiB echoed per stream, one Connector, one Listener",
        "none",
        &line,
        verified as u64,
    );
}
