//! Protocol version 2's credit flow control against the real broker: a
//! writer whose peer does not read is held to one window, on the broker
//! and in memory, and resumes when the reader does.

mod common;

use amqp_stream::{Listener, ProtocolVersion, Stream, StreamOptions};
use common::summary::record;
use common::{queue, queue_depth, resident_bytes, url};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// The byte at `offset` of the test stream: differs between nearby
/// messages, so a lost, repeated or reordered message shows.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (offset / CHUNK as u64) as u8
}

fn fill(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(offset + i as u64);
    }
}

/// Reads to EOF, checking every byte against the pattern; the count.
fn read_checked(mut stream: Stream) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n = stream.read(&mut buf).expect("read");
        if n == 0 {
            return offset;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(*b, pattern(at), "byte {at} differs");
        }
        offset += n as u64;
    }
}

/// The largest body-byte count seen in `queue` while `busy` holds.
fn watch_queue(queue: &str, busy: impl Fn() -> bool) -> u64 {
    let mut most = 0;
    while busy() {
        if let Some((_, bytes)) = queue_depth(queue) {
            most = most.max(bytes);
        }
        thread::sleep(Duration::from_millis(200));
    }
    most
}

#[test]
fn a_reader_that_sleeps_holds_the_writer_to_one_window() {
    const TOTAL: u64 = 256 * MIB;
    let window = StreamOptions::new().get_window() as u64;
    let q = queue("flow");
    let listener = Listener::bind(&url(), &q).unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let writer = thread::spawn({
        let (q, written) = (q.clone(), Arc::clone(&written));
        move || {
            let mut s = Stream::connect(&url(), &q).unwrap();
            assert_eq!(s.protocol_version(), ProtocolVersion::V2);
            let mut buf = vec![0u8; CHUNK];
            let mut offset = 0;
            while offset < TOTAL {
                fill(&mut buf, offset);
                s.write_all(&buf).unwrap();
                offset += CHUNK as u64;
                written.store(offset, Ordering::SeqCst);
            }
            s.shutdown(Shutdown::Write).unwrap();
        }
    });
    let (reader, _) = listener.accept().unwrap();
    let reader_queue = reader.local_addr().unwrap().queue().to_string();
    let memory_before = resident_bytes();

    // The reader sleeps for 3 s while the writer pushes.
    let asleep_until = Instant::now() + Duration::from_secs(3);
    let most_while_asleep = watch_queue(&reader_queue, || Instant::now() < asleep_until);
    let held_back_at = written.load(Ordering::SeqCst);
    eprintln!(
        "reader asleep: writer held at {held_back_at} bytes, queue peaked at {most_while_asleep} bytes (window {window})"
    );
    assert!(
        held_back_at <= window + CHUNK as u64,
        "the writer got {held_back_at} bytes past a sleeping reader (window {window})"
    );
    assert!(
        held_back_at >= CHUNK as u64,
        "the writer sent nothing at all"
    );
    assert!(
        most_while_asleep <= window + CHUNK as u64,
        "the queue held {most_while_asleep} bytes"
    );

    // Then it drains; every byte arrives, in order.
    let drain = thread::spawn(move || read_checked(reader));
    let most_while_draining = watch_queue(&reader_queue, || !drain.is_finished());
    assert_eq!(drain.join().unwrap(), TOTAL);
    writer.join().unwrap();
    let grown = resident_bytes().saturating_sub(memory_before);
    eprintln!(
        "draining: queue peaked at {most_while_draining} bytes; memory grew {} KiB over 256 MiB",
        grown / 1024
    );
    assert!(
        most_while_draining <= window + CHUNK as u64,
        "the queue held {most_while_draining} bytes"
    );
    assert!(
        grown < 64 * MIB,
        "memory grew {grown} bytes while 256 MiB passed"
    );
    record(
        "stopped reader",
        "256 MiB, 64 KiB writes",
        "reader sleeps 3 s, then drains",
        &format!(
            "writer held at {} KiB; queue at most {} KiB (window {} KiB); memory +{} KiB",
            held_back_at / 1024,
            most_while_asleep.max(most_while_draining) / 1024,
            window / 1024,
            grown / 1024
        ),
        TOTAL,
    );
}

#[test]
fn a_blocked_write_times_out_and_resumes_once_the_peer_reads() {
    let window = 256 * 1024;
    let options = StreamOptions::new().window(window);
    let q = queue("flow-timeout");
    let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let mut writer = Stream::connect_with(&url(), &q, options.clone()).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0usize;
    let err = loop {
        match writer.write(&chunk) {
            Ok(n) => sent += n,
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    assert!(
        sent <= window,
        "{sent} bytes went to a reader that never read"
    );
    // The reader takes it all; the writer may go on.
    let mut got = vec![0u8; sent];
    reader.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|b| *b == 7));
    writer.write_all(&chunk).unwrap();
    writer.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len(), chunk.len());
}

#[test]
fn a_writer_that_never_reads_its_own_side_still_gets_credit() {
    // Both directions busy, each side reading only in its own thread:
    // window updates travel behind data and must still be found.
    let options = StreamOptions::new().window(128 * 1024);
    let q = queue("flow-both");
    let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let client = Stream::connect_with(&url(), &q, options.clone()).unwrap();
    let (server, _) = listener.accept().unwrap();
    const EACH: u64 = 16 * MIB;
    let send = |stream: &Stream| {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut offset = 0;
            while offset < EACH {
                fill(&mut buf, offset);
                stream.write_all(&buf).unwrap();
                offset += CHUNK as u64;
            }
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let senders = [send(&client), send(&server)];
    let receivers = [client, server].map(|s| thread::spawn(move || read_checked(s)));
    for sender in senders {
        sender.join().unwrap();
    }
    for receiver in receivers {
        assert_eq!(receiver.join().unwrap(), EACH);
    }
}
