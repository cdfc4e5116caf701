//! No password in any log line (of any crate, at any level), `Debug`,
//! `Display` or error message, on success and on every kind of failure.

mod common;

use amqp_stream::{Addr, BrokerUrl, Connector, Listener, Stream};
use common::node::TestNode;
use common::queue;
use common::summary::record;
use std::io::{Read, Write};
use std::sync::Mutex;

/// The test node's user; the password appears nowhere but in URLs.
const USER: &str = "streamer";
const PASSWORD: &str = "pw-Kq81zv-never-printed";
const WRONG_PASSWORD: &str = "pw-wrong-9TnXb-never-printed";

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every log line of every crate, at every level.
struct Everything;

impl log::Log for Everything {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        LINES.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// Fails if a password is in `text`, saying where it was seen.
fn assert_clean(what: &str, text: &str) {
    for password in [PASSWORD, WRONG_PASSWORD] {
        assert!(
            !text.contains(password),
            "the password is in {what}: {text}"
        );
    }
}

#[test]
fn no_password_in_logs_debug_display_or_errors() {
    log::set_boxed_logger(Box::new(Everything)).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let node = TestNode::start(&format!("default_user = {USER}\ndefault_pass = {PASSWORD}"));
    let port = node.port();
    let url = format!("amqp://{USER}:{PASSWORD}@127.0.0.1:{port}/%2f");
    let mut shown = Vec::new();

    // A good login, a stream both ways, and everything a user may print.
    let connector = Connector::open(&url).unwrap();
    let q = queue("credentials");
    let listener = connector.bind(&q).unwrap();
    let mut client = Stream::connect(&url, &q).unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut got = [0; 5];
    server.read_exact(&mut got).unwrap();
    let broker: BrokerUrl = url.parse().unwrap();
    let addr: Addr = format!("{url}?server_queue={q}").parse().unwrap();
    shown.push(("Connector Debug", format!("{connector:?}")));
    shown.push(("Listener Debug", format!("{listener:?}")));
    shown.push(("Stream Debug", format!("{client:?} {server:?}")));
    shown.push(("BrokerUrl", format!("{broker} {broker:?}")));
    shown.push(("Addr", format!("{addr} {addr:?} {peer} {peer:?}")));
    shown.push((
        "stream addresses",
        format!(
            "{} {}",
            client.peer_addr().unwrap(),
            client.local_addr().unwrap()
        ),
    ));
    drop((client, server, listener, connector));

    // Every way of failing that has the password in hand.
    let failures = [
        (
            "a wrong password",
            format!("amqp://{USER}:{WRONG_PASSWORD}@127.0.0.1:{port}/%2f"),
        ),
        (
            "a broker that is not there",
            format!(
                "amqp://{USER}:{PASSWORD}@127.0.0.1:{}/%2f",
                common::free_port()
            ),
        ),
        (
            "a malformed port",
            format!("amqp://{USER}:{PASSWORD}@127.0.0.1:notaport/%2f"),
        ),
        (
            "an unknown scheme",
            format!("http://{USER}:{PASSWORD}@127.0.0.1:{port}/%2f"),
        ),
        (
            "an unknown virtual host",
            format!("amqp://{USER}:{PASSWORD}@127.0.0.1:{port}/nowhere"),
        ),
        (
            "a malformed query",
            format!("amqp://{USER}:{PASSWORD}@127.0.0.1:{port}/%2f?heartbeat=soon"),
        ),
    ];
    for (what, bad) in &failures {
        let err = Connector::open(bad).expect_err(what);
        shown.push((what, format!("{err} {err:?}")));
        if let Ok(parsed) = bad.parse::<BrokerUrl>() {
            shown.push((what, format!("{parsed} {parsed:?}")));
        }
        let err = Stream::connect(bad, "anything").expect_err(what);
        shown.push((what, format!("{err} {err:?}")));
        let err = Listener::bind(bad, "anything").expect_err(what);
        shown.push((what, format!("{err} {err:?}")));
    }

    for (what, text) in &shown {
        assert_clean(what, text);
    }
    let lines = LINES.lock().unwrap().clone();
    for line in &lines {
        assert_clean("a log line", line);
    }
    // The capture did see the crates at work, at debug and below.
    assert!(lines.iter().any(|l| l.starts_with("DEBUG amqp_stream")));
    assert!(lines.iter().any(|l| l.contains(" amiquip")));
    assert!(lines.iter().any(|l| l.starts_with("TRACE amiquip")));
    // amiquip's own record of the login, at debug, with a mask where the
    // password was: the crate hides it without holding the process's log
    // level down while it logs in (it used to, and this record was lost).
    let masked = format!("\\0{USER}\\0{}", "*".repeat(PASSWORD.len()));
    assert!(
        lines.iter().any(|l| l.starts_with("DEBUG amiquip")
            && l.contains("StartOk")
            && l.contains(&masked)),
        "no masked login record: {:?}",
        lines
            .iter()
            .filter(|l| l.contains("StartOk"))
            .collect::<Vec<_>>()
    );
    assert_eq!(log::max_level(), log::LevelFilter::Trace);
    record(
        "password never shown",
        &format!(
            "{} log lines at trace, {} printed values",
            lines.len(),
            shown.len()
        ),
        "good login, wrong password, unreachable, malformed URLs",
        "no password in any log line, Debug, Display or error",
        5,
    );
}
