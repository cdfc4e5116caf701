//! A broker link that stalls without closing (through a test relay that
//! stops forwarding either way, every socket left open, AMQP heartbeats
//! off so that nothing notices): connecting gives up within its timeout,
//! a lost connection is not taken for a refusal, closing a connection
//! gives up after its timeout, and dropping a stream returns within about
//! its linger.

mod common;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::relay::Relay;
use common::summary::record;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// The timeout the stalled connects are given.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a stalled connect may take in all: its timeout and slack for
/// a loaded machine.
const CONNECT_BOUND: Duration = Duration::from_secs(10);

/// The linger of the streams dropped on a stalled link.
const LINGER: Duration = Duration::from_secs(1);

/// How long dropping such a stream may take: its linger, the short wait
/// for the broker to answer the connection's close, and slack.
const DROP_BOUND: Duration = Duration::from_secs(6);

/// What a close given up on may take beyond its timeout.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// How long anything here may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

/// Runs `work` on a thread of its own; its result and how long it took,
/// or a failure of the test if it takes longer than [`HANG`].
fn timed<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = work();
        let _ = done_tx.send((result, started.elapsed()));
    });
    done_rx
        .recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what} still blocks after {HANG:?}"))
}

fn pinned(version: ProtocolVersion) -> StreamOptions {
    StreamOptions::new().protocol_version(Some(version))
}

/// Connects through a relay that stalls once the connector is logged in:
/// when `warm`, after a first stream connected through it (so a version-2
/// connector has streams prepared ahead, a version-3 one its shared
/// transport), else before anything else.
fn stalled_connect_times_out(version: ProtocolVersion, warm: bool) {
    let queue = common::queue("stalled-connect");
    let listener = Listener::bind(&common::url(), &queue).unwrap();
    let relay = Relay::to_broker();
    let connector = Connector::open_with(&relay.url_without_heartbeats(), pinned(version)).unwrap();
    let _first = warm.then(|| {
        let stream = connector.connect(&queue).unwrap();
        assert_eq!(stream.protocol_version(), version);
        listener.accept().unwrap()
    });

    relay.stall();
    // The connector comes back, to be dropped after the timing.
    let ((result, connector), took) = timed("a connect on a stalled link", move || {
        let result = connector.connect_timeout(&queue, CONNECT_TIMEOUT).map(drop);
        (result, connector)
    });
    let err = result.expect_err("connected over a stalled link");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        took < CONNECT_BOUND,
        "version {version}, warm {warm}: a {CONNECT_TIMEOUT:?} connect took {took:?}"
    );
    assert!(
        took >= CONNECT_TIMEOUT - Duration::from_millis(100),
        "{took:?}"
    );
    println!("version {version}, warm {warm}: TimedOut after {took:?}");
    drop(relay);
    drop(connector);
}

/// Whether a thread of this process named `name` runs now (Linux keeps
/// a thread's first 15 bytes of name).
fn thread_named(name: &str) -> bool {
    let kept = &name[..name.len().min(15)];
    std::fs::read_dir("/proc/self/task").unwrap().any(|task| {
        let comm = task.unwrap().path().join("comm");
        std::fs::read_to_string(comm).is_ok_and(|comm| comm.trim_end() == kept)
    })
}

#[test]
fn a_second_version_3_connect_waiting_for_a_stalled_setup_times_out() {
    // The first connect on a cold connector sets up its shared transport
    // (broker round trips that the stall holds); a second one meanwhile
    // must wait for that within its own timeout, not for ever.
    let queue = common::queue("stalled-setup");
    let _listener = Listener::bind(&common::url(), &queue).unwrap();
    let relay = Relay::to_broker();
    let connector =
        Connector::open_with(&relay.url_without_heartbeats(), pinned(ProtocolVersion::V3)).unwrap();
    relay.stall();
    let (first, second) = (connector.clone(), connector.clone());
    let (first_queue, second_queue) = (queue.clone(), queue.clone());
    let first = std::thread::spawn(move || {
        let result = first
            .connect_timeout(&first_queue, CONNECT_TIMEOUT)
            .map(drop);
        (result, first)
    });
    // The setup is under way (on its helper thread) before the second
    // connect asks for the transport.
    let began = Instant::now();
    while !thread_named("amqp-stream-setup") {
        assert!(began.elapsed() < HANG, "the first connect set nothing up");
        std::thread::yield_now();
    }
    let ((result, second), took) = timed("a second connect on a stalled link", move || {
        let result = second
            .connect_timeout(&second_queue, CONNECT_TIMEOUT)
            .map(drop);
        (result, second)
    });
    let err = result.expect_err("connected over a stalled link");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        took < CONNECT_BOUND,
        "a {CONNECT_TIMEOUT:?} connect took {took:?}"
    );
    println!("the second connect: TimedOut after {took:?}");
    let (result, first) = first.join().unwrap();
    assert_eq!(result.unwrap_err().kind(), ErrorKind::TimedOut);
    drop(relay);
    drop((first, second, connector));
}

