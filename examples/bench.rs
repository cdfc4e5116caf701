//! Measures amqp-stream against raw amiquip and TCP loopback, in one run.
//!
//! `cargo run --release --example bench [-- [--help] [--json] [SCENARIO...]]`,
//! where a scenario is `bulk`, `small`, `ping`, `setup`, `fan-out` or `rr`
//! (all of them when none is named); `--protocol 1|2|3` pins the
//! protocol version on both ends (negotiated without it: a connector's
//! first stream to a listener is version 2, later ones version 3). Broker from
//! `AMQP_URL` (default the local one). Scenarios: bulk transfer in 64 KiB
//! writes; small writes (1 KiB); a 1-byte ping-pong round trip; setup
//! (connect, first byte back, close); fan-out (1,000 concurrent streams on
//! one `Connector`, each echoing 64 KiB); request/response (50 streams
//! at once, each sending 1 byte and waiting for it back, for 10 s). The raw baseline logs in as
//! guest/guest with the URL's host, port and vhost.

use amiquip::{ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions};
use amqp_stream::{Connector, ProtocolVersion, Stream, StreamOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

const BULK: usize = 256 << 20;
const CHUNK: usize = 64 << 10;
const SMALL_TOTAL: usize = 64 << 20;
const SMALL: usize = 1 << 10;
const PINGS: usize = 2000;
const SETUPS: usize = 200;
const FAN_OUT: usize = 1000;
const FAN_OUT_BYTES: usize = 64 << 10;
const RR_STREAMS: usize = 50;
const RR_SECONDS: u64 = 10;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The protocol version `--protocol N` pins on both ends; negotiated
/// without it.
static PROTOCOL: std::sync::OnceLock<Option<ProtocolVersion>> = std::sync::OnceLock::new();

/// A connector with the version the command line asked for.
fn connector() -> std::io::Result<Connector> {
    let pin = PROTOCOL.get().copied().flatten();
    Connector::open_with(&url(), StreamOptions::new().protocol_version(pin))
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

/// Raw consumers in the baselines take messages without acknowledging.
fn no_ack() -> ConsumerOptions {
    ConsumerOptions {
        no_ack: true,
        ..Default::default()
    }
}

/// A raw baseline queue deleted when its consumer goes.
fn transient() -> QueueDeclareOptions {
    QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    }
}

/// A raw baseline queue private to its connection.
fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    }
}

/// Two connected streams on separate broker connections (as two processes would have).
fn stream_pair(tag: &str) -> (Stream, Stream) {
    let queue = format!("bench-{tag}-{}", std::process::id());
    let listener = connector().unwrap().bind(&queue).unwrap();
    let accept = thread::spawn(move || listener.accept().unwrap().0);
    let client = connector().unwrap().connect(&queue).unwrap();
    (client, accept.join().unwrap())
}

