//! Scale: a thousand concurrent streams on one `Connector`, every byte
//! verified, with the threads, memory and broker channels each stream
//! costs; and more streams than the broker allows channels on one
//! connection, spread over extra connections unnoticed. (10,000
//! version-3 streams: `scale_v3.rs`.)

mod common;

use amqp_stream::{Connector, ProtocolVersion, Stream, StreamOptions};
use common::data::full_duplex;
use common::node::TestNode;
use common::summary::record;
use common::{broker_channels_of, queue, resident_bytes, threads_of_this_process, url};
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
