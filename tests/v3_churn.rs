//! Version 3 under churn: many streams on one pair of connections at once,
//! each doing its own random mix of writes, flushes, half-closes, aborts
//! and reads; then thousands of short streams back to back. Every echo
//! that completes is intact (one stream's reset disturbs no other), and
//! nothing per stream is left behind. (A test binary of its own: it counts
//! this process's threads.)

mod common;

use amqp_stream::{Connector, ProtocolVersion, Stream, StreamOptions};
use common::{
    broker_channels_of, eventually, queue, queues_owned_by, random_bytes, threads_of_this_process,
    url,
};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// A small deterministic generator (xorshift), one per thread.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn options() -> StreamOptions {
    StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .window(256 << 10)
}

/// Echoes every stream it accepts, each on a thread of its own, until the
/// listener goes; a stream reset mid-echo just ends its echo.
fn serve(connector: &Connector, q: &str) {
    let listener = connector.bind(q).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            thread::spawn(move || {
                if io::copy(&mut &stream, &mut &stream).is_ok() {
                    let _ = stream.shutdown(Shutdown::Write);
                }
            });
        }
    });
}

/// One echo with random write sizes, flushes and an early half-close or
/// an abort (dropped with the echo unread). Returns whether it was an
/// echo whose every byte came back.
fn one_stream(stream: Stream, dice: &mut Dice, seed: u64) -> bool {
    let len = 1 + dice.roll(200 << 10) as usize;
    let data = random_bytes(len, seed);
    match dice.roll(6) {
        0 => {
            // Abort: write some, then drop with the echo unread.
            (&stream).write_all(&data[..len / 2]).unwrap();
            (&stream).flush().unwrap();
            drop(stream);
            false
        }
        1 => {
            // Half-close at once: nothing comes back, a clean EOF.
            stream.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            (&stream).read_to_end(&mut back).unwrap();
            assert!(back.is_empty());
            true
        }
        _ => {
            let writer = stream.try_clone().unwrap();
            let chunks: Vec<(usize, bool)> = {
                let mut at = 0;
                let mut chunks = Vec::new();
                while at < len {
                    let n = (1 + dice.roll(70_000) as usize).min(len - at);
                    chunks.push((n, dice.roll(4) == 0));
                    at += n;
                }
                chunks
            };
            let sent = data.clone();
            let sending = thread::spawn(move || {
                let mut at = 0;
                for (n, flush) in chunks {
                    (&writer).write_all(&sent[at..at + n]).unwrap();
                    if flush {
                        (&writer).flush().unwrap();
                    }
                    at += n;
                }
                writer.shutdown(Shutdown::Write).unwrap();
            });
            let mut back = Vec::new();
            (&stream).read_to_end(&mut back).unwrap();
            sending.join().unwrap();
            assert_eq!(
                back.len(),
                data.len(),
                "first difference at {:?}",
                common::first_difference(&back, &data)
            );
            assert!(back == data, "echo corrupted");
            true
        }
    }
}

#[test]
fn version_3_churn_keeps_streams_apart_and_leaves_nothing_behind() {
    let q = queue("v3-churn");
    let server = Connector::open_with(&url(), options()).unwrap();
    serve(&server, &q);
    let client = Arc::new(Connector::open_with(&url(), options()).unwrap());
    // Warm up: both connections' version-3 transport exists from here on.
    assert!(one_stream(client.connect(&q).unwrap(), &mut Dice(2), 0));
    let ports = [
        server.local_socket_addr().port(),
        client.local_socket_addr().port(),
    ];
    let threads_before = threads_of_this_process();

    let echoes = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..24u64)
        .map(|t| {
            let (client, q, echoes) = (Arc::clone(&client), q.clone(), Arc::clone(&echoes));
            thread::spawn(move || {
                let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ ((t + 1) * 0x1000_0001));
                for i in 0..12 {
                    let stream = client.connect(&q).unwrap();
                    assert_eq!(stream.protocol_version(), ProtocolVersion::V3);
                    if one_stream(stream, &mut dice, t * 1000 + i) {
                        echoes.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    eprintln!(
        "churn: {} of 288 concurrent streams echoed intact",
        echoes.load(Ordering::SeqCst)
    );

    // Thousands of short streams back to back.
    let started = std::time::Instant::now();
    for i in 0..2000u64 {
        let stream = client.connect(&q).unwrap();
        (&stream).write_all(&i.to_be_bytes()).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        (&stream).read_to_end(&mut back).unwrap();
        assert_eq!(back, i.to_be_bytes());
    }
    eprintln!("2000 short streams back to back in {:?}", started.elapsed());

    // Nothing per stream is left: threads, queues, channels.
    eventually(Duration::from_secs(20), "stream threads end", || {
        let now = threads_of_this_process();
        (now <= threads_before)
            .then_some(())
            .ok_or(format!("{now} threads, {threads_before} before"))
    });
    let queues = queues_owned_by(&ports);
    assert_eq!(queues.len(), 3, "{queues:?}");
    for port in ports {
        let channels = broker_channels_of(port).unwrap();
        assert!(channels <= 4, "{channels} channels on one connection");
    }
}