/// Reads to EOF, counting the bytes without keeping them.
fn count_to_eof(mut source: impl Read) -> usize {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match source.read(&mut buf).unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

/// Writes `total` bytes in `chunk`-sized writes, half-closes, and waits
/// until `counted` has read them all: MiB/s.
fn timed_send<W: Write>(
    mut sink: W,
    half_close: impl FnOnce(&W),
    total: usize,
    chunk: usize,
    counted: thread::JoinHandle<usize>,
) -> f64 {
    let data = vec![7u8; chunk];
    let started = Instant::now();
    for _ in 0..total / chunk {
        sink.write_all(&data).unwrap();
    }
    half_close(&sink);
    assert_eq!(counted.join().unwrap(), total);
    mib_per_s(total, started.elapsed())
}

fn stream_bulk(total: usize, chunk: usize) -> f64 {
    let (client, server) = stream_pair("bulk");
    let counted = thread::spawn(move || count_to_eof(server));
    timed_send(
        client,
        |s| s.shutdown(Shutdown::Write).unwrap(),
        total,
        chunk,
        counted,
    )
}

fn raw_bulk(total: usize, chunk: usize) -> f64 {
    let queue = format!("bench-raw-bulk-{}", std::process::id());
    let mut consumer_conn = raw_connection();
    let channel = consumer_conn.open_channel(None).unwrap();
    let q = channel.queue_declare(queue.clone(), transient()).unwrap();
    let consumer = q.consume(no_ack()).unwrap();
    let rx = consumer.receiver().clone();
    let publisher = thread::spawn(move || {
        let mut conn = raw_connection();
        let ch = conn.open_channel(None).unwrap();
        let data = vec![7u8; chunk];
        for _ in 0..total / chunk {
            ch.basic_publish("", Publish::new(&data, queue.clone()))
                .unwrap();
        }
        conn
    });
    let started = Instant::now();
    let mut received = 0;
    while received < total {
        if let ConsumerMessage::Delivery(d) = rx.recv().unwrap() {
            received += d.body.len();
        }
    }
    let took = started.elapsed();
    let _ = publisher.join().unwrap().close();
    mib_per_s(total, took)
}

fn tcp_bulk(total: usize, chunk: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counted = thread::spawn(move || count_to_eof(listener.accept().unwrap().0));
    let client = TcpStream::connect(addr).unwrap();
    timed_send(
        client,
        |s| s.shutdown(Shutdown::Write).unwrap(),
        total,
        chunk,
        counted,
    )
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
    let mut echo_conn = raw_connection();
    let echo_ch = echo_conn.open_channel(None).unwrap();
    echo_ch.queue_declare(to_echo.clone(), transient()).unwrap();
    let mut client_conn = raw_connection();
    let client_ch = client_conn.open_channel(None).unwrap();
    let back = client_ch
        .queue_declare(to_client.clone(), transient())
        .unwrap();
    let back_consumer = back.consume(no_ack()).unwrap();
    let echo = thread::spawn(move || {
        let q = echo_ch.queue_declare_passive(to_echo).unwrap();
        let c = q.consume(no_ack()).unwrap();
        for _ in 0..PINGS {
            if let ConsumerMessage::Delivery(d) = c.receiver().recv().unwrap() {
                echo_ch
                    .basic_publish("", Publish::new(&d.body, to_client.clone()))
                    .unwrap();
            }
        }
        cancel_and_drop(c);
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

/// Median of durations, in milliseconds.
fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Sends back everything it reads, then half-closes.
fn echo_all(stream: Stream) {
    let mut reader = stream.try_clone().unwrap();
    let mut writer = stream;
    std::io::copy(&mut reader, &mut writer).unwrap();
    writer.shutdown(Shutdown::Write).unwrap();
}

/// An echo listener on its own broker connection; returns its queue.
fn echo_listener(tag: &str) -> String {
    let queue = format!("bench-{tag}-{}", std::process::id());
    let listener = connector().unwrap().bind(&queue).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            thread::spawn(move || echo_all(stream));
        }
    });
    queue
}

/// Connect, one byte there and back, close, through a shared listener
/// (`replicated`: on a quorum queue) on a connection of its own.
fn shared_listener_setup(replicated: bool) -> f64 {
    let queue = format!("bench-shared-{replicated}-{}", std::process::id());
    let pin = PROTOCOL.get().copied().flatten();
    let options = StreamOptions::new()
        .protocol_version(pin)
        .shared(true)
        .replicated(replicated);
    let listener = Connector::open_with(&url(), options)
        .unwrap()
        .bind(&queue)
        .unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            thread::spawn(move || echo_all(stream));
        }
    });
    let connector = connector().unwrap();
    time_setups(|| connector.connect(&queue).unwrap())
}

/// Connect, one byte there and back, close: over a shared connection.
fn stream_setup() -> f64 {
    let queue = echo_listener("setup");
    let connector = connector().unwrap();
    time_setups(|| connector.connect(&queue).unwrap())
}

/// Median of `SETUPS` times: `connect`, one byte there and back, drop.
fn time_setups<S: Read + Write>(mut connect: impl FnMut() -> S) -> f64 {
    let samples = (0..SETUPS)
        .map(|_| {
            let started = Instant::now();
            let mut s = connect();
            s.write_all(&[1]).unwrap();
            s.read_exact(&mut [0u8; 1]).unwrap();
            drop(s);
            started.elapsed()
        })
        .collect();
    median_ms(samples)
}

