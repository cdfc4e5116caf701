//! Protocol version 2 on the wire: a peer written with raw amiquip calls
//! plays the other side, so these tests pin down the exact messages
//! (headers, `type`, `message_id`, bodies) the crate documents, and show
//! what the crate does with a peer that breaks them.

mod common;

use amiquip::{
    AmqpProperties, AmqpValue, Channel, Consumer, ConsumerOptions, FieldTable, QueueDeclareOptions,
};
use amqp_stream::{ProtocolVersion, Stream, StreamOptions};
use common::raw::{exclusive_auto_delete, next, publish_with};
use common::{queue, raw_connection, url};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::thread;

const WINDOW: i64 = 1 << 20;

fn v2_headers(window: i64) -> FieldTable {
    let mut headers = FieldTable::new();
    headers.insert(
        "x-amqp-stream-version".to_string(),
        AmqpValue::LongLongInt(2),
    );
    headers.insert(
        "x-amqp-stream-window".to_string(),
        AmqpValue::LongLongInt(window),
    );
    headers
}

fn frame(kind: &str, seq: Option<u64>) -> AmqpProperties {
    let properties = AmqpProperties::default().with_type_(kind.to_string());
    match seq {
        Some(seq) => properties.with_message_id(seq.to_string()),
        None => properties,
    }
}

/// A raw server on a control queue, with the stream's channel.
struct RawServer {
    connection: amiquip::Connection,
    channel: Channel,
    queue: String,
}

impl RawServer {
    fn listen() -> RawServer {
        let mut connection = raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let queue = queue("wire-v2");
        channel
            .queue_declare(queue.clone(), exclusive_auto_delete())
            .unwrap();
        RawServer {
            connection,
            channel,
            queue,
        }
    }

    /// Answers the one SYN on the control queue; `answer` are the SYN-ACK's
    /// headers (`None`: answer as version 1). Returns the client's queue,
    /// the SYN's headers and the consumer of the server's own queue.
    fn accept(&self, answer: Option<FieldTable>) -> (String, Option<FieldTable>, Consumer<'_>) {
        self.accept_into(answer, exclusive_auto_delete())
    }

    /// Like [`accept`](Self::accept), with the server's own queue declared
    /// with `own`.
    fn accept_into(
        &self,
        answer: Option<FieldTable>,
        own: QueueDeclareOptions,
    ) -> (String, Option<FieldTable>, Consumer<'_>) {
        let requests = self
            .channel
            .basic_consume(self.queue.clone(), ConsumerOptions::default())
            .unwrap();
        let syn = next(requests.receiver());
        let client = syn.properties.reply_to().clone().unwrap();
        let offered = syn.properties.headers().clone();
        requests.ack(syn).unwrap();
        let own = self.channel.queue_declare("", own).unwrap();
        let data = own
            .consume(ConsumerOptions {
                exclusive: true,
                ..Default::default()
            })
            .unwrap();
        let mut properties = AmqpProperties::default().with_reply_to(own.name().to_string());
        if let Some(headers) = answer {
            properties = properties.with_headers(headers);
        }
        publish_with(&self.channel, &client, b"", properties);
        forget_consumer(requests);
        (client, offered, data)
    }

    fn send(&self, to: &str, body: &[u8], properties: AmqpProperties) {
        publish_with(&self.channel, to, body, properties);
    }

    fn close(self) {
        self.connection.close().unwrap();
    }
}

/// Lets a raw consumer go without cancelling it: the connection's close
/// ends it. (Dropping it would cancel it and race amiquip's cancel notice,
/// which can kill the connection.)
fn forget_consumer(consumer: Consumer<'_>) {
    std::mem::forget(consumer);
}

/// Connects our client in a thread and runs `client` on the stream.
fn client<T: Send + 'static>(
    queue: &str,
    options: StreamOptions,
    client: impl FnOnce(Stream) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let queue = queue.to_string();
    thread::spawn(move || client(Stream::connect_with(&url(), &queue, options.clone()).unwrap()))
}