#[test]
fn a_version_2_connect_on_a_stalled_link_times_out() {
    stalled_connect_times_out(ProtocolVersion::V2, false);
}

#[test]
fn a_version_2_connect_on_a_stalled_link_with_prepared_streams_times_out() {
    stalled_connect_times_out(ProtocolVersion::V2, true);
}

#[test]
fn a_version_3_connect_on_a_stalled_link_times_out() {
    stalled_connect_times_out(ProtocolVersion::V3, false);
}

#[test]
fn a_version_3_connect_on_a_stalled_link_with_its_transport_up_times_out() {
    stalled_connect_times_out(ProtocolVersion::V3, true);
    record(
        "connect on a stalled broker link",
        "versions 2 and 3, with and without a stream before",
        "relay stops forwarding, sockets open, heartbeats off",
        "TimedOut within the 3 s connect timeout",
        0,
    );
}

/// The start of AMQP's `connection.open-ok` (class 10, method 41): the
/// last thing the broker says to log a client in.
const OPEN_OK: [u8; 4] = [0, 10, 0, 41];

/// A stream's own connection (`Stream::connect_timeout`, or
/// `connect_with` and a handshake timeout) over a link that stalls for
/// the client as soon as it is logged in (the relay forwards nothing more
/// from the broker): `TimedOut` within the timeout, and the connection,
/// on which broker calls were left waiting, is closed soon after.
fn own_connection_stalls_after_login(version: ProtocolVersion) {
    let queue = common::queue("stalled-own");
    let _listener = Listener::bind(&common::url(), &queue).unwrap();
    let relay = Relay::to_broker();
    relay.deaf_after(&OPEN_OK);
    let url = relay.url_without_heartbeats();
    let (result, took) = timed("a connect on a link stalled after login", move || {
        match version {
            ProtocolVersion::V3 => {
                let options = pinned(version).handshake_timeout(Some(CONNECT_TIMEOUT));
                Stream::connect_with(&url, &queue, options)
            }
            _ => Stream::connect_timeout(&url, &queue, CONNECT_TIMEOUT),
        }
        .map(drop)
    });
    assert!(relay.is_deaf(), "the login did not go through the relay");
    let err = result.expect_err("connected over a stalled link");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(took < CONNECT_BOUND, "version {version}: took {took:?}");
    println!("version {version}, own connection: TimedOut after {took:?}");
    let ports = relay.client_ports();
    assert_eq!(ports.len(), 1);
    common::eventually(CONNECT_BOUND, "the stream's own connection closes", || {
        match common::holds_tcp_socket_between(ports[0], relay.addr().port()) {
            true => Err(format!("a socket from port {} is still open", ports[0])),
            false => Ok(()),
        }
    });
}

#[test]
fn a_connect_over_its_own_connection_on_a_stalled_link_times_out() {
    own_connection_stalls_after_login(ProtocolVersion::V2);
    own_connection_stalls_after_login(ProtocolVersion::V3);
}