/// Cancels a raw consumer and waits for amiquip's cancel notice before
/// the consumer goes, as amqp-stream does: dropping it earlier races that
/// notice and can kill the whole connection.
fn cancel_and_drop(consumer: amiquip::Consumer<'_>) {
    consumer.cancel().unwrap();
    for message in consumer.receiver().iter() {
        if let ConsumerMessage::ClientCancelled = message {
            break;
        }
    }
}

/// A raw echo service on its own connection: answers `requests` messages
/// on the queue `service` to their `reply_to`, then hands back its
/// connection.
fn raw_echo_service(service: &str, requests: usize) -> thread::JoinHandle<amiquip::Connection> {
    let mut service_conn = raw_connection();
    let service_ch = service_conn.open_channel(None).unwrap();
    service_ch
        .queue_declare(service.to_string(), exclusive())
        .unwrap();
    let served = service.to_string();
    thread::spawn(move || {
        let queue = service_ch.queue_declare_passive(served).unwrap();
        let consumer = queue.consume(no_ack()).unwrap();
        for _ in 0..requests {
            if let ConsumerMessage::Delivery(d) = consumer.receiver().recv().unwrap() {
                let reply_to = d.properties.reply_to().clone().unwrap();
                service_ch
                    .basic_publish("", Publish::new(&d.body, reply_to))
                    .unwrap();
            }
        }
        cancel_and_drop(consumer);
        service_conn
    })
}

/// The raw equivalent of a stream's setup on an open connection: a
/// channel, an exclusive reply queue, a consumer, a request to an echo
/// service and its answer, then closing the channel.
fn raw_setup() -> f64 {
    let service = format!("bench-raw-setup-{}", std::process::id());
    let echo = raw_echo_service(&service, SETUPS);
    let mut conn = raw_connection();
    let samples = (0..SETUPS)
        .map(|_| {
            let started = Instant::now();
            let ch = conn.open_channel(None).unwrap();
            let own = ch.queue_declare("", exclusive()).unwrap();
            let consumer = own.consume(no_ack()).unwrap();
            let props = amiquip::AmqpProperties::default().with_reply_to(own.name().to_string());
            ch.basic_publish("", Publish::with_properties(&[1], service.clone(), props))
                .unwrap();
            loop {
                if let ConsumerMessage::Delivery(_) = consumer.receiver().recv().unwrap() {
                    break;
                }
            }
            cancel_and_drop(consumer);
            ch.close().unwrap();
            started.elapsed()
        })
        .collect();
    let _ = echo.join().unwrap().close();
    let _ = conn.close();
    median_ms(samples)
}

fn tcp_setup() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let s = s.unwrap();
            thread::spawn(move || echo_bytes(s));
        }
    });
    time_setups(|| {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s
    })
}

/// `FAN_OUT` streams at once on one connector, each sending
/// `FAN_OUT_BYTES` and reading them back: (total MiB/s both ways, wall s).
fn stream_fan_out() -> (f64, f64) {
    let queue = echo_listener("fan-out");
    let connector = connector().unwrap();
    fan_out(move || {
        let s = connector.connect(&queue).unwrap();
        let closer = s.try_clone().unwrap();
        echo_through(s, move |_| closer.shutdown(Shutdown::Write).unwrap())
    })
}

/// Writes `FAN_OUT_BYTES`, half-closes and reads the echo to the end
/// (64 KiB fits in the buffers on the way, so no second thread is needed);
/// returns how much came back.
fn echo_through(mut s: impl Read + Write, half_close: impl FnOnce(&mut dyn Write)) -> usize {
    s.write_all(&vec![7u8; FAN_OUT_BYTES]).unwrap();
    half_close(&mut s);
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    back.len()
}

/// Runs `client` on `FAN_OUT` threads at once: (total MiB/s, wall s).
fn fan_out(client: impl Fn() -> usize + Send + Sync + 'static) -> (f64, f64) {
    let client = std::sync::Arc::new(client);
    let started = Instant::now();
    let clients: Vec<_> = (0..FAN_OUT)
        .map(|_| {
            let client = std::sync::Arc::clone(&client);
            thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || client())
                .unwrap()
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), FAN_OUT_BYTES);
    }
    let took = started.elapsed();
    (
        mib_per_s(2 * FAN_OUT * FAN_OUT_BYTES, took),
        took.as_secs_f64(),
    )
}