#[test]
fn the_handshake_and_frames_are_as_documented() {
    let server = RawServer::listen();
    let talk = client(&server.queue, StreamOptions::new(), |mut s| {
        assert_eq!(s.protocol_version(), ProtocolVersion::V2);
        s.write_all(b"hello").unwrap();
        s.flush().unwrap();
        s.write_all(b" v2").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    });
    let (client_queue, offered, data) = server.accept(Some(v2_headers(WINDOW)));
    let offered = offered.expect("the SYN carries headers");
    // The highest version the client speaks; this listener answers 2.
    assert_eq!(
        offered.get("x-amqp-stream-version"),
        Some(&AmqpValue::LongLongInt(3))
    );
    assert_eq!(
        offered.get("x-amqp-stream-window"),
        Some(&AmqpValue::LongLongInt(
            StreamOptions::new().get_window() as i64
        ))
    );
    // Data frames numbered from 1, then the FIN with the next number.
    let mut got = Vec::new();
    let mut expected_seq = 1;
    loop {
        let d = next(data.receiver());
        let kind = d
            .properties
            .type_()
            .clone()
            .expect("every v2 frame has a type");
        if kind == "keepalive" || kind == "window" {
            data.ack(d).unwrap();
            continue;
        }
        assert_eq!(
            d.properties.message_id().as_deref(),
            Some(expected_seq.to_string().as_str())
        );
        expected_seq += 1;
        let fin = kind == "fin";
        assert!(fin || kind == "data", "unexpected frame {kind:?}");
        got.extend_from_slice(&d.body);
        data.ack(d).unwrap();
        if fin {
            break;
        }
    }
    assert_eq!(got, b"hello v2");
    server.send(&client_queue, b"fine, ", frame("data", Some(1)));
    server.send(&client_queue, b"thanks", frame("data", Some(2)));
    server.send(&client_queue, b"", frame("keepalive", None));
    server.send(&client_queue, b"", frame("fin", Some(3)));
    assert_eq!(talk.join().unwrap(), "fine, thanks");
    forget_consumer(data);
    server.close();
}

#[test]
fn the_reader_reports_its_window_as_it_consumes() {
    let window = 64 * 1024;
    let server = RawServer::listen();
    let options = StreamOptions::new().window(window);
    // The client keeps its stream open until the report has come: a
    // stream that closes may rightly skip reporting (its FIN says more).
    let (seen_tx, seen) = crossbeam_channel::bounded::<()>(1);
    let talk = client(&server.queue, options, move |mut s| {
        let mut all = vec![0u8; window];
        s.read_exact(&mut all).unwrap();
        let _ = seen.recv();
        all
    });
    let (client_queue, _, data) = server.accept(Some(v2_headers(WINDOW)));
    // A whole window, in 8 KiB frames.
    for seq in 1..=8u64 {
        server.send(&client_queue, &[seq as u8; 8192], frame("data", Some(seq)));
    }
    // Half a window or more consumed (the reader may take it all at
    // once): a report of at least 32 KiB, as 8 bytes big-endian.
    // Keepalives may come first on a slow machine.
    let d = loop {
        let d = next(data.receiver());
        if d.properties.type_().as_deref() == Some("keepalive") {
            data.ack(d).unwrap();
            continue;
        }
        break d;
    };
    assert_eq!(d.properties.type_().as_deref(), Some("window"));
    let consumed = u64::from_be_bytes(d.body.as_slice().try_into().expect("8 bytes"));
    assert!(
        (32 * 1024..=64 * 1024).contains(&consumed),
        "reported {consumed}"
    );
    data.ack(d).unwrap();
    seen_tx.send(()).unwrap();
    assert_eq!(talk.join().unwrap().len(), window);
    forget_consumer(data);
    server.close();
}

/// Our client reads what a raw server sends; returns what it read, how
/// reading ended and (when `reset_back`) the reset our side sent back.
fn read_broken_stream(
    frames: &[(&[u8], AmqpProperties)],
    reset_back: bool,
) -> (Vec<u8>, io::Error, Option<String>) {
    let server = RawServer::listen();
    let talk = client(&server.queue, StreamOptions::new(), read_to_error);
    let (client_queue, _, data) = server.accept(Some(v2_headers(WINDOW)));
    for (body, properties) in frames {
        server.send(&client_queue, body, properties.clone());
    }
    let (got, err) = talk.join().unwrap();
    // After the stream's error, our side resets it.
    let reset = reset_back.then(|| next_reset(&data));
    forget_consumer(data);
    server.close();
    (got, err, reset)
}

