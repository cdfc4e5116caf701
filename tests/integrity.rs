//! Integrity under volume: every byte arrives, in order, compared by hash.

mod common;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::data::{Digest, full_duplex, receive_digest, send_random};
use common::summary::record;
use common::{queue, url};
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

const MIB: u64 = 1024 * 1024;

#[test]
fn one_gibibyte_through_one_stream() {
    const TOTAL: u64 = 1024 * MIB;
    let q = queue("gib");
    let listener = Listener::bind(&url(), &q).unwrap();
    let started = Instant::now();
    let sender = thread::spawn({
        let q = q.clone();
        move || {
            let mut stream = Stream::connect(&url(), &q).unwrap();
            let sent = send_random(&mut stream, 0x1_0000_0001, TOTAL, 64 * 1024).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            sent
        }
    });
    let (mut stream, _) = listener.accept().unwrap();
    let received = receive_digest(&mut stream).unwrap();
    let sent = sender.join().unwrap();
    let took = started.elapsed();
    eprintln!(
        "1 GiB in {took:?}: {:.0} MiB/s",
        TOTAL as f64 / MIB as f64 / took.as_secs_f64()
    );
    assert_eq!(sent.bytes, TOTAL);
    assert_eq!(received, sent, "what arrived differs from what was sent");
    record(
        "integrity, one stream",
        "1 GiB random, 64 KiB writes",
        "none",
        &format!("hash equal, {took:.1?}"),
        TOTAL,
    );
}

#[test]
fn eight_full_duplex_streams_of_100_mib_each_way() {
    let q = queue("duplex");
    let listener = Listener::bind(&url(), &q).unwrap();
    eight_full_duplex(listener, "", move || Stream::connect(&url(), &q).unwrap());
}

#[test]
fn eight_full_duplex_version_3_streams_on_one_connection_each_side() {
    let v3 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V3));
    let q = queue("duplex-v3");
    let listener = Connector::open_with(&url(), v3.clone())
        .unwrap()
        .bind(&q)
        .unwrap();
    let client = Arc::new(Connector::open_with(&url(), v3).unwrap());
    eight_full_duplex(
        listener,
        ", version 3, one connection each side",
        move || client.connect(&q).unwrap(),
    );
}

/// Eight streams from `connect` to `listener` move 100 MiB each way at
/// once; every byte checked by hash.
fn eight_full_duplex(
    listener: Listener,
    how: &str,
    connect: impl Fn() -> Stream + Clone + Send + 'static,
) {
    const STREAMS: u64 = 8;
    const TOTAL: u64 = 100 * MIB;
    let started = Instant::now();
    let clients: Vec<_> = (0..STREAMS)
        .map(|i| {
            let connect = connect.clone();
            thread::spawn(move || {
                let stream = connect();
                full_duplex(stream, 100 + i, TOTAL)
            })
        })
        .collect();
    let servers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (stream, peer) = listener.accept().unwrap();
            // The client's seed is unknown here: the server sends its own.
            thread::spawn(move || (peer, full_duplex(stream, 0, TOTAL)))
        })
        .collect();
    let clients: Vec<(Digest, Digest)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let servers: Vec<_> = servers.into_iter().map(|s| s.join().unwrap()).collect();
    let took = started.elapsed();
    eprintln!(
        "{STREAMS} x 100 MiB each way in {took:?}: {:.0} MiB/s in all",
        (2 * STREAMS * TOTAL) as f64 / MIB as f64 / took.as_secs_f64()
    );
    // Every client's bytes reached exactly one server intact, and every
    // client received the server's bytes intact.
    let server_sent = servers[0].1.0;
    for (i, (client_sent, client_received)) in clients.iter().enumerate() {
        assert_eq!(client_sent.bytes, TOTAL);
        assert_eq!(
            *client_received, server_sent,
            "client {i} received other bytes"
        );
        let matching = servers
            .iter()
            .filter(|(_, (_, got))| got == client_sent)
            .count();
        assert_eq!(
            matching, 1,
            "client {i}'s bytes reached {matching} servers intact"
        );
    }
    record(
        &format!("integrity, full duplex{how}"),
        "8 streams x 100 MiB each way",
        "none",
        &format!("16 hashes equal, {took:.1?}"),
        2 * STREAMS * TOTAL,
    );
}
