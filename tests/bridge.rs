//! End-to-end tests of the `amqp-bridge` binary, run as child processes
//! against the real broker: `serve` in front of TCP services, `forward`,
//! `connect` and `http` in front of clients, exit codes, signals and
//! reconnection after the broker connection is cut.

mod common;
#[path = "bridge/harness.rs"]
mod harness;

use common::relay::Relay;
use harness::{
    BOUND, Bridge, address_in, assert_same, echo_service, forward, http_service, round_trip, serve,
};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

#[test]
fn forward_and_serve_carry_16_mib_and_50_clients_at_once() {
    let url = common::url();
    let (server, queue) = serve(&url, echo_service());
    let (forwarder, port) = forward(&url, &queue);

    let data = common::random_bytes(16 << 20, 1);
    assert_same("echo", &data, &round_trip(port, data.clone()));
    forwarder.wait_for(&format!(
        "{} bytes sent, {} bytes received",
        16 << 20,
        16 << 20
    ));
    server.wait_for(&format!(
        "{} bytes sent, {} bytes received",
        16 << 20,
        16 << 20
    ));

    let clients: Vec<_> = (0..50u64)
        .map(|seed| {
            std::thread::spawn(move || {
                let data = common::random_bytes(256 << 10, seed + 2);
                assert_same("echo", &data, &round_trip(port, data.clone()));
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

#[test]
fn connect_joins_stdin_and_stdout_to_a_stream() {
    let url = common::url();
    let (_server, queue) = serve(&url, echo_service());
    let mut pipe = Bridge::start(&url, &["connect", "--queue", &queue]);
    let data = common::random_bytes(1 << 20, 3);
    let mut stdin = pipe.stdin.take().unwrap();
    let sent = data.clone();
    let sender = std::thread::spawn(move || {
        stdin.write_all(&sent).unwrap();
        // Dropping stdin is EOF: the stream's FIN, so the echo ends.
    });
    let mut back = Vec::new();
    pipe.stdout.take().unwrap().read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    assert_same("echo", &data, &back);
    let status = pipe.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", pipe.log());
}

#[test]
fn http_routes_by_header_and_refuses_requests_without_it() {
    let url = common::url();
    let (_server, queue) = serve(&url, http_service());
    let front = Bridge::start(&url, &["http", "--listen", "127.0.0.1:0"]);
    let port = address_in(&front.wait_for("front door on"));

    let request = format!(
        "GET /hello HTTP/1.1\r\nHost: test\r\nX-AMQP-Server-Queue: {queue}\r\nConnection: close\r\n\r\n"
    );
    let answer = String::from_utf8(round_trip(port, request.into_bytes())).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("you asked for GET /hello HTTP/1.1"),
        "{answer}"
    );

    let request = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n".to_vec();
    let answer = String::from_utf8(round_trip(port, request)).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("X-AMQP-Server-Queue"), "{answer}");

    let nobody = common::queue("nobody");
    let request = format!("GET / HTTP/1.1\r\nX-AMQP-Server-Queue: {nobody}\r\n\r\n");
    let answer = String::from_utf8(round_trip(port, request.into_bytes())).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{answer}"
    );
    assert!(answer.contains("no listener"), "{answer}");
}

/// Runs the bridge to its end; its exit code and its standard error.
fn run_to_exit(url: &str, args: &[&str], level: &str) -> (Option<i32>, String) {
    let bridge = Bridge::start_logging(url, args, level);
    let status = bridge.wait_exit();
    // The log reader may still hold the last lines; it ends with stderr.
    let log = loop {
        let log = bridge.log();
        if log.contains("amqp-bridge: ") {
            break log;
        }
        bridge.wait_for("amqp-bridge: ");
    };
    (status.code(), log)
}

#[test]
fn failures_get_one_clear_line_and_their_exit_code() {
    let url = common::url();
    let unreachable = format!("amqp://guest:guest@127.0.0.1:{}/%2f", common::free_port());
    let (code, log) = run_to_exit(&unreachable, &["connect", "--queue", "q"], "off");
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("cannot reach the broker"), "{log}");

    // Even with every log line on, the password never shows.
    let password = "not-the-password-4f1c2";
    let wrong = url.replacen("guest:guest@", &format!("guest:{password}@"), 1);
    assert_ne!(wrong, url, "the test needs a URL with guest:guest");
    let (code, log) = run_to_exit(&wrong, &["connect", "--queue", "q"], "trace");
    assert_eq!(code, Some(4), "{log}");
    assert!(log.contains("refused access"), "{log}");
    assert!(!log.contains(password), "password in the output:\n{log}");

    let (_server, queue) = serve(&url, echo_service());
    let target = echo_service().to_string();
    let (code, log) = run_to_exit(&url, &["serve", "--queue", &queue, "--to", &target], "off");
    assert_eq!(code, Some(5), "{log}");
    assert!(log.contains("already has a listener"), "{log}");

    let (code, log) = run_to_exit(&url, &["serve", "--queue", "q", "--to", "no-port"], "off");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("bad target address"), "{log}");

    let nobody = common::queue("nobody");
    let (code, log) = run_to_exit(&url, &["connect", "--queue", &nobody], "off");
    assert_eq!(code, Some(6), "{log}");
    assert!(log.contains("no listener"), "{log}");

    let (code, log) = run_to_exit("amqp://[::1", &["connect", "--queue", "q"], "off");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("invalid broker URL"), "{log}");
}

