//! A peer that dies (SIGKILL) or closes is noticed: ConnectionReset on
//! read, BrokenPipe on write, Ok(0) after a clean close.

mod common;

use amqp_stream::{Listener, ProtocolVersion, Stream, StreamOptions};
use common::summary::record;
use common::{queue, url};
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "AMQP_STREAM_TEST_CHILD_QUEUE";
/// The protocol version the child pins: "3", or nothing for the default.
const VERSION: &str = "AMQP_STREAM_TEST_CHILD_VERSION";

/// Run in a child process: connect, say hello, then wait to be killed.
#[test]
#[ignore = "runs only as the child process of the dead-peer tests"]
fn child_peer() {
    let Ok(q) = std::env::var(ROLE) else { return };
    let pin = match std::env::var(VERSION).as_deref() {
        Ok("3") => Some(ProtocolVersion::V3),
        Ok("1") => Some(ProtocolVersion::V1),
        _ => None,
    };
    let options = StreamOptions::new().protocol_version(pin);
    let mut stream = Stream::connect_with(&url(), &q, options.clone()).unwrap();
    stream.write_all(b"hello from the child").unwrap();
    stream.flush().unwrap();
    let _ = stream.read(&mut [0; 1]); // blocks until killed
    std::thread::sleep(Duration::from_secs(600));
}

fn spawn_child(q: &str, version: ProtocolVersion) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_peer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, q)
        .env(VERSION, version.number().to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// A child process connected with `version` (2: the default for a
/// first stream; 3: pinned), and our accepted end.
fn accept_child(q: &str, version: ProtocolVersion) -> (amqp_stream::Stream, std::process::Child) {
    let listener = Listener::bind(&url(), q).unwrap();
    let child = spawn_child(q, version);
    let (mut stream, _) = listener.accept().unwrap();
    assert_eq!(stream.protocol_version(), version);
    let mut hello = [0u8; 20];
    stream.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello from the child");
    (stream, child)
}

#[test]
fn killed_peer_fails_a_blocked_read_with_connection_reset_within_10s() {
    killed_peer_fails_a_blocked_read(ProtocolVersion::V2);
}

#[test]
fn killed_version_3_peer_fails_a_blocked_read_with_connection_reset_within_10s() {
    killed_peer_fails_a_blocked_read(ProtocolVersion::V3);
}

#[test]
fn killed_version_1_peer_fails_a_blocked_read_with_connection_reset_within_10s() {
    killed_peer_fails_a_blocked_read(ProtocolVersion::V1);
}

fn killed_peer_fails_a_blocked_read(version: ProtocolVersion) {
    let q = queue("kill-read");
    let (stream, mut child) = accept_child(&q, version);
    let reader = stream.try_clone().unwrap();
    let blocked = std::thread::spawn(move || {
        let started = Instant::now();
        let result = (&reader).read(&mut [0; 64]);
        (result, started.elapsed())
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = Instant::now();
    let (result, _) = blocked.join().unwrap();
    let noticed_after = killed_at.elapsed();
    let err = result.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        noticed_after < Duration::from_secs(10),
        "took {noticed_after:?}"
    );
    eprintln!("killed peer noticed by a blocked read after {noticed_after:?}");
    // Writes fail too, and keep failing.
    let err = (&stream).write(b"anyone?").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    record(
        &format!("peer killed while this end reads (v{version})"),
        "1 stream, blocked read",
        "SIGKILL of the peer process",
        &format!("ConnectionReset after {noticed_after:.1?}, then BrokenPipe"),
        20,
    );
}

#[test]
fn killed_peer_fails_writes_with_broken_pipe() {
    killed_peer_fails_writes(ProtocolVersion::V2);
}

#[test]
fn killed_version_3_peer_fails_writes_with_broken_pipe() {
    killed_peer_fails_writes(ProtocolVersion::V3);
}

fn killed_peer_fails_writes(version: ProtocolVersion) {
    let q = queue("kill-write");
    let (mut stream, mut child) = accept_child(&q, version);
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    let err = loop {
        // The first writes may be accepted before the broker returns one.
        match stream.write_all(&[7u8; 4096]).and_then(|_| stream.flush()) {
            Ok(()) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "writes never failed"
            ),
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    record(
        &format!("peer killed while this end writes (v{version})"),
        "1 stream, 4 KiB writes",
        "SIGKILL of the peer process",
        &format!("BrokenPipe after {:.1?}", started.elapsed()),
        20,
    );
}

#[test]
fn clean_close_reads_as_eof() {
    let q = queue("clean");
    let listener = Listener::bind(&url(), &q).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"bye").unwrap();
        // Dropped without shutdown: the drop sends the FIN.
    });
    let mut client = Stream::connect(&url(), &q).unwrap();
    server.join().unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    assert_eq!(client.read(&mut [0; 4]).unwrap(), 0);
}