#[test]
fn a_gap_in_the_sequence_is_invalid_data() {
    let (got, err, reset) = read_broken_stream(
        &[
            (b"one", frame("data", Some(1))),
            (b"three", frame("data", Some(3))),
        ],
        true,
    );
    assert_eq!(got, b"one", "data before the gap is delivered");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("lost"), "{err}");
    assert!(reset.expect("a reset back").contains("lost"));
}

#[test]
fn a_repeated_frame_is_invalid_data() {
    let (got, err, reset) = read_broken_stream(
        &[
            (b"one", frame("data", Some(1))),
            (b"one", frame("data", Some(1))),
        ],
        true,
    );
    assert_eq!(got, b"one");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("duplicate"), "{err}");
    assert!(reset.is_some());
}

#[test]
fn frames_without_type_or_sequence_are_invalid_data() {
    let (_, err, reset) = read_broken_stream(&[(b"plain", AmqpProperties::default())], true);
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(reset.expect("a reset back").contains("without a type"));
    let (_, err, reset) = read_broken_stream(&[(b"x", frame("data", None))], true);
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(reset.expect("a reset back").contains("sequence number"));
}

#[test]
fn a_reset_from_the_peer_fails_the_blocked_read() {
    let (got, err, _) = read_broken_stream(
        &[
            (b"before", frame("data", Some(1))),
            (b"gone away", frame("reset", None)),
        ],
        false,
    );
    assert_eq!(got, b"before", "data before the reset is delivered");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(err.to_string().contains("gone away"), "{err}");
}

#[test]
fn a_client_pinned_to_version_2_refuses_a_version_1_server() {
    let server = RawServer::listen();
    let options = StreamOptions::new().protocol_version(Some(ProtocolVersion::V2));
    let queue = server.queue.clone();
    let talk = thread::spawn(move || Stream::connect_with(&url(), &queue, options.clone()));
    let (_, _, data) = server.accept(None);
    let err = talk.join().unwrap().unwrap_err();
    forget_consumer(data);
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("version"), "{err}");
    server.close();
}

#[test]
fn a_client_pinned_to_version_1_offers_nothing() {
    let server = RawServer::listen();
    let options = StreamOptions::new().protocol_version(Some(ProtocolVersion::V1));
    let talk = client(&server.queue, options, |mut s| {
        assert_eq!(s.protocol_version(), ProtocolVersion::V1);
        s.write_all(b"v1").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.read_to_end(&mut Vec::new()).unwrap();
    });
    let (client_queue, offered, data) = server.accept(None);
    assert_eq!(offered, None, "no version headers");
    let d = next(data.receiver());
    assert_eq!(d.body, b"v1");
    assert_eq!(d.properties.type_(), &None);
    data.ack(d).unwrap();
    server.send(&client_queue, b"", AmqpProperties::default());
    talk.join().unwrap();
    forget_consumer(data);
    server.close();
}

#[test]
fn a_forged_peer_gone_marker_is_invalid_data() {
    // The type our own end uses for its local "peer gone" marker.
    let forged = frame("amqp-stream.local.peer-gone", None);
    let (got, err, reset) =
        read_broken_stream(&[(b"one", frame("data", Some(1))), (b"", forged)], true);
    assert_eq!(got, b"one", "data before the forgery is delivered");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(reset.expect("a reset back").contains("local use"));
}

/// A peer that ignores our window cannot grow our memory: more than a
/// window beyond what the reader reported is a protocol violation,
/// found even while nobody reads (the worker takes frames in every
/// keepalive interval).
#[test]
fn a_peer_that_overruns_the_window_is_reset() {
    let window = 64 * 1024;
    let server = RawServer::listen();
    let options = StreamOptions::new()
        .window(window)
        .keepalive_interval(std::time::Duration::from_millis(100));
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
    let talk = client(&server.queue, options, move |s| {
        // Reads nothing until the server saw the reset.
        go_rx.recv().unwrap();
        read_to_error(s)
    });
    let (client_queue, _, data) = server.accept(Some(v2_headers(WINDOW)));
    // Four windows, in 8 KiB frames, with no credit ever given.
    for seq in 1..=32u64 {
        server.send(&client_queue, &[seq as u8; 8192], frame("data", Some(seq)));
    }
    let reset = next_reset(&data);
    assert!(reset.contains("flow control"), "{reset}");
    go_tx.send(()).unwrap();
    let (got, err) = talk.join().unwrap();
    assert_eq!(got.len(), window, "exactly the window is delivered");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    forget_consumer(data);
    server.close();
}

