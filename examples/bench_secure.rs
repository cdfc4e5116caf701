//! The cost of end-to-end encryption: streams through the broker secured
//! (`amqp_stream::secure`, a pre-shared key) against plain streams, in
//! the same run, rounds interleaved so that the broker's drift hits both
//! alike; TCP loopback the same way, where nothing hides the cipher.
//!
//! `cargo run --release --features noise --example bench_secure [-- ROUNDS]` (default 5
//! rounds). Broker from `AMQP_URL` (default the local one). Prints, per
//! transport, bulk throughput (64 MiB one way in 64 KiB writes; median
//! of the rounds) and 1-byte ping-pong round trips (median and p99 of
//! all round trips), with the ratio secured / plain.

use amqp_stream::secure::{self, ClientConfig, PresharedKey, SecureStream, ServerConfig};
use amqp_stream::{Connector, Stream};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

const BULK: usize = 64 << 20;
const TCP_BULK: usize = 512 << 20;
const CHUNK: usize = 64 << 10;
const PINGS: usize = 1000;
const TCP_PINGS: usize = 20_000;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A connection the benchmark can end cleanly.
trait Conn: Read + Write + Send + 'static {
    fn finish(&mut self);
}

impl Conn for Stream {
    fn finish(&mut self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

impl Conn for TcpStream {
    fn finish(&mut self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

impl<S: secure::Channel + Send + Sync + 'static> Conn for SecureStream<S>
where
    for<'a> &'a S: Write,
{
    fn finish(&mut self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

/// Two connected streams on separate broker connections.
fn stream_pair(tag: &str) -> (Stream, Stream) {
    let queue = format!("bench-secure-{tag}-{}", uuid::Uuid::new_v4());
    let listener = Connector::open(&url()).unwrap().bind(&queue).unwrap();
    let accept = thread::spawn(move || listener.accept().unwrap().0);
    let client = Connector::open(&url()).unwrap().connect(&queue).unwrap();
    (client, accept.join().unwrap())
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let server = listener.accept().unwrap().0;
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

/// Secures a connected pair with a fresh pre-shared key.
fn secured<S: secure::Channel + Send + 'static>(
    (client, server): (S, S),
) -> (SecureStream<S>, SecureStream<S>) {
    let psk = PresharedKey::generate().unwrap();
    let server_config = ServerConfig::psk(psk.clone());
    let server = thread::spawn(move || secure::server(server, &server_config).unwrap());
    let client = secure::client(client, &ClientConfig::psk(psk)).unwrap();
    (client, server.join().unwrap())
}

/// `total` bytes one way in 64 KiB writes, until the reader has them
/// all: MiB/s.
fn bulk<C: Conn>((mut client, mut server): (C, C), total: usize) -> f64 {
    let started = Instant::now();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        loop {
            match server.read(&mut buf).unwrap() {
                0 => return got,
                n => got += n,
            }
        }
    });
    let chunk = vec![0x5au8; CHUNK];
    let mut sent = 0;
    while sent < total {
        client.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    client.finish();
    assert_eq!(reader.join().unwrap(), total);
    total as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

/// `count` 1-byte round trips: each one's time.
fn ping_pong<C: Conn>((mut client, mut server): (C, C), count: usize) -> Vec<Duration> {
    let echo = thread::spawn(move || {
        let mut byte = [0u8; 1];
        for _ in 0..count {
            server.read_exact(&mut byte).unwrap();
            server.write_all(&byte).unwrap();
        }
        server
    });
    let mut samples = Vec::with_capacity(count);
    let mut byte = [7u8; 1];
    for _ in 0..count {
        let started = Instant::now();
        client.write_all(&byte).unwrap();
        client.read_exact(&mut byte).unwrap();
        samples.push(started.elapsed());
    }
    let _server = echo.join().unwrap();
    samples
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let at = ((samples.len() as f64 * p) as usize).min(samples.len() - 1);
    samples[at].as_secs_f64() * 1e6
}

/// Bulk and ping-pong, plain against secured, `rounds` times each,
/// interleaved; prints the figures.
fn compare<S, P>(name: &str, rounds: usize, pair: P, bulk_bytes: usize, pings: usize)
where
    S: Conn + secure::Channel + Sync,
    for<'a> &'a S: Write,
    P: Fn() -> (S, S),
{
    let (mut plain_bulk, mut secure_bulk) = (Vec::new(), Vec::new());
    let (mut plain_rtt, mut secure_rtt) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first.
        for secure_first in [round % 2 == 1, round % 2 == 0] {
            if secure_first {
                secure_bulk.push(bulk(secured(pair()), bulk_bytes));
                secure_rtt.extend(ping_pong(secured(pair()), pings));
            } else {
                plain_bulk.push(bulk(pair(), bulk_bytes));
                plain_rtt.extend(ping_pong(pair(), pings));
            }
        }
    }
    let (plain_mib, secure_mib) = (median_f64(plain_bulk), median_f64(secure_bulk));
    let (plain_median, secure_median) = (
        percentile(&mut plain_rtt, 0.5),
        percentile(&mut secure_rtt, 0.5),
    );
    let (plain_p99, secure_p99) = (
        percentile(&mut plain_rtt, 0.99),
        percentile(&mut secure_rtt, 0.99),
    );
    println!(
        "{name}: bulk {} MiB x {rounds} rounds (median MiB/s): plain {plain_mib:.0}, \
         secured {secure_mib:.0}: {:.2}x",
        bulk_bytes >> 20,
        secure_mib / plain_mib
    );
    println!(
        "{name}: ping-pong 1 byte, {pings} x {rounds} round trips (us): median plain \
         {plain_median:.0}, secured {secure_median:.0} ({:+.1}%); p99 plain {plain_p99:.0}, \
         secured {secure_p99:.0} ({:+.1}%)",
        (secure_median / plain_median - 1.0) * 100.0,
        (secure_p99 / plain_p99 - 1.0) * 100.0
    );
}

fn main() {
    let rounds = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("ROUNDS is a number"))
        .unwrap_or(5);
    compare::<Stream, _>("broker stream", rounds, || stream_pair("pair"), BULK, PINGS);
    compare::<TcpStream, _>("TCP loopback", rounds, tcp_pair, TCP_BULK, TCP_PINGS);
}