/// Closing a connector, or dropping its last handle, on a stalled link
/// waits for the broker as long as opening may (here the URL's
/// `connection_timeout`, 2 s), then shuts the socket: `close` fails with
/// `TimedOut`, and neither hangs.
#[test]
fn closing_a_connection_on_a_stalled_link_gives_up_after_its_timeout() {
    const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
    let relay = Relay::to_broker();
    let url = format!(
        "{}&connection_timeout={}",
        relay.url_without_heartbeats(),
        OPEN_TIMEOUT.as_millis()
    );
    let closed = Connector::open(&url).unwrap();
    let dropped = Connector::open(&url).unwrap();
    let ports = relay.client_ports();
    assert_eq!(ports.len(), 2);

    relay.stall();
    // Both in one thread, which the relay's end frees if they hang.
    let ((result, close_took, drop_took), _) =
        timed("closing connectors on a stalled link", move || {
            let started = Instant::now();
            let result = closed.close();
            let close_took = started.elapsed();
            let started = Instant::now();
            drop(dropped);
            (result, close_took, started.elapsed())
        });
    let err = result.expect_err("closed without the broker's answer");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        close_took < OPEN_TIMEOUT + CLOSE_SLACK,
        "close took {close_took:?}"
    );
    assert!(
        drop_took < OPEN_TIMEOUT + CLOSE_SLACK,
        "drop took {drop_took:?}"
    );
    for port in ports {
        assert!(
            !common::holds_tcp_socket_between(port, relay.addr().port()),
            "the socket from port {port} outlives the close"
        );
    }
}

/// A connection lost while the client waits for the listener's answer
/// (the listener here is a queue that takes the request and never
/// answers): `ConnectionAborted`, never `ConnectionRefused`, which would
/// say that nothing listens. The link stalls first, so that the client's
/// check that the listener's queue still exists is under way (stuck) when
/// the connection goes: it then found both its feeds ended at once.
fn lost_during_connect(version: ProtocolVersion) {
    let queue = common::queue("lost-connect");
    let mut watcher = amiquip::Connection::insecure_open(&common::url()).unwrap();
    let channel = watcher.open_channel(None).unwrap();
    channel
        .queue_declare(&queue, common::raw::exclusive_auto_delete())
        .unwrap();
    let consumer = channel
        .basic_consume(&queue, amiquip::ConsumerOptions::default())
        .unwrap();

    let relay = Relay::to_broker();
    let options = pinned(version).keepalive_interval(Duration::from_millis(50));
    let connector = Connector::open_with(&relay.url_without_heartbeats(), options).unwrap();
    let connecting = std::thread::spawn(move || {
        let started = Instant::now();
        let result = connector.connect_timeout(&queue, HANG).map(drop);
        (result, started.elapsed())
    });
    // The request reached the "listener": the client waits for its answer.
    let _request = common::raw::next(consumer.receiver());
    relay.stall();
    // The client asks the broker whether the listener's queue is there.
    common::eventually(HANG, "the queue check", || {
        (relay.discarded() > 0)
            .then_some(())
            .ok_or_else(|| "nothing sent".to_string())
    });
    relay.cut();
    let (result, took) = connecting.join().unwrap();
    let err = result.expect_err("connected without an answer");
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionAborted,
        "version {version}: {err}"
    );
    assert!(took < CONNECT_BOUND, "{took:?}");
    let _ = watcher.close();
}

#[test]
fn a_connection_lost_during_connect_is_aborted_not_refused() {
    // Which of its ends the client saw go first was a matter of chance
    // (half the time it took the loss for a refusal): so try several
    // times.
    for version in [ProtocolVersion::V2, ProtocolVersion::V3] {
        for _ in 0..6 {
            lost_during_connect(version);
        }
    }
    record(
        "broker connection lost during connect",
        "versions 2 and 3, 6 connects each",
        "relay cuts the client's connection while it waits for the answer",
        "ConnectionAborted, never ConnectionRefused",
        0,
    );
}

