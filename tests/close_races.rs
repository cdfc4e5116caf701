//! Closing a stream while other threads use it: every byte a `write`
//! returned `Ok` for arrives before the FIN, a blocked write wakes, a
//! closed stream flushes `Ok`, and an abortive close never looks like a
//! clean end of the stream. Each test runs many trials, in every protocol
//! version (in version 3 the handles' own threads run the worker), because
//! each race shows in only some schedules.

mod common;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::data::{assert_pattern, pattern, read_all};
use common::{queue, url};
use crossbeam_channel::bounded;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V1,
    ProtocolVersion::V2,
    ProtocolVersion::V3,
];

/// A listener and a connector that speak `version`, with `options`.
fn pair(version: ProtocolVersion, options: StreamOptions, tag: &str) -> (Listener, Connector) {
    let options = options.protocol_version(Some(version));
    let q = queue(tag);
    let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let connector = Connector::open_with(&url(), options).unwrap();
    (listener, connector)
}

/// Waits until the writers have had `bytes` accepted in all.
fn wait_until_written(written: &AtomicU64, bytes: u64, what: &str) {
    common::eventually(Duration::from_secs(30), what, || {
        (written.load(Ordering::SeqCst) >= bytes)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
}

/// Writes the pattern in 256 KiB calls until a write fails; returns the
/// bytes the writes returned `Ok` for, and the failure.
fn write_until_refused(mut stream: &Stream, written: &AtomicU64) -> (u64, io::Error) {
    let mut accepted = 0u64;
    loop {
        let chunk = pattern(accepted, 256 * 1024);
        match stream.write(&chunk) {
            Ok(n) => {
                accepted += n as u64;
                written.store(accepted, Ordering::SeqCst);
            }
            Err(err) => return (accepted, err),
        }
    }
}

/// One thread writes in a loop while another shuts the write half down:
/// the peer reads exactly the bytes whose writes returned `Ok`, then a
/// clean EOF; the writes after the shutdown fail with `BrokenPipe`.
#[test]
fn writes_racing_a_shutdown_are_all_delivered_before_the_fin() {
    for version in VERSIONS {
        let (listener, connector) = pair(version, StreamOptions::new(), "race-shutdown");
        for trial in 0..12u64 {
            let client = Arc::new(
                connector
                    .connect(listener.local_addr().unwrap().queue())
                    .unwrap(),
            );
            let (server, _) = listener.accept().unwrap();
            let reader = thread::spawn(move || read_all(&server));
            let written = Arc::new(AtomicU64::new(0));
            let writer = {
                let (client, written) = (Arc::clone(&client), Arc::clone(&written));
                thread::spawn(move || write_until_refused(&client, &written))
            };
            // Shut down after a varying amount was written, often while a
            // write is in flight.
            let after = trial * 128 * 1024;
            wait_until_written(&written, after, "the writer to start");
            client.shutdown(Shutdown::Write).unwrap();
            let (accepted, err) = writer.join().unwrap();
            assert_eq!(
                err.kind(),
                io::ErrorKind::BrokenPipe,
                "{version} trial {trial}: {err}"
            );
            let (got, end) = reader.join().unwrap();
            end.unwrap_or_else(|e| panic!("{version} trial {trial}: the peer's read failed: {e}"));
            assert_eq!(
                got.len() as u64,
                accepted,
                "{version} trial {trial}: the peer read {} bytes of the {accepted} accepted before a clean EOF",
                got.len()
            );
            assert_pattern(&got, "the peer's bytes");
        }
    }
}

/// A write blocked because the peer's window is full (nobody reads)
/// wakes with `BrokenPipe` when another thread shuts the write half down,
/// as on Linux TCP; what it had written before arrives, then the FIN.
#[test]
fn a_shutdown_wakes_a_write_blocked_on_credit() {
    let window = 64 * 1024;
    let (listener, connector) = pair(
        ProtocolVersion::V2,
        StreamOptions::new().window(window),
        "blocked-write",
    );
    for how in [Shutdown::Write, Shutdown::Both] {
        let client = Arc::new(
            connector
                .connect(listener.local_addr().unwrap().queue())
                .unwrap(),
        );
        let (server, _) = listener.accept().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = bounded(1);
        {
            let (client, written) = (Arc::clone(&client), Arc::clone(&written));
            thread::spawn(move || done_tx.send(write_until_refused(&client, &written)));
        }
        // The peer's window is all the writer gets before it blocks.
        wait_until_written(&written, window as u64, "the window to fill");
        client.shutdown(how).unwrap();
        let (accepted, err) = done_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{how:?}: the blocked write never woke"));
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{how:?}: {err}");
        let (got, end) = read_all(&server);
        end.unwrap();
        assert_eq!(got.len() as u64, accepted, "{how:?}");
        assert_pattern(&got, "the peer's bytes");
    }
}

/// Both sides shut down and read to the end: everything is confirmed, so
/// `flush` answers `Ok` (whether or not the stream's worker has ended).
#[test]
fn a_cleanly_closed_stream_flushes_ok() {
    // A tiny linger too: it bounds only the close of the last handle, never
    // how long the confirms of a stream still held may take.
    let lingers = [StreamOptions::new().get_linger(), Duration::from_millis(1)];
    for (version, linger) in VERSIONS.into_iter().flat_map(|v| lingers.map(|l| (v, l))) {
        let options = StreamOptions::new().linger(linger);
        let (listener, connector) = pair(version, options, "flush-closed");
        for trial in 0..25 {
            let mut client = connector
                .connect(listener.local_addr().unwrap().queue())
                .unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client.write_all(b"request").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            let (got, end) = read_all(&server);
            end.unwrap();
            assert_eq!(got, b"request");
            server.write_all(b"reply").unwrap();
            server.shutdown(Shutdown::Write).unwrap();
            let (got, end) = read_all(&client);
            end.unwrap();
            assert_eq!(got, b"reply");
            for (side, stream) in [("client", &mut client), ("server", &mut server)] {
                stream.flush().unwrap_or_else(|e| {
                    panic!("{version} linger {linger:?} trial {trial}: {side} flush: {e}")
                });
                let err = stream.write(b"late").unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
            }
        }
    }
}

/// Dropping a stream that holds unread data is abortive (as closing a TCP
/// socket with unread data sends a reset): the peer never sees a clean
/// EOF after less than was written. Version 1 has no reset: the peer
/// finds this end gone instead.
#[test]
fn dropping_with_unread_data_never_ends_cleanly_early() {
    for version in VERSIONS {
        let options = StreamOptions::new().keepalive_interval(Duration::from_millis(200));
        let (listener, connector) = pair(version, options, "drop-unread");
        for trial in 0..4u64 {
            let client = connector
                .connect(listener.local_addr().unwrap().queue())
                .unwrap();
            let (mut server, _) = listener.accept().unwrap();
            // Data the client will never read.
            server.write_all(b"unread").unwrap();
            server.flush().unwrap();
            let reader = thread::spawn(move || read_all(&server));
            // Small writes, gathered while earlier ones await their
            // confirms: some are still unsent when the last handle goes.
            let len = 4 << 20;
            let mut written = 0;
            while written < len {
                let chunk = pattern(written as u64, 1024.min(len - written));
                written += (&client).write(&chunk).unwrap();
            }
            drop(client);
            let (got, end) = reader.join().unwrap();
            assert_pattern(&got, "the peer's bytes");
            match end {
                Ok(()) => assert_eq!(
                    got.len(),
                    len,
                    "{version} trial {trial}: a clean EOF after {} of {len} bytes",
                    got.len()
                ),
                Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}"),
            }
        }
    }
}

/// `set_linger(Some(Duration::ZERO))`: dropping the stream resets it, in
/// both versions; the peer reads what arrived, then `ConnectionReset`.
#[test]
fn linger_zero_makes_the_close_abortive() {
    for version in VERSIONS {
        let options = StreamOptions::new().keepalive_interval(Duration::from_millis(200));
        let (listener, connector) = pair(version, options, "linger-zero");
        let mut client = connector
            .connect(listener.local_addr().unwrap().queue())
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"partial").unwrap();
        client.flush().unwrap();
        client.set_linger(Some(Duration::ZERO)).unwrap();
        assert_eq!(client.linger().unwrap(), Some(Duration::ZERO));
        drop(client);
        let (got, end) = read_all(&server);
        assert_eq!(got, b"partial", "{version}");
        let err = end.expect_err("an abortive close is not a clean EOF");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionReset,
            "{version}: {err}"
        );
    }
}

