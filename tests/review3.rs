//! Hostile review of the issue 20 hardening (message cost, listener
//! wake-ups, request expiration, queue checks, hostile addresses).

mod common;

use amqp_stream::{Connector, ProtocolVersion, StreamOptions};
use common::{queue, url};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A writer that never reads, to a peer that reads everything at once:
/// the peer's window reports pile up in the writer's deliveries while its
/// writes never wait for credit (nobody takes them but the keepalive
/// round). A polite peer must not be taken for one that ignores the
/// window.
#[test]
fn window_reports_to_a_writer_that_never_waits_are_not_an_overrun() {
    let options = StreamOptions::new()
        .protocol_version(Some(ProtocolVersion::V3))
        .window(64 * 1024)
        .keepalive_interval(Duration::from_secs(60));
    let client = Connector::open_with(&url(), options.clone()).unwrap();
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("review3-reports");
    let listener = server.bind(&q).unwrap();
    let mut writer = client.connect(&q).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    let reading = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(err) => return Err(format!("read after {total}: {err}")),
            }
        }
    });
    // A paced writer: 1 KiB a millisecond, well within what the reader
    // takes, so it seldom waits for credit.
    let chunk = vec![7u8; 1024];
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < Duration::from_secs(8) {
        if let Err(err) = writer.write_all(&chunk) {
            panic!("write after {written} bytes: {err}");
        }
        written += chunk.len() as u64;
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.shutdown(std::net::Shutdown::Write).unwrap();
    let got = reading.join().unwrap().unwrap();
    assert_eq!(got, written);
}

/// A small xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sends `total` pattern bytes in writes of random sizes.
fn send_pattern(mut s: amqp_stream::Stream, total: usize, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed | 1);
    let mut sent = 0usize;
    while sent < total {
        let n = (1 + rng.below(3000) as usize).min(total - sent);
        let chunk: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
        s.write_all(&chunk)
            .map_err(|e| format!("write at {sent}: {e}"))?;
        sent += n;
        if rng.below(8) == 0 {
            s.flush().map_err(|e| format!("flush at {sent}: {e}"))?;
        }
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))
}

/// Reads everything in reads (and peeks) of random sizes and checks it.
fn receive_pattern(mut s: amqp_stream::Stream, total: usize, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed | 1);
    let mut got = 0usize;
    let mut buf = vec![0u8; 5000];
    loop {
        let want = 1 + rng.below(4999) as usize;
        if rng.below(5) == 0 {
            let n = s
                .peek(&mut buf[..want])
                .map_err(|e| format!("peek at {got}: {e}"))?;
            for (k, &b) in buf[..n].iter().enumerate() {
                if b != ((got + k) % 251) as u8 {
                    return Err(format!("peek: wrong byte at {}", got + k));
                }
            }
        }
        let n = s
            .read(&mut buf[..want])
            .map_err(|e| format!("read at {got}: {e}"))?;
        if n == 0 {
            break;
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            if b != ((got + k) % 251) as u8 {
                return Err(format!("wrong byte at {}", got + k));
            }
        }
        got += n;
    }
    if got != total {
        return Err(format!("got {got} of {total}"));
    }
    Ok(())
}

/// Full duplex over tiny and odd windows, random write and read sizes,
/// peeks, nodelay on or off: everything arrives, nothing waits forever
/// (a read or write timeout is a deadlock) and nothing is aborted.
#[test]
fn tiny_and_odd_windows_never_deadlock() {
    let rounds: u64 = std::env::var("REVIEW3_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let server = Connector::open(&url()).unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for round in 0..rounds {
        let pick = |rng: &mut Rng| -> usize {
            match rng.below(4) {
                0 => 2 + rng.below(8) as usize,
                1 => [511, 512, 513, 1023, 1024, 1025, 1026, 1027][rng.below(8) as usize],
                _ => 2 + rng.below(4095) as usize,
            }
        };
        let (wa, wb) = (pick(&mut rng), pick(&mut rng));
        let (na, nb) = (rng.below(2) == 0, rng.below(2) == 0);
        let total_ab = (wb * 40).clamp(2_000, 100_000);
        let total_ba = (wa * 40).clamp(2_000, 100_000);
        let q = queue("review3-windows");
        let listener = server
            .bind_with(
                &q,
                StreamOptions::new()
                    .protocol_version(Some(ProtocolVersion::V3))
                    .window(wb)
                    .nodelay(nb),
            )
            .unwrap();
        let client = Connector::open_with(
            &url(),
            StreamOptions::new()
                .protocol_version(Some(ProtocolVersion::V3))
                .window(wa)
                .nodelay(na),
        )
        .unwrap();
        let a = client.connect(&q).unwrap();
        let (b, _) = listener.accept().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        eprintln!(
            "round {round}: windows {wa}/{wb}, nodelay {na}/{nb}, {total_ab}/{total_ba} bytes"
        );
        let seed = rng.next();
        let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let threads = vec![
            std::thread::spawn(move || send_pattern(a, total_ab, seed)),
            std::thread::spawn(move || receive_pattern(b2, total_ab, seed ^ 1)),
            std::thread::spawn(move || send_pattern(b, total_ba, seed ^ 2)),
            std::thread::spawn(move || receive_pattern(a2, total_ba, seed ^ 3)),
        ];
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for r in &results {
            assert!(
                r.is_ok(),
                "round {round} windows {wa}/{wb} nodelay {na}/{nb}: {results:?}"
            );
        }
    }
}

