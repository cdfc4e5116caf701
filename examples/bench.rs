//! Measures amqp-stream against raw amiquip and TCP loopback, in one run.
//!
//! `cargo run --release --example bench [-- --json]`. Broker from
//! `AMQP_URL` (default the local one). Scenarios so far: bulk transfer in
//! 64 KiB writes, and a 1-byte ping-pong round trip. The raw baseline logs
//! in as guest/guest with the URL's host, port and vhost.

use amiquip::{ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions};
use amqp_stream::{Connector, Stream};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

const BULK: usize = 256 << 20;
const CHUNK: usize = 64 << 10;
const PINGS: usize = 2000;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// A raw amiquip connection with TCP_NODELAY, as amqp-stream opens its own:
/// the fair baseline (amiquip's `insecure_open` leaves Nagle on).
fn raw_connection() -> amiquip::Connection {
    let url: amqp_stream::BrokerUrl = url().parse().unwrap();
    let socket = TcpStream::connect((url.host(), url.port())).unwrap();
    socket.set_nodelay(true).unwrap();
    let socket = mio::net::TcpStream::from_stream(socket).unwrap();
    amiquip::Connection::insecure_open_stream(
        socket,
        amiquip::ConnectionOptions::<amiquip::Auth>::default().virtual_host(url.vhost()),
        amiquip::ConnectionTuning::default(),
    )
    .unwrap()
}

/// Two connected streams on separate broker connections (as two processes would have).
fn stream_pair(tag: &str) -> (Stream, Stream) {
    let queue = format!("bench-{tag}-{}", std::process::id());
    let listener = Connector::open(&url()).unwrap().bind(&queue).unwrap();
    let accept = thread::spawn(move || listener.accept().unwrap().0);
    let client = Connector::open(&url()).unwrap().connect(&queue).unwrap();
    (client, accept.join().unwrap())
}

fn stream_bulk() -> f64 {
    let (mut client, mut server) = stream_pair("bulk");
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0;
        loop {
            match server.read(&mut buf).unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    });
    let chunk = vec![7u8; CHUNK];
    let started = Instant::now();
    for _ in 0..BULK / CHUNK {
        client.write_all(&chunk).unwrap();
    }
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(reader.join().unwrap(), BULK);
    mib_per_s(BULK, started.elapsed())
}

fn raw_bulk() -> f64 {
    let queue = format!("bench-raw-bulk-{}", std::process::id());
    let mut consumer_conn = raw_connection();
    let channel = consumer_conn.open_channel(None).unwrap();
    let q = channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        )
        .unwrap();
    let consumer = q
        .consume(ConsumerOptions {
            no_ack: true,
            ..Default::default()
        })
        .unwrap();
    let rx = consumer.receiver().clone();
    let publisher = thread::spawn(move || {
        let mut conn = raw_connection();
        let ch = conn.open_channel(None).unwrap();
        let chunk = vec![7u8; CHUNK];
        for _ in 0..BULK / CHUNK {
            ch.basic_publish("", Publish::new(&chunk, queue.clone()))
                .unwrap();
        }
        conn
    });
    let started = Instant::now();
    let mut total = 0;
    while total < BULK {
        if let ConsumerMessage::Delivery(d) = rx.recv().unwrap() {
            total += d.body.len();
        }
    }
    let took = started.elapsed();
    let _ = publisher.join().unwrap().close();
    mib_per_s(BULK, took)
}

fn tcp_bulk() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
        sink.len()
    });
    let mut s = TcpStream::connect(addr).unwrap();
    let chunk = vec![7u8; CHUNK];
    let started = Instant::now();
    for _ in 0..BULK / CHUNK {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(reader.join().unwrap(), BULK);
    mib_per_s(BULK, started.elapsed())
}

/// Median and p99 of round trips, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// Sends each byte it reads straight back, until EOF.
fn echo_bytes(mut s: impl Read + Write) {
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        s.write_all(&b).unwrap();
    }
}

