//! A peer that keeps to the credit window but writes one byte per
//! message, to a stream that does not read: what the receiving process
//! holds for it stays within a small multiple of the window, whatever
//! the message sizes (each message costs a delivery of some hundred
//! bytes, not just its body). A target of its own: it measures its
//! process's resident memory.

mod common;

use amqp_stream::{Connector, ProtocolVersion, StreamOptions};
use common::{queue, queue_state, resident_bytes, url};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

const WINDOW: usize = 256 * 1024;

#[test]
fn a_reader_that_stops_holds_little_more_than_its_window_of_one_byte_messages() {
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .window(WINDOW)
        .nodelay(true);
    let client = Connector::open_with(&url(), options.clone()).unwrap();
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("tiny-messages");
    let listener = server.bind(&q).unwrap();
    let mut writer = client.connect(&q).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    writer.set_nodelay(true).unwrap();
    let before = resident_bytes();

    // One byte per write, each its own message, until the window is used
    // up and a write waits for credit that never comes.
    writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut written = 0usize;
    loop {
        match writer.write(&[(written % 251) as u8]) {
            Ok(n) => written += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => panic!("write: {err}"),
        }
        assert!(written <= WINDOW, "wrote past the window");
    }
    writer.flush().unwrap();
    // Everything written has reached the reader's process.
    let reader_queue = reader
        .local_addr()
        .unwrap()
        .queue()
        .split('#')
        .next()
        .unwrap()
        .to_string();
    common::eventually(
        Duration::from_secs(30),
        "the broker delivers all",
        || match queue_state(&reader_queue) {
            Some((0, _, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "{written} one-byte messages in flight, resident memory +{} KiB (window {} KiB)",
        grown / 1024,
        WINDOW / 1024
    );
    assert!(
        grown < 16 * WINDOW as u64,
        "holding {written} unread bytes took {} KiB, more than 16 windows",
        grown / 1024
    );

    // Nothing was lost on the way.
    writer.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), written);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

/// The messages' cost leaves a writer the whole window's bytes: one that
/// writes a full window before it reads (in large messages) does not
/// wait for credit.
#[test]
fn a_writer_may_fill_the_whole_window_before_it_reads() {
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .window(WINDOW);
    let client = Connector::open_with(&url(), options.clone()).unwrap();
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("full-window");
    let listener = server.bind(&q).unwrap();
    let mut writer = client.connect(&q).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let data = common::random_bytes(WINDOW, 5);
    writer.write_all(&data).unwrap();
    writer.flush().unwrap();
    let mut got = vec![0; WINDOW];
    reader.read_exact(&mut got).unwrap();
    assert!(got == data);
}
