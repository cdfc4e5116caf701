//! Lists of broker URLs against the test broker and addresses where no
//! broker answers: a port nobody listens on (refused at once) and one
//! that takes the TCP connection but never speaks AMQP (a node that hangs).
//! The cluster itself is in `tests/cluster.rs`.

mod common;

use amqp_stream::{Connector, Error, Listener, Stream};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A URL with a password where nothing listens.
fn refusing_url() -> String {
    format!("amqp://guest:hunter2@127.0.0.1:{}/%2f", common::free_port())
}

/// A URL whose port takes TCP connections (the kernel completes them
/// into the backlog) but never answers the AMQP handshake, while the
/// returned listener lives.
fn hanging_url() -> (String, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (
        format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f"),
        listener,
    )
}

/// The test broker's URL with `?query` added, as the last address of a
/// list (the shuffle decides whether it is tried first).
fn broker_with(query: &str) -> String {
    let url = common::url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

#[test]
fn a_list_with_dead_addresses_reaches_the_broker_and_says_which_it_is_on() {
    let q = common::queue("list-dead");
    let broker: amqp_stream::BrokerUrl = common::url().parse().unwrap();
    let list = format!("{},{},{}", refusing_url(), common::url(), refusing_url());
    let listener = Listener::bind(&list, &q).unwrap();
    let listening_on = listener.local_addr().unwrap();
    assert_eq!(listening_on.broker().port(), broker.port());
    // Whatever order the shuffle picks, ten times over.
    for round in 0..10u8 {
        let mut client = Stream::connect(&list, &q).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(client.local_addr().unwrap().broker().port(), broker.port());
        client.write_all(&[round]).unwrap();
        client.flush().unwrap();
        let mut got = [0];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, [round]);
    }
    let connector = Connector::open(&list).unwrap();
    assert_eq!(connector.broker().port(), broker.port());
    let shown = format!("{connector:?} {listener:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn when_every_address_fails_one_error_names_each_and_no_password() {
    let (a, b) = (refusing_url(), refusing_url());
    let err = Stream::connect(&format!("{a},{b}"), "nowhere").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HostUnreachable, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("could not connect to any of the 2 brokers: "),
        "{text}"
    );
    for url in [&a, &b] {
        let port = url.rsplit(':').next().unwrap().trim_end_matches("/%2f");
        assert!(text.contains(&format!(":{port}/")), "{port} in {text}");
    }
    assert!(!format!("{text} {err:?}").contains("hunter2"), "{text}");
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(
        matches!(inner, Some(Error::AllBrokersFailed { failures }) if failures.len() == 2),
        "{inner:?}"
    );

    // One address fails as it always did: with its own error.
    let err = Stream::connect(&a, "nowhere").unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(
        matches!(inner, Some(Error::Unreachable { .. })),
        "{inner:?}"
    );

    // A refused login outranks a node that is down: it is what to fix.
    let bad_login = common::url().replacen("guest:guest@", "guest:wrong@", 1);
    assert!(
        bad_login.contains("wrong"),
        "AMQP_URL has guest:guest: {bad_login}"
    );
    let err = Connector::open(&format!("{a},{bad_login},{b}")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.to_string().contains("wrong@"), "{err}");
}

#[test]
fn a_node_that_hangs_gets_only_its_share_of_the_connect_timeout() {
    let q = common::queue("list-hang");
    let listener = Listener::bind(&common::url(), &q).unwrap();
    let (hanging, _held) = hanging_url();
    // 6 s for two addresses: the hanging one gets at most 3 s, the broker
    // what is left. The broker's own `connection_timeout` is long: the
    // share is what limits the hanging one.
    let list = format!("{hanging},{}", broker_with("connection_timeout=60000"));
    for _ in 0..3 {
        let began = Instant::now();
        let stream = Stream::connect_timeout(&list, &q, Duration::from_secs(6)).unwrap();
        let took = began.elapsed();
        assert!(took < Duration::from_secs(6), "connecting took {took:?}");
        drop(listener.accept().unwrap());
        drop(stream);
        eprintln!("connected through the list in {took:.1?}");
    }

    // Two that hang: the timeout is for the whole list, not each address.
    let (other, _held_too) = hanging_url();
    let began = Instant::now();
    let err = Stream::connect_timeout(&format!("{hanging},{other}"), &q, Duration::from_secs(4))
        .unwrap_err();
    let took = began.elapsed();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(7),
        "gave up after {took:?}, not the list's 4 s: {err}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn malformed_lists_are_refused_before_any_connection() {
    for (bad, says) in [
        (
            "amqp://guest:hunter2@node1,node2",
            "host cannot hold a comma",
        ),
        (
            "amqp://guest:hunter2@node1/a,amqp://guest:hunter2@node2/b",
            "virtual host",
        ),
        ("amqp://guest:hunter2@node1,", "it is empty"),
    ] {
        let err = Connector::open(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
        assert!(err.to_string().contains(says), "{bad}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{bad}: {err}");
    }
}