/// One wake-up used to reach one writer: with several threads blocked in
/// `write` (and a reader thread holding the receive side), a shutdown
/// woke one of them and left the others blocked for ever.
#[test]
fn a_shutdown_wakes_every_blocked_writer() {
    let (listener, connector) = pair(
        ProtocolVersion::V2,
        StreamOptions::new().window(4096),
        "wake-all",
    );
    for how in [Shutdown::Write, Shutdown::Both] {
        let client = Arc::new(
            connector
                .connect(listener.local_addr().unwrap().queue())
                .unwrap(),
        );
        let (_server, _) = listener.accept().unwrap(); // never reads
        {
            // A reader blocked meanwhile (it ends when the stream does).
            let client = Arc::clone(&client);
            thread::spawn(move || (&*client).read(&mut [0u8; 16]));
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let written = Arc::new(AtomicU64::new(0));
        for _ in 0..3 {
            let (client, done_tx, written) =
                (Arc::clone(&client), done_tx.clone(), Arc::clone(&written));
            thread::spawn(move || {
                loop {
                    match (&*client).write(&[7u8; 1024]) {
                        Ok(n) => {
                            written.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        Err(err) => return done_tx.send(err),
                    }
                }
            });
        }
        wait_until_written(&written, 4096, "the window to fill");
        client.shutdown(how).unwrap();
        for writer in 0..3 {
            let err = done_rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{how:?}: writer {writer} of 3 never woke"));
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{how:?}: {err}");
        }
    }
}

/// Credit left over after one writer reserved went unused: with several
/// writers and a reader thread blocked, writers slept while the peer had
/// room for them, until their write timeout.
#[test]
fn several_writers_share_the_credit_a_report_brings() {
    let (listener, connector) = pair(
        ProtocolVersion::V2,
        StreamOptions::new().window(4096),
        "share-credit",
    );
    for trial in 0..3 {
        let client = Arc::new(
            connector
                .connect(listener.local_addr().unwrap().queue())
                .unwrap(),
        );
        client
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        let reader = thread::spawn(move || read_all(&server));
        {
            let client = Arc::clone(&client);
            thread::spawn(move || (&*client).read(&mut [0u8; 16]));
        }
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (client, barrier) = (Arc::clone(&client), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    (&*client).write_all(&[1u8; 1024])
                })
            })
            .collect();
        for (i, writer) in writers.into_iter().enumerate() {
            writer
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("trial {trial}: writer {i}: {e}"));
        }
        client.shutdown(Shutdown::Write).unwrap();
        let (got, end) = reader.join().unwrap();
        end.unwrap();
        assert_eq!(got.len(), 8 * 1024, "trial {trial}");
    }
}