/// A bare AMQP 0-9-1 client on a TCP socket: what anyone who can publish
/// in the virtual host can send, byte for byte, without a library's checks.
mod bare {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub struct Bare {
        socket: TcpStream,
    }

    fn shortstr(out: &mut Vec<u8>, s: &[u8]) {
        out.push(s.len() as u8);
        out.extend_from_slice(s);
    }

    impl Bare {
        fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
            let mut f = vec![kind];
            f.extend_from_slice(&channel.to_be_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            f.push(0xCE);
            self.socket.write_all(&f).unwrap();
        }

        fn method(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
            let mut p = class.to_be_bytes().to_vec();
            p.extend_from_slice(&method.to_be_bytes());
            p.extend_from_slice(args);
            self.frame(1, channel, &p);
        }

        /// The next method frame's (class, method, arguments).
        fn expect(&mut self) -> (u16, u16, Vec<u8>) {
            loop {
                let mut head = [0u8; 7];
                self.socket.read_exact(&mut head).unwrap();
                let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
                let mut payload = vec![0u8; size + 1];
                self.socket.read_exact(&mut payload).unwrap();
                if head[0] == 1 {
                    let class = u16::from_be_bytes([payload[0], payload[1]]);
                    let method = u16::from_be_bytes([payload[2], payload[3]]);
                    return (class, method, payload[4..size].to_vec());
                }
            }
        }

        /// Logs in as guest on the default vhost and opens channel 1.
        pub fn open() -> Bare {
            let socket = TcpStream::connect("127.0.0.1:5672").unwrap();
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut b = Bare { socket };
            b.socket.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
            assert_eq!(b.expect().0, 10); // start
            let mut args = 0u32.to_be_bytes().to_vec(); // no client properties
            shortstr(&mut args, b"PLAIN");
            let response = b"\0guest\0guest";
            args.extend_from_slice(&(response.len() as u32).to_be_bytes());
            args.extend_from_slice(response);
            shortstr(&mut args, b"en_US");
            b.method(0, 10, 11, &args);
            let (_, tune, targs) = b.expect();
            assert_eq!(tune, 30);
            let mut ok = targs[0..2].to_vec();
            ok.extend_from_slice(&targs[2..6]);
            ok.extend_from_slice(&0u16.to_be_bytes());
            b.method(0, 10, 31, &ok);
            let mut open = Vec::new();
            shortstr(&mut open, b"/");
            shortstr(&mut open, b"");
            open.push(0);
            b.method(0, 10, 40, &open);
            assert_eq!(b.expect().1, 41);
            b.method(1, 20, 10, &[0]);
            assert_eq!(b.expect().1, 11);
            b
        }

        /// Publishes an empty message to `queue` by the default exchange
        /// with the raw encoded basic `properties` (flags first).
        pub fn publish_raw(&mut self, queue: &str, properties: &[u8], body: &[u8]) {
            let mut args = 0u16.to_be_bytes().to_vec();
            shortstr(&mut args, b"");
            shortstr(&mut args, queue.as_bytes());
            args.push(0);
            self.method(1, 60, 40, &args);
            let mut header = 60u16.to_be_bytes().to_vec();
            header.extend_from_slice(&0u16.to_be_bytes());
            header.extend_from_slice(&(body.len() as u64).to_be_bytes());
            header.extend_from_slice(properties);
            self.frame(2, 1, &header);
            if !body.is_empty() {
                self.frame(3, 1, body);
            }
        }

        /// Properties with only `reply_to`, raw bytes.
        pub fn reply_to(bytes: &[u8]) -> Vec<u8> {
            let mut p = (1u16 << 9).to_be_bytes().to_vec();
            shortstr(&mut p, bytes);
            p
        }