/// The raw equivalent of fan-out: `FAN_OUT` clients at once on one
/// connection, each with its own channel and exclusive reply queue,
/// sending `FAN_OUT_BYTES` to an echo service in one message and taking
/// the answer.
fn raw_fan_out() -> (f64, f64) {
    let service = format!("bench-raw-fan-out-{}", std::process::id());
    let echo = raw_echo_service(&service, FAN_OUT);
    let conn = std::sync::Arc::new(std::sync::Mutex::new(raw_connection()));
    let shared = std::sync::Arc::clone(&conn);
    let figures = fan_out(move || {
        let ch = shared.lock().unwrap().open_channel(None).unwrap();
        let own = ch.queue_declare("", exclusive()).unwrap();
        let consumer = own.consume(no_ack()).unwrap();
        let props = amiquip::AmqpProperties::default().with_reply_to(own.name().to_string());
        let body = vec![7u8; FAN_OUT_BYTES];
        ch.basic_publish("", Publish::with_properties(&body, service.clone(), props))
            .unwrap();
        let echoed = loop {
            if let ConsumerMessage::Delivery(d) = consumer.receiver().recv().unwrap() {
                break d.body.len();
            }
        };
        cancel_and_drop(consumer);
        ch.close().unwrap();
        echoed
    });
    let _ = echo.join().unwrap().close();
    if let Ok(conn) = std::sync::Arc::try_unwrap(conn) {
        let _ = conn.into_inner().unwrap().close();
    }
    figures
}

fn tcp_fan_out() -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let s = s.unwrap();
            thread::spawn(move || {
                let mut reader = s.try_clone().unwrap();
                let mut writer = s;
                std::io::copy(&mut reader, &mut writer).unwrap();
                writer.shutdown(Shutdown::Write).unwrap();
            });
        }
    });
    fan_out(move || {
        let s = TcpStream::connect(addr).unwrap();
        let closer = s.try_clone().unwrap();
        echo_through(s, move |_| closer.shutdown(Shutdown::Write).unwrap())
    })
}

/// `RR_STREAMS` clients at once, each sending 1 byte and waiting for it
/// back, over and over for `RR_SECONDS`, through `round_trip`: round
/// trips per second, all clients together (what database and cache
/// traffic through the bridge looks like).
fn request_response<C: Send + 'static>(
    clients: Vec<C>,
    round_trip: impl Fn(&mut C) + Send + Sync + 'static,
) -> f64 {
    let round_trip = std::sync::Arc::new(round_trip);
    let started = Instant::now();
    let until = started + Duration::from_secs(RR_SECONDS);
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let round_trip = std::sync::Arc::clone(&round_trip);
            thread::spawn(move || {
                let mut done = 0u64;
                while Instant::now() < until {
                    round_trip(&mut client);
                    done += 1;
                }
                (done, client)
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap().0).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

fn stream_request_response() -> f64 {
    let queue = echo_listener("rr");
    let connector = connector().unwrap();
    let streams: Vec<Stream> = (0..RR_STREAMS)
        .map(|_| connector.connect(&queue).unwrap())
        .collect();
    request_response(streams, |s| {
        s.write_all(&[1]).unwrap();
        s.read_exact(&mut [0u8; 1]).unwrap();
    })
}

/// The raw equivalent: `RR_STREAMS` channels on one connection, each with
/// its own reply queue, against one echo service consuming without acks.
fn raw_request_response() -> f64 {
    let service = format!("bench-raw-rr-{}", std::process::id());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut service_conn = raw_connection();
    let service_ch = service_conn.open_channel(None).unwrap();
    service_ch
        .queue_declare(service.clone(), exclusive())
        .unwrap();
    let (served, stopping) = (service.clone(), std::sync::Arc::clone(&stop));
    let echo = thread::spawn(move || {
        let queue = service_ch.queue_declare_passive(served).unwrap();
        let consumer = queue.consume(no_ack()).unwrap();
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok(ConsumerMessage::Delivery(d)) =
                consumer.receiver().recv_timeout(Duration::from_millis(100))
            else {
                continue;
            };
            let reply_to = d.properties.reply_to().clone().unwrap();
            service_ch
                .basic_publish("", Publish::new(&d.body, reply_to))
                .unwrap();
        }
        cancel_and_drop(consumer);
        service_conn
    });
    let mut conn = raw_connection();
    let clients: Vec<(
        amiquip::Channel,
        String,
        crossbeam_channel::Receiver<ConsumerMessage>,
    )> = (0..RR_STREAMS)
        .map(|_| {
            let ch = conn.open_channel(None).unwrap();
            let own = ch.queue_declare("", exclusive()).unwrap();
            let name = own.name().to_string();
            let consumer = own.consume(no_ack()).unwrap();
            let receiver = consumer.receiver().clone();
            // The consumer lives until its channel closes.
            std::mem::forget(consumer);
            (ch, name, receiver)
        })
        .collect();
    let rate = request_response(clients, move |(ch, own, receiver)| {
        let props = amiquip::AmqpProperties::default().with_reply_to(own.clone());
        ch.basic_publish("", Publish::with_properties(&[1], service.clone(), props))
            .unwrap();
        while !matches!(receiver.recv().unwrap(), ConsumerMessage::Delivery(_)) {}
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = echo.join().unwrap().close();
    let _ = conn.close();
    rate
}

/// Request/response through TCP loopback, for scale.
fn tcp_request_response() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let s = s.unwrap();
            s.set_nodelay(true).unwrap();
            thread::spawn(move || echo_bytes(s));
        }
    });
    let sockets: Vec<TcpStream> = (0..RR_STREAMS)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    request_response(sockets, |s| {
        s.write_all(&[1]).unwrap();
        s.read_exact(&mut [0u8; 1]).unwrap();
    })
}

