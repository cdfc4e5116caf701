//! A flood of malformed and abandoned connection requests on a listener's
//! control queue: a good client is still accepted afterwards, and once the
//! listener has worked through them nothing is left behind: no queue, no
//! channel, no thread.

mod common;

use amiquip::{AmqpProperties, Publish, QueueDeclareOptions};
use amqp_stream::{Connector, ProtocolVersion, Stream};
use common::summary::record;
use common::{
    broker_channels_of, eventually, queue, queue_depth, queues_owned_by, raw_connection,
    threads_of_this_process, url,
};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// 4,400 without reply_to, 4,400 with a body, 800 to a missing queue,
/// 400 from vanishing clients.
const REQUESTS: usize = 10_000;

/// How long the listener may take to work through the flood.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_flood_of_bad_requests_leaves_the_listener_working_and_nothing_behind() {
    let q = queue("flood");
    let server_side = Connector::open(&url()).unwrap();
    let listener = server_side.bind(&q).unwrap();
    let client_side = Connector::open(&url()).unwrap();

    // Accepted streams (from requests whose queue vanished only after the
    // answer) are read until they fail or end; the good one says hello.
    let (hello_tx, hello_rx) = crossbeam_channel::bounded::<Stream>(1);
    let acceptor = std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let hello_tx = hello_tx.clone();
            std::thread::spawn(move || {
                let mut first = [0u8; 5];
                if stream.read_exact(&mut first).is_ok() && &first == b"hello" {
                    let _ = hello_tx.send(stream);
                }
            });
        }
    });

    // A first good stream brings both sides' prepared streams to their
    // steady number before the baseline is taken.
    // The second is a version-3 stream (the first taught the client that
    // the listener takes them): both connections' version-3 transports
    // (a queue, two channels and a thread each) are up too.
    for version in [ProtocolVersion::V2, ProtocolVersion::V3] {
        let mut warm = client_side.connect(&q).unwrap();
        assert_eq!(warm.protocol_version(), version);
        warm.write_all(b"hello").unwrap();
        drop(hello_rx.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    let threads_before = threads_of_this_process();
    let server_port = server_side.local_socket_addr().port();
    let server_channels_before = broker_channels_of(server_port).expect("our connection is listed");

    // The flood, from a raw peer: requests with no reply_to, with a body,
    // answering to a queue that never existed, and answering to a queue
    // deleted right after the request (a client that vanished
    // mid-handshake). The last two cost the listener a stream setup each
    // (and the raw peer two round trips for a vanishing one), so they are
    // fewer.
    let mut raw = raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let requests_sent = Instant::now();
    for i in 0..REQUESTS {
        let (body, reply_to): (&[u8], Option<String>) = match i % 50 {
            0..=21 => (b"", None),
            22..=43 => (b"not empty", Some("somewhere".to_string())),
            44..=47 => (b"", Some(format!("no-such-queue-{i}"))),
            _ => {
                let vanishing = channel
                    .queue_declare(
                        "",
                        QueueDeclareOptions {
                            exclusive: true,
                            ..QueueDeclareOptions::default()
                        },
                    )
                    .unwrap();
                let name = vanishing.name().to_string();
                channel
                    .basic_publish(
                        "",
                        Publish::with_properties(
                            b"",
                            q.clone(),
                            AmqpProperties::default().with_reply_to(name.clone()),
                        ),
                    )
                    .unwrap();
                channel.queue_delete(name, Default::default()).unwrap();
                continue;
            }
        };
        let mut properties = AmqpProperties::default();
        if let Some(reply_to) = reply_to {
            properties = properties.with_reply_to(reply_to);
        }
        channel
            .basic_publish("", Publish::with_properties(body, q.clone(), properties))
            .unwrap();
    }
    eprintln!(
        "{REQUESTS} requests published in {:?}",
        requests_sent.elapsed()
    );
    // Its I/O thread must not count among those left behind.
    raw.close().unwrap();

    // A good client, behind all of them in the queue, still gets in.
    let good_started = Instant::now();
    let mut good = client_side
        .connect_timeout(&q, DRAIN_LIMIT)
        .expect("a good client is accepted after the flood");
    good.write_all(b"hello").unwrap();
    let mut served = hello_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the good stream reaches the acceptor");
    let good_after = good_started.elapsed();
    eprintln!("good client connected {good_after:?} after the flood was published");
    good.write_all(b" world").unwrap();
    let mut rest = [0u8; 6];
    served.read_exact(&mut rest).unwrap();
    assert_eq!(&rest, b" world");
    drop((good, served));

    // The control queue empties: every request is answered or rejected
    // (handshakes run side by side, so a few may still be finishing).
    eventually(
        DRAIN_LIMIT,
        "requests left on the control queue",
        || match queue_depth(&q) {
            Some((0, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Nothing is left behind: the flood's streams and threads are gone.
    eventually(DRAIN_LIMIT, "threads left behind", || {
        let now = threads_of_this_process();
        (now <= threads_before)
            .then_some(())
            .ok_or(format!("{now} threads, {threads_before} before the flood"))
    });
    eventually(DRAIN_LIMIT, "channels left behind", || {
        let now = broker_channels_of(server_port).expect("our connection is listed");
        (now <= server_channels_before).then_some(()).ok_or(format!(
            "{now} channels, {server_channels_before} before the flood"
        ))
    });
    // Counted on our own two connections: other programs may use the
    // broker meanwhile. (The raw peer's vanishing queues went with its
    // connection, closed above.)
    let client_port = client_side.local_socket_addr().port();
    eventually(DRAIN_LIMIT, "queues left behind", || {
        let left: Vec<String> = queues_owned_by(&[server_port, client_port])
            .into_iter()
            .filter(|name| *name != q)
            .collect();
        // Our own prepared streams' queues and each connection's
        // version-3 queue stay; nothing else of ours.
        let prepared = 2 * amqp_stream::StreamOptions::new().get_prepared_streams() + 2;
        (left.len() <= prepared).then_some(()).ok_or(format!(
            "{} queues: {:?}",
            left.len(),
            &left[..left.len().min(5)]
        ))
    });
    drop(client_side);
    drop(server_side);
    drop(acceptor);
    record(
        "control-queue flood",
        "10,000 requests on one listener",
        "no reply_to, a body, a missing or vanishing client queue",
        &format!("good client served after {good_after:.1?}; no thread, channel or queue left"),
        11,
    );
}