        /// Properties with only `correlation_id`, raw bytes.
        pub fn correlation_id(bytes: &[u8]) -> Vec<u8> {
            let mut p = (1u16 << 10).to_be_bytes().to_vec();
            shortstr(&mut p, bytes);
            p
        }

        /// A round trip on the channel (basic.qos), so that what went
        /// before has reached the broker.
        pub fn sync(&mut self) {
            self.method(1, 60, 10, &[0, 0, 0, 0, 0, 10, 0]);
            assert_eq!(self.expect().1, 11);
        }
    }
}

/// A message whose reply_to is not UTF-8, to a listener's queue: the
/// broker passes it on; the listener's broker connection must survive.
#[test]
fn a_request_whose_reply_to_is_not_utf8_does_not_kill_the_listener() {
    let server = Connector::open(&url()).unwrap();
    let client = Connector::open(&url()).unwrap();
    let q = queue("review3-utf8");
    let listener = server.bind(&q).unwrap();
    let mut bare = bare::Bare::open();
    bare.publish_raw(&q, &bare::Bare::reply_to(b"\xff\xfe"), b"");
    bare.sync();
    // The listener still serves.
    let accepting = std::thread::spawn(move || listener.accept().map(|_| ()));
    let connected = client.connect_timeout(&q, Duration::from_secs(10));
    assert!(
        connected.is_ok() && !server.is_closed(),
        "after a non-UTF-8 reply_to: connect {:?}, listener's connection closed: {}",
        connected.err(),
        server.is_closed()
    );
    accepting.join().unwrap().unwrap();
}

/// The same to a connector's connection queue (its name is in every
/// stream's peer address): its streams must survive.
#[test]
fn a_frame_whose_correlation_id_is_not_utf8_does_not_kill_a_connection() {
    let server = Connector::open(&url()).unwrap();
    let client = Connector::open_with(
        &url(),
        StreamOptions::new().protocol_version(Some(ProtocolVersion::V3)),
    )
    .unwrap();
    let q = queue("review3-utf8-conn");
    let listener = server.bind(&q).unwrap();
    let mut stream = client.connect(&q).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    // The client's connection queue, as the listener's side sees it.
    let conn_queue = accepted.peer_addr().unwrap().queue().to_string();
    let conn_queue = conn_queue.split('#').next().unwrap().to_string();
    let mut bare = bare::Bare::open();
    bare.publish_raw(&conn_queue, &bare::Bare::correlation_id(b"\xc3\x28"), b"x");
    bare.sync();
    stream.write_all(b"still there").unwrap();
    stream.flush().unwrap();
    accepted.write_all(b"and back").unwrap();
    accepted.flush().unwrap();
    let mut buf = [0u8; 8];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let read = stream.read_exact(&mut buf);
    assert!(
        read.is_ok() && !client.is_closed(),
        "after a non-UTF-8 correlation_id: read {read:?}, client's connection closed: {}",
        client.is_closed()
    );
}