/// One line of the results: a scenario and its figures.
struct Row {
    name: &'static str,
    key: &'static str,
    stream: f64,
    raw: Option<f64>,
    tcp: f64,
}

/// A scenario's name on the command line and how to measure it.
struct Scenario {
    name: &'static str,
    run: fn() -> Vec<Row>,
}

/// The scenarios, each giving its rows of the table.
const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "bulk",
        run: || {
            vec![Row {
                name: "bulk 256 MiB, 64 KiB writes, MiB/s",
                key: "bulk_mib_s",
                stream: stream_bulk(BULK, CHUNK),
                raw: Some(raw_bulk(BULK, CHUNK)),
                tcp: tcp_bulk(BULK, CHUNK),
            }]
        },
    },
    Scenario {
        name: "small",
        run: || {
            vec![Row {
                name: "small writes 64 MiB in 1 KiB, MiB/s",
                key: "small_writes_mib_s",
                stream: stream_bulk(SMALL_TOTAL, SMALL),
                raw: Some(raw_bulk(SMALL_TOTAL, SMALL)),
                tcp: tcp_bulk(SMALL_TOTAL, SMALL),
            }]
        },
    },
    Scenario {
        name: "ping",
        run: || {
            let ((s_p50, s_p99), (r_p50, r_p99), (t_p50, t_p99)) =
                (stream_ping(), raw_ping(), tcp_ping());
            vec![
                Row {
                    name: "ping-pong 1 byte, median us",
                    key: "ping_median_us",
                    stream: s_p50,
                    raw: Some(r_p50),
                    tcp: t_p50,
                },
                Row {
                    name: "ping-pong 1 byte, p99 us",
                    key: "ping_p99_us",
                    stream: s_p99,
                    raw: Some(r_p99),
                    tcp: t_p99,
                },
            ]
        },
    },
    Scenario {
        name: "setup",
        run: || {
            vec![Row {
                name: "setup (connect+byte+close), median ms",
                key: "setup_median_ms",
                stream: stream_setup(),
                raw: Some(raw_setup()),
                tcp: tcp_setup(),
            }]
        },
    },
    Scenario {
        name: "shared-setup",
        run: || {
            let tcp = tcp_setup();
            vec![
                Row {
                    name: "setup via shared listener, median ms",
                    key: "shared_setup_median_ms",
                    stream: shared_listener_setup(false),
                    raw: None,
                    tcp,
                },
                Row {
                    name: "setup via replicated listener, median ms",
                    key: "replicated_setup_median_ms",
                    stream: shared_listener_setup(true),
                    raw: None,
                    tcp,
                },
            ]
        },
    },
    Scenario {
        name: "fan-out",
        run: || {
            let ((s_fan, s_wall), (r_fan, r_wall), (t_fan, t_wall)) =
                (stream_fan_out(), raw_fan_out(), tcp_fan_out());
            vec![
                Row {
                    name: "fan-out 1,000 x 64 KiB echo, MiB/s",
                    key: "fan_out_mib_s",
                    stream: s_fan,
                    raw: Some(r_fan),
                    tcp: t_fan,
                },
                Row {
                    name: "fan-out 1,000 x 64 KiB echo, wall s",
                    key: "fan_out_wall_s",
                    stream: s_wall,
                    raw: Some(r_wall),
                    tcp: t_wall,
                },
            ]
        },
    },
    Scenario {
        name: "rr",
        run: || {
            vec![Row {
                name: "request/response, 50 x 1 byte, round trips/s",
                key: "request_response_per_s",
                stream: stream_request_response(),
                raw: Some(raw_request_response()),
                tcp: tcp_request_response(),
            }]
        },
    },
];

