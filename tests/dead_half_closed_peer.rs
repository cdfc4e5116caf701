//! A peer that half-closes (sends its FIN) and then dies is noticed by
//! this end while its own direction is still open: a write blocked for
//! want of the dead peer's credit fails (BrokenPipe or ConnectionReset)
//! within a few keepalive intervals, as `keepalive_interval` promises,
//! rather than waiting for ever for credit nobody will give.

mod common;

use amqp_stream::{Listener, ProtocolVersion, Stream, StreamOptions};
use common::summary::record;
use common::{queue, url};
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "AMQP_STREAM_TEST_HALF_CLOSED_CHILD_QUEUE";
/// The protocol version the child pins: "2" or "3".
const VERSION: &str = "AMQP_STREAM_TEST_HALF_CLOSED_CHILD_VERSION";

/// The child's receive window: what this end may send before it blocks.
const WINDOW: usize = 64 * 1024;
const KEEPALIVE: Duration = Duration::from_millis(200);
/// Far more than the few keepalive intervals it takes.
const BOUND: Duration = Duration::from_secs(10);
const HELLO: &[u8] = b"hello from the child";

fn options(version: ProtocolVersion) -> StreamOptions {
    StreamOptions::new()
        .protocol_version(Some(version))
        .window(WINDOW)
        .keepalive_interval(KEEPALIVE)
}

/// Run in a child process: connect, say hello, shut down writing, then
/// read nothing (the server uses up our window) until killed.
#[test]
#[ignore = "runs only as the child process of the half-closed dead-peer tests"]
fn half_closed_child_peer() {
    let Ok(q) = std::env::var(ROLE) else { return };
    let version = match std::env::var(VERSION).as_deref() {
        Ok("3") => ProtocolVersion::V3,
        _ => ProtocolVersion::V2,
    };
    let mut stream = Stream::connect_with(&url(), &q, options(version)).unwrap();
    stream.write_all(HELLO).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    // Waits to be killed, reading nothing.
    std::thread::sleep(Duration::from_secs(600));
}

fn spawn_child(q: &str, version: ProtocolVersion) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "half_closed_child_peer",
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

/// Kills the child when dropped, should the test fail before it does.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_version_2_writer_blocked_on_a_half_closed_peer_that_died_fails_within_10s() {
    blocked_writer_fails_when_the_half_closed_peer_dies(ProtocolVersion::V2);
}

#[test]
fn a_version_3_writer_blocked_on_a_half_closed_peer_that_died_fails_within_10s() {
    blocked_writer_fails_when_the_half_closed_peer_dies(ProtocolVersion::V3);
}

fn blocked_writer_fails_when_the_half_closed_peer_dies(version: ProtocolVersion) {
    let q = queue("half-closed-kill");
    let listener = Listener::bind_with(&url(), &q, options(version)).unwrap();
    let mut child = Reaper(spawn_child(&q, version));
    let (mut stream, _) = listener.accept().unwrap();
    assert_eq!(stream.protocol_version(), version);

    // The child's data and its FIN: its direction is over.
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    assert_eq!(got, HELLO);

    // Our direction is open: use up the child's window, all of it in
    // the child's hands (confirmed by the broker)...
    stream.write_all(&vec![7u8; WINDOW]).unwrap();
    stream.flush().unwrap();
    // ...so that the next write waits for credit that never comes.
    stream
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = stream.write(&[8u8; 1024]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    stream.set_write_timeout(None).unwrap();

    let (done_tx, done) = crossbeam_channel::bounded(1);
    let writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = done_tx.send((&writer).write(&[9u8; 1024]));
    });
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let killed_at = Instant::now();
    let result = done.recv_timeout(BOUND).unwrap_or_else(|_| {
        panic!("a write blocked on the dead half-closed peer (v{version}) is still blocked after {BOUND:?}")
    });
    let noticed_after = killed_at.elapsed();
    let err = result.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    eprintln!(
        "v{version}: a write blocked on a dead half-closed peer failed after {noticed_after:?}: {err}"
    );
    // And keeps failing; the peer's data, complete with its FIN, stays
    // read to the end.
    let again = (&stream).write(b"anyone?").unwrap_err();
    assert!(
        matches!(
            again.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "{again}"
    );
    assert_eq!(stream.read(&mut [0; 8]).unwrap(), 0);
    record(
        &format!("half-closed peer killed while this end writes (v{version})"),
        "1 stream, 64 KiB window used up, keepalive 200 ms",
        "peer's FIN, then SIGKILL of the peer process",
        &format!("{:?} after {noticed_after:.1?}", err.kind()),
        (HELLO.len()) as u64,
    );
}