#[test]
fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let url = common::url();
    let (server, queue) = serve(&url, echo_service());
    let (forwarder, port) = forward(&url, &queue);

    let mut open = TcpStream::connect(port).unwrap();
    open.set_read_timeout(Some(BOUND)).unwrap();
    let mut echoed = [0u8; 5];
    open.write_all(b"first").unwrap();
    open.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"first");

    forwarder.signal("TERM");
    forwarder.wait_for("no longer accepting on");
    let refused = TcpStream::connect(port).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

    // The open connection goes on until its client closes it.
    open.write_all(b"later").unwrap();
    open.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"later");
    open.shutdown(Shutdown::Write).unwrap();
    assert_eq!(open.read(&mut echoed).unwrap(), 0);
    let status = forwarder.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", forwarder.log());
    assert!(forwarder.log().contains("all connections closed"));

    server.signal("INT");
    let status = server.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", server.log());
}

#[test]
fn bridges_reconnect_after_their_broker_connection_is_cut() {
    let relay = Relay::to_broker();
    let (server, queue) = serve(&relay.url(), echo_service());
    let (forwarder, port) = forward(&relay.url(), &queue);
    let data = common::random_bytes(1 << 20, 4);
    assert_same("echo", &data, &round_trip(port, data.clone()));

    // A connection open when the broker goes away ends, with an error.
    let mut open = TcpStream::connect(port).unwrap();
    open.set_read_timeout(Some(BOUND)).unwrap();
    open.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    open.read_exact(&mut echoed).unwrap();

    relay.cut();
    // While the relay refuses, reconnecting fails and is retried.
    server.wait_for_each(&["the listener on", "cannot reconnect"]);
    forwarder.wait_for_each(&["lost the connection to the broker", "closed with an error"]);
    // A reset, as a direct TCP connection whose server went away gives.
    let mut rest = Vec::new();
    let err = open.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(rest.is_empty(), "data after the cut: {rest:?}");

    relay.restore();
    server.wait_for("serving queue");
    forwarder.wait_for("reconnected to the broker");
    let data = common::random_bytes(1 << 20, 5);
    assert_same("echo", &data, &round_trip(port, data.clone()));
}

#[test]
fn serve_closes_streams_whose_target_refuses_and_keeps_serving() {
    let url = common::url();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (server, queue) = serve(&url, closed);
    for _ in 0..2 {
        // As a TCP client of a refusing server sees: a reset, not an
        // empty reply.
        let mut stream = amqp_stream::Stream::connect(&url, &queue).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        let mut rest = Vec::new();
        let err = stream.read_to_end(&mut rest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert!(rest.is_empty());
        server.wait_for("failed");
    }
}

/// Sends `data` through a stream to `queue` (then half-closes) and reads
/// everything that comes back.
fn stream_round_trip(queue: &str, data: &[u8]) -> Vec<u8> {
    let mut stream = amqp_stream::Stream::connect(&common::url(), queue).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    back
}

/// How many connections `bridge` has logged as closed so far.
fn connections_closed(bridge: &Bridge) -> usize {
    bridge
        .log()
        .lines()
        .filter(|line| line.contains(" closed: "))
        .count()
}

#[test]
fn shared_serves_spread_streams_and_one_stops_while_the_other_serves() {
    const STREAMS: usize = 20;
    let url = common::url();
    let queue = common::queue("bridge-shared");
    let target = echo_service().to_string();
    let args = ["serve", "--shared", "--queue", &queue, "--to", &target];
    let [one, two] = [0, 1].map(|_| {
        let bridge = Bridge::start(&url, &args);
        bridge.wait_for("serving queue");
        bridge
    });
    // An exclusive `serve` cannot take the name from them.
    let exclusive = ["serve", "--queue", &queue, "--to", &target];
    let (code, log) = run_to_exit(&url, &exclusive, "off");
    assert_eq!(code, Some(5), "{log}");

    for i in 0..STREAMS {
        let data = format!("stream {i} through a shared queue").into_bytes();
        assert_same("echo", &data, &stream_round_trip(&queue, &data));
    }
    common::eventually(BOUND, "both bridges log their connections", || {
        let served = [connections_closed(&one), connections_closed(&two)];
        match served.iter().sum::<usize>() {
            STREAMS => Ok(()),
            n => Err(format!("{n} of {STREAMS} logged: {served:?}")),
        }
    });
    let served = [connections_closed(&one), connections_closed(&two)];
    assert!(
        served.iter().all(|&n| n > 0),
        "both bridges serve: {served:?}"
    );

    // One stops; the other goes on serving every new stream.
    one.signal("TERM");
    let status = one.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", one.log());
    for i in 0..STREAMS / 2 {
        let data = format!("stream {i} after one stopped").into_bytes();
        assert_same("echo", &data, &stream_round_trip(&queue, &data));
    }
    common::eventually(BOUND, "the other bridge serves them all", || {
        match connections_closed(&two) - served[1] {
            n if n == STREAMS / 2 => Ok(()),
            n => Err(format!("{n} of {} logged", STREAMS / 2)),
        }
    });
    two.signal("INT");
    let status = two.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", two.log());
}

/// What [`flooding_target`] reports.
enum Flood {
    /// Its writes stalled: nothing takes what it sends any more.
    Stalled,
    /// Its connection ended, with this error.
    Ended(io::Error),
}

/// A TCP service for one connection: it reads its client's request to
/// the end, then sends until it cannot, reporting when its writes first
/// stall (a write blocked 300 ms) and how the connection ends.
fn flooding_target() -> (std::net::SocketAddr, crossbeam_channel::Receiver<Flood>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        client.set_read_timeout(Some(BOUND)).unwrap();
        let mut request = Vec::new();
        client.read_to_end(&mut request).unwrap();
        assert_eq!(request, b"request");
        client
            .set_write_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let chunk = vec![5u8; 64 << 10];
        let mut stalled = false;
        loop {
            match client.write(&chunk) {
                Ok(_) => {}
                Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock) => {
                    if !stalled {
                        stalled = true;
                        let _ = tx.send(Flood::Stalled);
                    }
                }
                Err(err) => {
                    let _ = tx.send(Flood::Ended(err));
                    return;
                }
            }
        }
    });
    (addr, rx)
}

