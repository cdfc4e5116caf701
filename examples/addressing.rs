//! Measures, with raw amiquip, the ways a stream end can be addressed on
//! the broker: what protocol version 3 chooses between.
//!
//! `cargo run --release --example addressing [-- --help]`. Broker from
//! `AMQP_URL` (default the local one; logs in as guest/guest with the
//! URL's host, port and vhost).
//!
//! On one open connection, against an echo service on another:
//! * **queue per request** (versions 1 and 2 today, and the baseline):
//!   a channel, an exclusive server-named queue, a consumer, the request,
//!   its answer, then cancelling and closing;
//! * **direct reply-to**: one channel consumes `amq.rabbitmq.reply-to`
//!   (no-ack) once; each request is published on it with that `reply_to`
//!   and its answer comes straight back, with no queue at all;
//! * **queue per connection**: one exclusive queue consumed once, each
//!   request naming it in `reply_to` and told apart by `correlation_id`.
//!
//! It prints the median setup time of each, the message rate and the
//! 64 KiB throughput of a direct reply-to address against a queue, and
//! checks that nothing is lost to a direct reply-to address whose
//! consumer falls behind (every message numbered and counted).

use amiquip::{AmqpProperties, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const SETUPS: usize = 500;
const BULK_MESSAGES: usize = 4096;
const BULK_SIZE: usize = 64 << 10;
const SMALL_MESSAGES: usize = 100_000;
const DIRECT: &str = "amq.rabbitmq.reply-to";

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A raw connection with TCP_NODELAY, as amqp-stream opens its own.
fn connection() -> amiquip::Connection {
    let url: amqp_stream::BrokerUrl = url().parse().expect("AMQP_URL is a broker URL");
    let socket = TcpStream::connect((url.host(), url.port())).expect("the broker answers");
    socket.set_nodelay(true).expect("no-delay");
    let socket = mio::net::TcpStream::from_stream(socket).expect("a mio socket");
    amiquip::Connection::insecure_open_stream(
        socket,
        amiquip::ConnectionOptions::<amiquip::Auth>::default().virtual_host(url.vhost()),
        amiquip::ConnectionTuning::default(),
    )
    .expect("guest may log in")
}

fn no_ack() -> ConsumerOptions {
    ConsumerOptions {
        no_ack: true,
        ..Default::default()
    }
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    }
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

fn next_delivery(consumer: &amiquip::Consumer<'_>) -> amiquip::Delivery {
    match consumer.receiver().recv().expect("the consumer lives") {
        ConsumerMessage::Delivery(d) => d,
        other => panic!("the consumer ended: {other:?}"),
    }
}

/// An echo service on its own connection: answers `requests` messages on
/// `service` to their `reply_to`, keeping their `correlation_id`.
fn echo_service(service: &str, requests: usize) -> thread::JoinHandle<()> {
    let mut conn = connection();
    let ch = conn.open_channel(None).expect("a channel");
    let service = service.to_string();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let done = thread::spawn(move || {
        let queue = ch
            .queue_declare(service, exclusive())
            .expect("the service's queue");
        let consumer = queue.consume(no_ack()).expect("consuming");
        ready_tx.send(()).expect("the caller waits");
        for _ in 0..requests {
            let d = next_delivery(&consumer);
            let mut props = AmqpProperties::default();
            if let Some(id) = d.properties.correlation_id() {
                props = props.with_correlation_id(id.clone());
            }
            let to = d.properties.reply_to().clone().expect("reply_to");
            ch.basic_publish("", Publish::with_properties(&d.body, to, props))
                .expect("answering");
        }
        drop(consumer);
        let _ = conn.close();
    });
    ready.recv().expect("the service started");
    done
}

fn queue_per_request(service: &str) -> f64 {
    let done = echo_service(service, SETUPS);
    let mut conn = connection();
    let samples = (0..SETUPS)
        .map(|_| {
            let started = Instant::now();
            let ch = conn.open_channel(None).expect("a channel");
            let own = ch.queue_declare("", exclusive()).expect("a reply queue");
            let consumer = own.consume(no_ack()).expect("consuming");
            let props = AmqpProperties::default().with_reply_to(own.name().to_string());
            ch.basic_publish("", Publish::with_properties(&[1], service, props))
                .expect("the request");
            next_delivery(&consumer);
            consumer.cancel().expect("cancel");
            for m in consumer.receiver().iter() {
                if let ConsumerMessage::ClientCancelled = m {
                    break;
                }
            }
            drop(consumer);
            ch.close().expect("closing");
            started.elapsed()
        })
        .collect();
    done.join().expect("the service");
    let _ = conn.close();
    median_ms(samples)
}

fn direct_reply_to(service: &str) -> f64 {
    let done = echo_service(service, SETUPS);
    let mut conn = connection();
    let ch = conn.open_channel(None).expect("a channel");
    let consumer = ch.basic_consume(DIRECT, no_ack()).expect("consuming");
    let samples = (0..SETUPS)
        .map(|i| {
            let started = Instant::now();
            let props = AmqpProperties::default()
                .with_reply_to(DIRECT.to_string())
                .with_correlation_id(i.to_string());
            ch.basic_publish("", Publish::with_properties(&[1], service, props))
                .expect("the request");
            let answer = next_delivery(&consumer);
            assert_eq!(answer.properties.correlation_id(), &Some(i.to_string()));
            started.elapsed()
        })
        .collect();
    done.join().expect("the service");
    drop(consumer);
    let _ = conn.close();
    median_ms(samples)
}

fn queue_per_connection(service: &str) -> f64 {
    let done = echo_service(service, SETUPS);
    let mut conn = connection();
    let ch = conn.open_channel(None).expect("a channel");
    let own = ch
        .queue_declare("", exclusive())
        .expect("the connection's queue");
    let consumer = own.consume(no_ack()).expect("consuming");
    let samples = (0..SETUPS)
        .map(|i| {
            let started = Instant::now();
            let props = AmqpProperties::default()
                .with_reply_to(own.name().to_string())
                .with_correlation_id(i.to_string());
            ch.basic_publish("", Publish::with_properties(&[1], service, props))
                .expect("the request");
            let answer = next_delivery(&consumer);
            assert_eq!(answer.properties.correlation_id(), &Some(i.to_string()));
            started.elapsed()
        })
        .collect();
    done.join().expect("the service");
    drop(consumer);
    let _ = conn.close();
    median_ms(samples)
}

/// Messages of `size` bytes, `count` of them, to a receiver addressed by
/// direct reply-to (`direct`) or by its own queue: (messages/s, MiB/s).
/// The receiver sleeps now and then, so the broker has to hold messages
/// for it; every message is numbered and checked on arrival.
fn one_way(direct: bool, count: usize, size: usize) -> (f64, f64) {
    let mut receiver_conn = connection();
    let rch = receiver_conn.open_channel(None).expect("a channel");
    let (consumer, address_for_sender) = if direct {
        (
            rch.basic_consume(DIRECT, no_ack()).expect("consuming"),
            None,
        )
    } else {
        let q = rch.queue_declare("", exclusive()).expect("a queue");
        let name = q.name().to_string();
        (q.consume(no_ack()).expect("consuming"), Some(name))
    };
    // The sender learns a direct address the way a peer does: from the
    // reply_to of a message published on the consuming channel.
    let service = format!("addressing-hello-{}", uuid::Uuid::new_v4());
    let mut sender_conn = connection();
    let sch = sender_conn.open_channel(None).expect("a channel");
    let hello = sch
        .queue_declare(service.clone(), exclusive())
        .expect("a queue");
    let hello_consumer = hello.consume(no_ack()).expect("consuming");
    let reply_to = if direct {
        DIRECT.to_string()
    } else {
        "x".into()
    };
    rch.basic_publish(
        "",
        Publish::with_properties(
            &[],
            service.clone(),
            AmqpProperties::default().with_reply_to(reply_to),
        ),
    )
    .expect("hello");
    let address = match address_for_sender {
        Some(name) => name,
        None => next_delivery(&hello_consumer)
            .properties
            .reply_to()
            .clone()
            .expect("a direct address"),
    };
    drop(hello_consumer);
    let started = Instant::now();
    let sender = thread::spawn(move || {
        let body = vec![7u8; size];
        for i in 0..count {
            let props = AmqpProperties::default().with_message_id(i.to_string());
            sch.basic_publish(
                "",
                Publish {
                    body: &body,
                    routing_key: address.clone(),
                    mandatory: true,
                    immediate: false,
                    properties: props,
                },
            )
            .expect("publishing");
        }
        drop(sch);
        sender_conn
    });
    for i in 0..count {
        let d = next_delivery(&consumer);
        assert_eq!(
            d.properties.message_id(),
            &Some(i.to_string()),
            "a message lost or reordered"
        );
        if i % 1000 == 999 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    let took = started.elapsed().as_secs_f64();
    let _ = sender.join().expect("the sender").close();
    drop(consumer);
    let _ = receiver_conn.close();
    (
        count as f64 / took,
        (count * size) as f64 / (1 << 20) as f64 / took,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: addressing\n  broker: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f)"
        );
        return;
    }
    let service = |tag: &str| format!("addressing-{tag}-{}", uuid::Uuid::new_v4());
    let baseline = queue_per_request(&service("queue"));
    let direct = direct_reply_to(&service("direct"));
    let shared = queue_per_connection(&service("shared"));
    println!("setup: request + answer on an open connection, median of {SETUPS}");
    println!(
        "  {:<34} {:>8.3} ms  1.00x",
        "queue per request (baseline)", baseline
    );
    for (name, ms) in [
        ("direct reply-to", direct),
        ("queue per connection", shared),
    ] {
        println!("  {name:<34} {ms:>8.3} ms  {:.2}x", ms / baseline);
    }
    let (q_rate, _) = one_way(false, SMALL_MESSAGES, 1);
    let (d_rate, _) = one_way(true, SMALL_MESSAGES, 1);
    let (_, q_bulk) = one_way(false, BULK_MESSAGES, BULK_SIZE);
    let (_, d_bulk) = one_way(true, BULK_MESSAGES, BULK_SIZE);
    println!("one way, consumer pausing 5 ms every 1,000 messages, none lost or reordered");
    println!(
        "  {:<34} {:>8.0} msg/s  direct {:>8.0} msg/s  {:.2}x",
        "1-byte messages, queue",
        q_rate,
        d_rate,
        d_rate / q_rate
    );
    println!(
        "  {:<34} {:>8.0} MiB/s  direct {:>8.0} MiB/s  {:.2}x",
        "64 KiB messages, queue",
        q_bulk,
        d_bulk,
        d_bulk / q_bulk
    );
}