/// Drops a stream (over a connection of its own) once its link stalls:
/// with its FIN unconfirmed, or `finished` both ways first (its worker
/// is then done, and the dropping thread is left to close the
/// connection).
fn drop_on_a_stalled_link(version: ProtocolVersion, finished: bool) -> Duration {
    let queue = common::queue("stalled-drop");
    let listener = Listener::bind(&common::url(), &queue).unwrap();
    let relay = Relay::to_broker();
    let options = pinned(version).linger(LINGER);
    let mut stream =
        Stream::connect_with(&relay.url_without_heartbeats(), &queue, options).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    stream.write_all(b"ping").unwrap();
    stream.flush().unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    if finished {
        stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(accepted.read(&mut buf).unwrap(), 0);
        accepted.shutdown(Shutdown::Write).unwrap();
        assert_eq!(stream.read(&mut buf).unwrap(), 0);
    }

    let ports = relay.client_ports();
    assert_eq!(ports.len(), 1);

    relay.stall();
    let ((), took) = timed("dropping a stream on a stalled link", move || drop(stream));
    assert!(
        took < DROP_BOUND,
        "version {version}, finished {finished}: dropping a stream with a {LINGER:?} linger \
         took {took:?}"
    );
    // Its connection is closed, not left to threads stuck on it.
    assert!(
        !common::holds_tcp_socket_between(ports[0], relay.addr().port()),
        "version {version}, finished {finished}: the stream's connection outlives it"
    );
    took
}

#[test]
fn dropping_a_stream_on_a_stalled_link_returns_within_its_linger() {
    let mut longest = Duration::ZERO;
    for version in [ProtocolVersion::V2, ProtocolVersion::V3] {
        for finished in [false, true] {
            let took = drop_on_a_stalled_link(version, finished);
            println!("version {version}, finished {finished}: drop took {took:?}");
            longest = longest.max(took);
        }
    }
    println!("longest drop: {longest:?}");
    record(
        "stream dropped on a stalled broker link",
        "versions 2 and 3, with its FIN unconfirmed and finished, linger 1 s",
        "relay stops forwarding, sockets open, heartbeats off",
        "drop returns within its linger and the close's short wait",
        0,
    );
}

/// A version-3 connect whose connection has had a version-3 answer from
/// its listener doubts an answer that names no stream (anyone can
/// publish one to the connection's queue) and asks the broker whether
/// that listener's connection queue is still there. On a link that
/// stalls right after such an answer came (the relay forwards nothing
/// more to the client; heartbeats off), that question never gets its
/// answer: the connect must still give up at its timeout. It used to ask
/// in the connect's own thread and wait for ever.
#[test]
fn a_doubted_answer_on_a_stalled_link_does_not_outlast_the_connect_timeout() {
    use amiquip::AmqpProperties;
    let queue = common::queue("stalled-doubt");
    // The listener's answers wait in its relay once it is choked.
    let listener_relay = Relay::to_broker();
    let listener = Listener::bind_with(
        &listener_relay.url_without_heartbeats(),
        &queue,
        StreamOptions::new(),
    )
    .unwrap();
    let relay = Relay::to_broker();
    let options = StreamOptions::new().handshake_timeout(Some(CONNECT_TIMEOUT));
    let connector = Connector::open_with(&relay.url_without_heartbeats(), options).unwrap();
    // Learns that the listener takes version 3, from its connection.
    for _ in 0..2 {
        let _ = connector.connect(&queue).unwrap();
        let _ = listener.accept().unwrap();
    }
    let conn_queue = common::queues_owned_by(&relay.broker_side_ports())
        .into_iter()
        .find(|name| name.starts_with("amqp-stream.conn."))
        .expect("the connection's queue");
    listener_relay.choke();
    let marker = common::queue("stalled-doubt-marker");
    relay.deaf_after(marker.as_bytes());
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    {
        let queue = queue.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = connector.connect(&queue).map(drop);
            let _ = done_tx.send((result, started.elapsed()));
            std::mem::forget(connector);
        });
    }
    // A version-1 answer naming the marker, once the connect has waited a
    // little: the client hears it, then nothing more.
    std::thread::sleep(Duration::from_millis(300));
    let mut raw = common::raw_connection();
    let channel = raw.open_channel(None).unwrap();
    let properties = AmqpProperties::default().with_reply_to(marker);
    common::raw::publish_with(&channel, &conn_queue, b"", properties);
    let (result, took) = done_rx
        .recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("the connect still blocks after {HANG:?}"));
    let _ = raw.close();
    assert!(
        relay.is_deaf(),
        "the doubted answer never reached the client"
    );
    let err = result.expect_err("connected although the listener's answer was held back");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        took < CONNECT_BOUND,
        "a {CONNECT_TIMEOUT:?} connect took {took:?}"
    );
    std::mem::forget(listener);
}