/// A listener that takes a request and dies without a word (its process
/// killed, say: its exclusive queue goes with its connection), some time
/// into the client's wait: the client is refused within a few keepalive
/// intervals, not at the end of its handshake timeout.
#[test]
fn a_listener_that_dies_late_in_a_handshake_is_noticed_within_a_few_intervals() {
    use amiquip::{ConsumerOptions, QueueDeclareOptions};
    let interval = Duration::from_millis(200);
    let q = queue("review3-late-death");
    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let declared = channel
        .queue_declare(
            q.as_str(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        )
        .unwrap();
    let consumer = declared.consume(ConsumerOptions::default()).unwrap();
    let options = StreamOptions::new()
        .keepalive_interval(interval)
        .handshake_timeout(Some(Duration::from_secs(60)));
    let client = Connector::open_with(&url(), options).unwrap();
    let start = Instant::now();
    let connecting = {
        let q = q.clone();
        std::thread::spawn(move || {
            let result = client.connect(&q).map(|_| ());
            (result, Instant::now())
        })
    };
    // The request arrives; the listener stays silent for a while (35
    // intervals), then dies.
    let _request = common::raw::next(consumer.receiver());
    std::thread::sleep(interval * 35);
    drop(consumer);
    let _ = channel.close();
    let _ = raw.close();
    let died = Instant::now();
    let (result, ended) = connecting.join().unwrap();
    let err = result.expect_err("nothing listens any more");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let late = ended - died;
    eprintln!(
        "refused {late:?} after the listener died ({:?} into the connect)",
        died - start
    );
    assert!(
        // Checks back off to at most 4 intervals apart; the rest is slack
        // for a busy machine (it took 28 intervals with a 30 s backoff).
        late < interval * 10,
        "refused only {late:?} after the listener died (keepalive interval {interval:?})"
    );
}

/// A handshake timeout of days (a user's "practically forever") is a
/// legitimate setting: the connect must succeed, and the other streams
/// of the connection carry on.
fn a_handshake_timeout_of_days(version: ProtocolVersion) {
    let days_60 = Duration::from_secs(60 * 24 * 3600);
    let options = StreamOptions::new()
        .protocol_version(Some(version))
        .handshake_timeout(Some(days_60));
    let client = Connector::open_with(&url(), options.clone()).unwrap();
    let server = Connector::open_with(&url(), options).unwrap();
    let q = queue("review3-long-timeout");
    let listener = server.bind(&q).unwrap();
    // A stream connected with a short timeout first, on the same connection.
    let mut first = client.connect_timeout(&q, Duration::from_secs(10)).unwrap();
    let (mut first_accepted, _) = listener.accept().unwrap();
    let accepting = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let second = client.connect_timeout(&q, days_60);
    assert!(second.is_ok(), "a 60-day timeout: {:?}", second.err());
    let _accepted = accepting.join().unwrap().unwrap();
    first.write_all(b"ping").unwrap();
    first.flush().unwrap();
    let mut buf = [0u8; 4];
    first_accepted
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    first_accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn a_version_3_connect_with_a_handshake_timeout_of_days_works() {
    a_handshake_timeout_of_days(ProtocolVersion::V3);
}

#[test]
fn a_version_2_connect_with_a_handshake_timeout_of_days_works() {
    a_handshake_timeout_of_days(ProtocolVersion::V2);
}

/// Two shared listeners, one accepting slowly from several threads, one
/// closed in the middle of a burst of version 1, 2 and 3 connects far
/// above the backlog: every connect ends (served, refused or timed out)
/// within its timeout, nothing is left in the queue, and the remaining
/// listener serves the next connects at once.
#[test]
fn shared_listeners_survive_a_mixed_burst_and_a_close_in_the_middle() {
    use std::sync::Arc;
    let q = queue("review3-shared-burst");
    let shared = StreamOptions::new().shared(true);
    let server_a = Connector::open_with(&url(), shared.clone()).unwrap();
    let server_b = Connector::open_with(&url(), shared).unwrap();
    let a = Arc::new(server_a.bind(&q).unwrap());
    let b = Arc::new(server_b.bind(&q).unwrap());
    let mut acceptors = Vec::new();
    for (listener, threads, pause) in [(&a, 3, 2u64), (&b, 1, 0)] {
        for _ in 0..threads {
            let listener = Arc::clone(listener);
            acceptors.push(std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut s) = stream else { continue };
                    std::thread::sleep(Duration::from_millis(pause));
                    let _ = s.write_all(b"hi");
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
            }));
        }
    }
    let clients: Vec<_> = [
        ProtocolVersion::V1,
        ProtocolVersion::V2,
        ProtocolVersion::V3,
    ]
    .into_iter()
    .map(|v| {
        Arc::new(
            Connector::open_with(
                &url(),
                StreamOptions::new()
                    .protocol_version(Some(v))
                    .handshake_timeout(Some(Duration::from_secs(5))),
            )
            .unwrap(),
        )
    })
    .collect();
    let started = Instant::now();
    let burst: Vec<_> = (0..600)
        .map(|i| {
            let (client, q) = (Arc::clone(&clients[i % 3]), q.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let t = Instant::now();
                    let r = client.connect(&q).and_then(|mut s| {
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).map(|_| got)
                    });
                    (r, t.elapsed())
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    a.close();
    let results: Vec<_> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    let served = results
        .iter()
        .filter(|(r, _)| matches!(r, Ok(got) if got == b"hi"))
        .count();
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap();
    eprintln!(
        "{served} of 600 served, slowest {slowest:?}, all in {:?}",
        started.elapsed()
    );
    for (r, _) in &results {
        if let Err(err) = r {
            assert!(
                matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionReset
                ),
                "{err}"
            );
        }
    }
    assert!(
        slowest < Duration::from_secs(20),
        "a connect took {slowest:?}"
    );
    common::eventually(
        Duration::from_secs(30),
        "the queue drains",
        || match common::queue_state(&q) {
            Some((0, 0, 1)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    for client in &clients {
        let t = Instant::now();
        let mut s = client.connect_timeout(&q, Duration::from_secs(5)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hi");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    b.close();
    for t in acceptors {
        t.join().unwrap();
    }
}