/// The reason of the next reset our side sends to the raw peer, skipping
/// other frames (keepalives keep coming: the wait is bounded).
fn next_reset(data: &Consumer<'_>) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "no reset within 10 s");
        let d = next(data.receiver());
        if d.properties.type_().as_deref() == Some("reset") {
            return String::from_utf8_lossy(&d.body).into_owned();
        }
    }
}

/// Reads until an error; a clean EOF is a test failure.
fn read_to_error(mut s: Stream) -> (Vec<u8>, io::Error) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("EOF from a broken stream"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => return (got, err),
        }
    }
}

/// The broker refuses (nacks) our data: the peer's queue is full and
/// rejects publishes. `flush` fails, and so does everything after it:
/// the stream is aborted, never left looking open, and the peer finds our
/// end gone once we close.
#[test]
fn a_message_the_broker_refuses_fails_the_stream() {
    let server = RawServer::listen();
    let talk = client(&server.queue, StreamOptions::new(), |mut s| {
        let local = s.local_addr().unwrap().queue().to_string();
        let mut flushed = Ok(());
        for _ in 0..20 {
            if s.write_all(&[7u8; 1000]).is_err() {
                break;
            }
            flushed = s.flush();
            if flushed.is_err() {
                break;
            }
        }
        let err = flushed.expect_err("the broker nacked data: flush fails");
        let write = s
            .write(b"more")
            .expect_err("a refused stream takes no writes");
        let shut = s.shutdown(Shutdown::Write).expect_err("nor a FIN");
        drop(s);
        (local, err, write, shut)
    });
    let mut full = exclusive_auto_delete();
    let mut arguments = FieldTable::new();
    arguments.insert("x-max-length".to_string(), AmqpValue::LongLongInt(1));
    arguments.insert(
        "x-overflow".to_string(),
        AmqpValue::LongString("reject-publish".to_string()),
    );
    full.arguments = arguments;
    // The server takes one message and never acknowledges it: its queue
    // then fills at the next one.
    server.channel.qos(0, 1, false).unwrap();
    let (_, _, data) = server.accept_into(Some(v2_headers(WINDOW)), full);
    forget_consumer(data);
    let (local, err, write, shut) = talk.join().unwrap();
    for e in [&err, &write, &shut] {
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
        assert!(e.to_string().contains("refused"), "{e}");
    }
    // Our end's queue is gone: the peer's next publish or probe fails.
    let mut prober = raw_connection();
    common::eventually(
        std::time::Duration::from_secs(10),
        "our queue to go",
        || {
            // A failed passive declare closes its channel: a new one each time.
            let probe = prober.open_channel(None).unwrap();
            match probe.queue_declare_passive(local.clone()) {
                Ok(_) => Err("still there".to_string()),
                Err(_) => Ok(()),
            }
        },
    );
    prober.close().unwrap();
    server.close();
}

/// Nothing may follow a FIN: the reader stops there, so data after it
/// would otherwise vanish without a word. The stream fails (`InvalidData`
/// for later calls) and the peer is reset, even while nobody reads.
#[test]
fn a_frame_after_the_fin_is_invalid_data() {
    let server = RawServer::listen();
    let options = StreamOptions::new().keepalive_interval(std::time::Duration::from_millis(100));
    let (read_tx, read_rx) = crossbeam_channel::bounded(1);
    let talk = client(&server.queue, options, move |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        read_tx.send(got).unwrap();
        // The worker finds the stray frame within a keepalive interval.
        let mut write = Ok(0);
        common::eventually(std::time::Duration::from_secs(10), "a failed write", || {
            write = s.write(b"x");
            write
                .as_ref()
                .err()
                .map(drop)
                .ok_or_else(|| "still Ok".to_string())
        });
        write.unwrap_err()
    });
    let (client_queue, _, data) = server.accept(Some(v2_headers(WINDOW)));
    server.send(&client_queue, b"one", frame("data", Some(1)));
    server.send(&client_queue, b"", frame("fin", Some(2)));
    server.send(&client_queue, b"stray", frame("data", Some(3)));
    assert_eq!(read_rx.recv().unwrap(), b"one");
    let reset = next_reset(&data);
    assert!(reset.contains("after its FIN"), "{reset}");
    let err = talk.join().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    forget_consumer(data);
    server.close();
}