/// The usage line, naming the scenarios.
fn usage() -> String {
    let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
    format!(
        "usage: bench [--json] [--protocol 1|2|3] [SCENARIO...]\n  scenarios: {} (all when none is named)\n  broker: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f)",
        names.join(", ")
    )
}

/// What the command line asks for: JSON output or a table, and which
/// scenarios (all when none is named). `Err` carries the exit code: 0
/// after `--help`, 2 for a mistake, with what to print.
fn parse_args(args: &[String]) -> Result<(bool, Vec<&str>), (i32, String)> {
    let mut json = false;
    let mut chosen = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => return Err((0, usage())),
            "--json" => json = true,
            "--protocol" => {
                let pin = match args.next().map(String::as_str) {
                    Some("1") => ProtocolVersion::V1,
                    Some("2") => ProtocolVersion::V2,
                    Some("3") => ProtocolVersion::V3,
                    other => return Err((2, format!("--protocol takes 1, 2 or 3, not {other:?}"))),
                };
                let _ = PROTOCOL.set(Some(pin));
            }
            name if SCENARIOS.iter().any(|s| s.name == name) => chosen.push(name),
            other if other.starts_with('-') => {
                return Err((2, format!("unknown option {other:?}\n{}", usage())));
            }
            other => return Err((2, format!("unknown scenario {other:?}\n{}", usage()))),
        }
    }
    Ok((json, chosen))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (json, chosen) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err((0, text)) => {
            println!("{text}");
            return;
        }
        Err((code, text)) => {
            eprintln!("{text}");
            std::process::exit(code);
        }
    };
    let rows: Vec<Row> = SCENARIOS
        .iter()
        .filter(|s| chosen.is_empty() || chosen.contains(&s.name))
        .flat_map(|s| (s.run)())
        .collect();
    if json {
        let fields: Vec<String> = rows
            .iter()
            .map(|r| {
                let raw = r.raw.map_or("null".to_string(), |v| format!("{v:.3}"));
                format!(
                    "\"{}\":{{\"amqp_stream\":{:.3},\"raw_amiquip\":{raw},\"tcp\":{:.3}}}",
                    r.key, r.stream, r.tcp
                )
            })
            .collect();
        println!("{{{}}}", fields.join(","));
        return;
    }
    println!(
        "{:<40} {:>12} {:>12} {:>10} {:>11}",
        "scenario", "amqp-stream", "raw amiquip", "TCP", "stream/raw"
    );
    for r in &rows {
        let raw = r.raw.map_or("-".to_string(), |v| format!("{v:.1}"));
        let ratio = r
            .raw
            .map_or("-".to_string(), |v| format!("{:.2}x", r.stream / v));
        println!(
            "{:<40} {:>12.1} {:>12} {:>10.1} {:>11}",
            r.name, r.stream, raw, r.tcp, ratio
        );
    }
}