/// Times `PINGS` 1-byte round trips through an echoing peer.
fn round_trips(s: &mut (impl Read + Write)) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(PINGS);
    let mut b = [1u8; 1];
    for _ in 0..PINGS {
        let t = Instant::now();
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
        samples.push(t.elapsed());
    }
    samples
}

fn stream_ping() -> (f64, f64) {
    let (mut client, server) = stream_pair("ping");
    let echo = thread::spawn(move || echo_bytes(server));
    let samples = round_trips(&mut client);
    client.shutdown(Shutdown::Write).unwrap();
    echo.join().unwrap();
    percentiles(samples)
}

fn raw_ping() -> (f64, f64) {
    let pid = std::process::id();
    let (to_echo, to_client) = (format!("bench-raw-a-{pid}"), format!("bench-raw-b-{pid}"));
    let opts = || QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    let mut echo_conn = raw_connection();
    let echo_ch = echo_conn.open_channel(None).unwrap();
    echo_ch.queue_declare(to_echo.clone(), opts()).unwrap();
    let mut client_conn = raw_connection();
    let client_ch = client_conn.open_channel(None).unwrap();
    let back = client_ch.queue_declare(to_client.clone(), opts()).unwrap();
    let back_consumer = back
        .consume(ConsumerOptions {
            no_ack: true,
            ..Default::default()
        })
        .unwrap();
    let echo = thread::spawn(move || {
        let q = echo_ch.queue_declare_passive(to_echo).unwrap();
        let c = q
            .consume(ConsumerOptions {
                no_ack: true,
                ..Default::default()
            })
            .unwrap();
        for _ in 0..PINGS {
            if let ConsumerMessage::Delivery(d) = c.receiver().recv().unwrap() {
                echo_ch
                    .basic_publish("", Publish::new(&d.body, to_client.clone()))
                    .unwrap();
            }
        }
        drop(c);
        echo_conn
    });
    let mut samples = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        client_ch
            .basic_publish("", Publish::new(&[1], format!("bench-raw-a-{pid}")))
            .unwrap();
        loop {
            if let ConsumerMessage::Delivery(_) = back_consumer.receiver().recv().unwrap() {
                break;
            }
        }
        samples.push(t.elapsed());
    }
    let _ = echo.join().unwrap().close();
    percentiles(samples)
}

fn tcp_ping() -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        echo_bytes(s)
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let samples = round_trips(&mut s);
    drop(s);
    echo.join().unwrap();
    percentiles(samples)
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let (s_bulk, r_bulk, t_bulk) = (stream_bulk(), raw_bulk(), tcp_bulk());
    let ((s_p50, s_p99), (r_p50, r_p99), (t_p50, t_p99)) = (stream_ping(), raw_ping(), tcp_ping());
    if json {
        println!(
            "{{\"bulk_mib_s\":{{\"amqp_stream\":{s_bulk:.1},\"raw_amiquip\":{r_bulk:.1},\"tcp\":{t_bulk:.1}}},\
             \"ping_us\":{{\"amqp_stream\":[{s_p50:.0},{s_p99:.0}],\"raw_amiquip\":[{r_p50:.0},{r_p99:.0}],\"tcp\":[{t_p50:.0},{t_p99:.0}]}}}}"
        );
        return;
    }
    println!("scenario                         amqp-stream   raw amiquip      TCP   stream/raw");
    println!(
        "bulk 256 MiB, 64 KiB writes MiB/s {s_bulk:>9.1} {r_bulk:>13.1} {t_bulk:>8.1} {:>11.2}x",
        s_bulk / r_bulk
    );
    println!(
        "ping-pong 1 byte, median us      {s_p50:>9.0} {r_p50:>13.0} {t_p50:>8.0} {:>11.2}x",
        s_p50 / r_p50
    );
    println!(
        "ping-pong 1 byte, p99 us         {s_p99:>9.0} {r_p99:>13.0} {t_p99:>8.0} {:>11.2}x",
        s_p99 / r_p99
    );
}
