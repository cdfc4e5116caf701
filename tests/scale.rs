//! Scale: a thousand concurrent streams on one `Connector`, every byte
//! verified, with the threads, memory and broker channels each stream
//! costs; and more streams than the broker allows channels on one
//! connection, spread over extra connections unnoticed.

mod common;

use amqp_stream::{Connector, ProtocolVersion, Stream, StreamOptions};
use common::data::full_duplex;
use common::node::TestNode;
use common::summary::record;
use common::{broker_channels_of, queue, resident_bytes, threads_of_this_process, url};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

const MIB: u64 = 1024 * 1024;

/// The tests here count this process's threads and memory: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Opens `n` streams from `client` to a listener on `server`, all at once
/// (accepted in a thread of their own); returns (client end, server end)
/// pairs.
fn open_pairs(client: &Connector, server: &Connector, n: usize) -> Vec<(Stream, Stream)> {
    let q = queue("scale");
    let listener = server.bind(&q).unwrap();
    let acceptor = thread::spawn(move || {
        (0..n)
            .map(|_| listener.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let clients: Vec<Stream> = (0..n).map(|_| client.connect(&q).unwrap()).collect();
    let servers = acceptor.join().unwrap();
    // The acceptor took them in the order they connected.
    clients.into_iter().zip(servers).collect()
}

/// Each pair moves `bytes` both ways at once: the client sends its own
/// random bytes, the server echoes them; both ends check by hash.
fn echo_all(pairs: Vec<(Stream, Stream)>, bytes: u64) -> u64 {
    let mut work = Vec::new();
    for (i, (client, server)) in pairs.into_iter().enumerate() {
        work.push(thread::spawn(move || {
            let mut reader = server.try_clone().unwrap();
            let mut writer = server;
            std::io::copy(&mut reader, &mut writer).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
            None
        }));
        work.push(thread::spawn(move || {
            Some(full_duplex(client, i as u64, bytes))
        }));
    }
    let mut verified = 0;
    for done in work {
        if let Some((sent, echoed)) = done.join().unwrap() {
            assert_eq!(sent.bytes, bytes);
            assert_eq!(echoed, sent, "a stream's echo differs from what it sent");
            verified += 2 * sent.bytes;
        }
    }
    verified
}

/// What `n` open streams cost, per stream, on both ends together.
struct Cost {
    threads: f64,
    memory_kib: f64,
    channels: f64,
    /// How long opening them all took.
    opening: std::time::Duration,
}

/// Memory is measured against `memory_before`, taken once before the
/// first run: memory freed by an earlier, smaller run is reused by the
/// next, so a delta from just before a run would count too little.
fn cost_of(
    n: usize,
    client: &Connector,
    server: &Connector,
    memory_before: u64,
) -> (Cost, Vec<(Stream, Stream)>) {
    let channels = || {
        broker_channels_of(client.local_socket_addr().port()).unwrap()
            + broker_channels_of(server.local_socket_addr().port()).unwrap()
    };
    let (threads_before, channels_before) = (threads_of_this_process(), channels());
    let started = Instant::now();
    let pairs = open_pairs(client, server, n);
    let opening = started.elapsed();
    let per = |now: f64, before: f64| (now - before) / n as f64;
    let cost = Cost {
        threads: per(threads_of_this_process() as f64, threads_before as f64),
        memory_kib: per(resident_bytes() as f64, memory_before as f64) / 1024.0,
        channels: per(f64::from(channels()), f64::from(channels_before)),
        opening,
    };
    (cost, pairs)
}

#[test]
fn a_thousand_streams_on_one_connector_move_a_mebibyte_each_way() {
    let client = Connector::open(&url()).unwrap();
    let server = Connector::open(&url()).unwrap();
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Warm up: the connector prepares streams after its first connect.
    drop(open_pairs(&client, &server, 1));
    let memory_before = resident_bytes();
    for n in [10, 100, 1000] {
        let (cost, pairs) = cost_of(n, &client, &server, memory_before);
        let started = Instant::now();
        let verified = echo_all(pairs, MIB);
        let took = started.elapsed();
        assert_eq!(verified, 2 * n as u64 * MIB);
        let line = format!(
            "per stream (both ends): {:.2} threads, {:.0} KiB resident, {:.2} broker channels; opened in {:.1?}, 2 MiB each moved in {took:.1?}",
            cost.threads, cost.memory_kib, cost.channels, cost.opening
        );
        eprintln!("{n} streams: {line}");
        record(
            &format!("scale, {n} concurrent streams"),
            "1 MiB each way per stream, one Connector",
            "none",
            &line,
            verified,
        );
    }
}

#[test]
fn streams_past_the_broker_channel_limit_spread_over_connections() {
    const CHANNEL_MAX: usize = 16;
    const STREAMS: usize = 40;
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let node = TestNode::start(&format!("channel_max = {CHANNEL_MAX}"));
    // Versions 1 and 2 take a channel per stream (version 3 none).
    let options = StreamOptions::new().protocol_version(Some(ProtocolVersion::V2));
    let client = Connector::open_with(&node.url(""), options.clone()).unwrap();
    let server = Connector::open_with(&node.url(""), options).unwrap();
    let pairs = open_pairs(&client, &server, STREAMS);
    let listed = node.ctl(&["list_connections", "channels"]);
    let channels: Vec<usize> = listed
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    eprintln!("channels per connection on the node: {channels:?}");
    assert!(
        channels.iter().all(|&c| c <= CHANNEL_MAX),
        "a connection holds more than {CHANNEL_MAX} channels: {channels:?}"
    );
    // Both ends hold 40 streams: at least 3 connections each.
    let needed = 2 * STREAMS.div_ceil(CHANNEL_MAX);
    assert!(
        channels.len() >= needed,
        "{} connections for {STREAMS} streams a side: {channels:?}",
        channels.len()
    );
    let verified = echo_all(pairs, 256 * 1024);
    assert!(!client.is_closed() && !server.is_closed());
    record(
        "streams past the channel limit",
        "40 streams, 256 KiB each way",
        "broker channel_max = 16",
        &format!(
            "spread over {} connections, all echoed intact",
            channels.len()
        ),
        verified,
    );
}

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
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