/// A client half-closes (its request is complete) and does not read the
/// answer; once `serve`'s writes towards it wait for credit, its
/// `forward` is killed. `serve` must notice the dead peer (its stream's
/// keepalives go on after the peer's FIN while `serve` still writes)
/// and reset the target, rather than hold its connection and two
/// threads for ever.
#[test]
fn serve_resets_the_target_when_a_half_closed_forward_dies() {
    let url = common::url();
    let (target, flood) = flooding_target();
    let (server, queue) = serve(&url, target);
    let (forwarder, port) = forward(&url, &queue);
    let mut client = TcpStream::connect(port).unwrap();
    client.write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The client reads nothing: every buffer towards it fills, then the
    // stream's window, then serve's writes wait for credit.
    match flood.recv_timeout(BOUND) {
        Ok(Flood::Stalled) => {}
        Ok(Flood::Ended(err)) => panic!("the target's connection ended early: {err}"),
        Err(_) => panic!("the target's writes never stalled"),
    }
    forwarder.signal("KILL");
    forwarder.wait_exit();
    let killed_at = std::time::Instant::now();
    // The default keepalive interval is 2 s: a few of them.
    let limit = std::time::Duration::from_secs(20);
    let err = match flood.recv_timeout(limit) {
        Ok(Flood::Ended(err)) => err,
        Ok(Flood::Stalled) => unreachable!("reported once"),
        Err(_) => panic!(
            "serve still holds the target's connection {limit:?} after the forward died; log:\n{}",
            server.log()
        ),
    };
    let noticed_after = killed_at.elapsed();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    server.wait_for(" closed: ");
    eprintln!("serve reset the target {noticed_after:?} after the half-closed forward died");
    drop(client);
}

/// The same with a target that sends nothing after the request: `serve`
/// writes nothing that could fail, and must still notice the dead peer
/// (the stream knows from its keepalives) and reset the target.
#[test]
fn serve_resets_a_silent_target_when_a_half_closed_forward_dies() {
    let url = common::url();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let (accepted_tx, accepted) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        // Only the connection holds the port now.
        drop(listener);
        let mut request = Vec::new();
        let read = client.read_to_end(&mut request).map(|_| request);
        let _ = accepted_tx.send((client, read));
    });
    let (server, queue) = serve(&url, target);
    let (forwarder, port) = forward(&url, &queue);
    let mut client = TcpStream::connect(port).unwrap();
    client.write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (mut held, request) = accepted.recv_timeout(BOUND).expect("the request ends");
    assert_eq!(request.unwrap(), b"request");
    forwarder.signal("KILL");
    forwarder.wait_exit();
    let killed_at = std::time::Instant::now();
    // The target's socket is in CLOSE_WAIT (serve's FIN came) until
    // serve resets the connection: only a reset takes it out of the
    // kernel's table while the target holds it.
    common::eventually(
        std::time::Duration::from_secs(20),
        "serve resets the silent target after the forward died",
        || match common::holds_tcp_socket_from(target.port()) {
            true => Err("the target's connection is still open".to_string()),
            false => Ok(()),
        },
    );
    let noticed_after = killed_at.elapsed();
    let err = held.write_all(b"anyone?").unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    server.wait_for(" closed: ");
    eprintln!("serve reset the silent target {noticed_after:?} after the half-closed forward died");
    drop(client);
}
