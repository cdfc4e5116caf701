//! What the crate costs the broker's error log. RabbitMQ logs every
//! passive declare of a queue exclusive to another connection at `error`
//! level, even when the queue is there: a client waiting for a busy
//! listener must not check the listener's queue so often that a burst of
//! them fills the operator's log.

mod common;

use amiquip::{ConsumerOptions, QueueDeclareOptions};
use amqp_stream::{Connector, StreamOptions};
use common::{queue, url};
use std::io::ErrorKind;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The broker's log file, from `rabbitmq-diagnostics`.
fn broker_log() -> std::path::PathBuf {
    let out = std::process::Command::new("rabbitmq-diagnostics")
        .args(["-q", "log_location"])
        .output()
        .expect("rabbitmq-diagnostics runs (scripts/ensure-broker.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|line| line.ends_with(".log"))
        .unwrap_or_else(|| panic!("no log file in {text:?}"))
        .trim()
        .into()
}

/// The broker's error lines about `queue` (quoted, as RabbitMQ names it).
fn error_lines_naming(log: &std::path::Path, queue: &str) -> usize {
    let text = std::fs::read(log).expect("the broker's log is readable");
    let needle = format!("'{queue}'");
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|line| line.contains("[error]") && line.contains(&needle))
        .count()
}

#[test]
fn clients_waiting_for_a_busy_listener_leave_few_lines_in_the_brokers_error_log() {
    const CLIENTS: usize = 40;
    let log = broker_log();
    let q = queue("busy-listener");
    // A listener that takes requests and never answers (as one whose
    // backlog is full would, for a while).
    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    channel
        .queue_declare(
            q.as_str(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        )
        .unwrap();
    let _consumer = channel
        .basic_consume(q.as_str(), ConsumerOptions::default())
        .unwrap();

    let options = StreamOptions::new()
        .handshake_timeout(Some(Duration::from_secs(3)))
        .keepalive_interval(Duration::from_millis(100));
    let connector = Arc::new(Connector::open_with(&url(), options).unwrap());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (connector, q) = (Arc::clone(&connector), q.clone());
            thread::spawn(move || connector.connect(&q).map(drop))
        })
        .collect();
    for client in clients {
        let err = client.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    }

    // A line of our own after theirs: once it is in the log, so is
    // everything the clients caused.
    let marker = format!("{q}-marker");
    let probe = raw.open_channel(None).unwrap();
    assert!(probe.queue_declare_passive(marker.as_str()).is_err());
    common::eventually(
        Duration::from_secs(10),
        "the broker logs",
        || match error_lines_naming(&log, &marker) {
            0 => Err("no marker yet".to_string()),
            _ => Ok(()),
        },
    );
    let lines = error_lines_naming(&log, &q);
    eprintln!("{CLIENTS} clients waiting 3 s: {lines} error lines in the broker's log");
    assert!(
        lines < CLIENTS,
        "{lines} error lines for {CLIENTS} clients waiting 3 s: more than one each"
    );
    let _ = raw.close();
}
