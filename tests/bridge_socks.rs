//! `amqp-bridge socks` and `serve --allow` end to end, as child processes
//! against the real broker with real TCP: curl through the SOCKS5 proxy to
//! a local HTTP server, a target outside the allow-list (refused, and it
//! sees no connection), a refused port, 16 MiB through a hand-driven SOCKS5
//! client (IPv4 and IPv6 address types), an unsupported command, and the
//! mismatched pairs (socks at a fixed `--to` serve, forward at an
//! `--allow` serve).

mod common;
#[path = "bridge/harness.rs"]
mod harness;

use harness::{
    BOUND, Bridge, address_in, assert_same, echo_service_on, forward, http_service,
    round_trip_over, warnings,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::mpsc;

/// Starts `serve --allow RULE...` on a fresh queue; returns it and the
/// queue once it serves.
fn serve_allowing(url: &str, rules: &[&str]) -> (Bridge, String) {
    let queue = common::queue("socks");
    let mut args = vec!["serve", "--queue", &queue];
    for rule in rules {
        args.extend(["--allow", rule]);
    }
    let bridge = Bridge::start(url, &args);
    bridge.wait_for("serving queue");
    (bridge, queue)
}

/// Starts `socks` on a free local port for `queue`; returns it and the
/// port's address once it accepts.
fn socks(url: &str, queue: &str) -> (Bridge, SocketAddr) {
    let bridge = Bridge::start(url, &["socks", "--listen", "127.0.0.1:0", "--queue", queue]);
    let line = bridge.wait_for("SOCKS5 proxy on");
    (bridge, address_in(&line))
}

/// `curl --socks5-hostname PROXY URL`, as a user runs it.
fn curl(proxy: SocketAddr, url: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30", "--socks5-hostname"])
        .arg(proxy.to_string())
        .arg(url)
        .output()
        .expect("run curl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that curl failed with the SOCKS5 reply `code` (curl 7.88:
/// exit 97 and "Can't complete SOCKS5 connection to HOST. (CODE)").
fn assert_socks_refusal(out: &Output, code: u8) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(97), "{stderr}");
    assert!(
        stderr.contains("Can't complete SOCKS5 connection")
            && stderr.contains(&format!("({code})")),
        "expected SOCKS5 reply {code}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

/// A service that counts what each connection sent it: the count of each
/// connection arrives on the receiver when that connection ends.
fn counting_service() -> (SocketAddr, mpsc::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut total = 0;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = client.read(&mut buf) {
                    total += n;
                }
                let _ = tx.send(total);
            });
        }
    });
    (addr, rx)
}

/// Opens a SOCKS5 CONNECT by hand: the proxy's reply code, and the
/// connection.
fn socks_connect(proxy: SocketAddr, command: u8, target: SocketAddr) -> (u8, TcpStream) {
    let mut tcp = TcpStream::connect(proxy).unwrap();
    tcp.set_read_timeout(Some(BOUND)).unwrap();
    tcp.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 0], "no authentication chosen");
    let mut request = vec![5, command, 0];
    match target.ip() {
        IpAddr::V4(ip) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
    }
    request.extend_from_slice(&target.port().to_be_bytes());
    tcp.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    tcp.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0], 5);
    (reply[1], tcp)
}

#[test]
fn curl_reaches_an_allowed_service_by_the_name_the_list_names() {
    let url = common::url();
    let web = http_service();
    let rule = format!("localhost:{}", web.port());
    let (server, queue) = serve_allowing(&url, &[&rule]);
    let (proxy, port) = socks(&url, &queue);

    // The name is resolved on the serving side.
    let out = curl(port, &format!("http://localhost:{}/hello", web.port()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "you asked for GET /hello HTTP/1.1");
    server.wait_for("closed: stream amqp-stream.");
    assert_eq!(warnings(&server.log()), Vec::<&str>::new());
    assert_eq!(warnings(&proxy.log()), Vec::<&str>::new());

    // A name rule never matches an address, even the one it resolves to.
    let out = curl(port, &format!("http://127.0.0.1:{}/hello", web.port()));
    assert_socks_refusal(&out, 2);
}

#[test]
fn a_denied_target_is_answered_not_allowed_and_sees_no_connection() {
    let url = common::url();
    let allowed = http_service();
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied_addr = denied.local_addr().unwrap();
    let rule = format!("127.0.0.1:{}", allowed.port());
    let (server, queue) = serve_allowing(&url, &[&rule, "*.example.invalid:443"]);
    let (_proxy, port) = socks(&url, &queue);

    let out = curl(port, &format!("http://{denied_addr}/secret"));
    assert_socks_refusal(&out, 2);
    // Logged at warn with the stream's address and the target asked for.
    let line = server.wait_for(&format!("asked for {denied_addr}"));
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("refused: stream amqp-stream."), "{line}");
    assert!(line.contains("not allowed"), "{line}");
    // serve answers only after deciding, and connects before answering
    // Connected: a connection made would be in the backlog by now.
    denied.set_nonblocking(true).unwrap();
    let err = denied.accept().map(|_| ()).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::WouldBlock,
        "the denied target saw a connection"
    );

    // The allowed one, through the same serve, works.
    let out = curl(port, &format!("http://{allowed}/ok"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "you asked for GET /ok HTTP/1.1");
}

#[test]
fn a_refused_port_maps_to_connection_refused() {
    let url = common::url();
    let (server, queue) = serve_allowing(&url, &["127.0.0.1:*"]);
    let (_proxy, port) = socks(&url, &queue);
    let closed = common::free_port();
    let out = curl(port, &format!("http://127.0.0.1:{closed}/"));
    assert_socks_refusal(&out, 5);
    let line = server.wait_for("failed");
    assert!(line.contains(&format!("127.0.0.1:{closed}")), "{line}");
    assert!(line.contains("refused"), "{line}");
}

#[test]
fn sixteen_mib_go_through_intact_over_ipv4_and_ipv6_and_other_commands_are_not_supported() {
    let url = common::url();
    let (v4, v6) = (echo_service_on("127.0.0.1"), echo_service_on("::1"));
    let (server, queue) = serve_allowing(&url, &["127.0.0.0/8:*", "[::1]:*"]);
    let (proxy, port) = socks(&url, &queue);

    let (code, tcp) = socks_connect(port, 1, v4);
    assert_eq!(code, 0);
    let data = common::random_bytes(16 << 20, 21);
    assert_same("socks", &data, &round_trip_over(tcp, data.clone()));
    let totals = format!("{} bytes sent, {} bytes received", 16 << 20, 16 << 20);
    proxy.wait_for(&totals);
    server.wait_for(&totals);

    let (code, tcp) = socks_connect(port, 1, v6);
    assert_eq!(code, 0);
    let data = common::random_bytes(1 << 20, 22);
    assert_same("socks", &data, &round_trip_over(tcp, data.clone()));

    // BIND (2): "command not supported", and the connection closes.
    let (code, mut tcp) = socks_connect(port, 2, v4);
    assert_eq!(code, 7);
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(warnings(&server.log()), Vec::<&str>::new());
}

#[test]
fn socks_at_a_fixed_serve_fails_clearly_and_the_target_gets_no_byte() {
    let url = common::url();
    let (target, received) = counting_service();
    let queue = common::queue("socks-fixed");
    let server = Bridge::start(
        &url,
        &["serve", "--queue", &queue, "--to", &target.to_string()],
    );
    server.wait_for("serving queue");
    let (proxy, port) = socks(&url, &queue);

    let out = curl(port, &format!("http://{target}/"));
    assert_socks_refusal(&out, 1);
    let line = server.wait_for("started with a target request");
    assert!(
        line.contains(" WARN ") && line.contains("--allow"),
        "{line}"
    );
    let line = proxy.wait_for("failed");
    assert!(line.contains("--allow"), "{line}");
    // The target was connected (a fixed serve connects first) and reset,
    // without a byte of the request.
    let count = received
        .recv_timeout(BOUND)
        .expect("the target's connection ended");
    assert_eq!(count, 0, "the target received part of a target request");
}

#[test]
fn a_plain_forward_at_an_allow_serve_is_reset_and_logged() {
    let url = common::url();
    let (server, queue) = serve_allowing(&url, &["127.0.0.1:*"]);
    let (_forwarder, port) = forward(&url, &queue);

    let mut client = TcpStream::connect(port).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let err = client.read_to_end(&mut got).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty(), "bytes came back: {:?}", text(&got));
    let line = server.wait_for("did not start with a target request");
    assert!(line.contains(" WARN ") && line.contains("--to"), "{line}");
}

/// Opens a stream to `queue` straight from the library (a peer of any
/// kind), with reads bounded.
fn raw_stream(queue: &str) -> amqp_stream::Stream {
    let stream = amqp_stream::Stream::connect(&common::url(), queue).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream
}

#[test]
fn requests_of_another_version_or_malformed_are_answered_so() {
    let url = common::url();
    let (server, queue) = serve_allowing(&url, &["127.0.0.1:*"]);
    // The wire format (README): magic, version, kind, address, port; the
    // answer: magic, version, reply.
    for (request, reply, logged) in [
        (
            &b"\0AMQPBR?\x09\x01\x7f\0\0\x01\0\x50"[..],
            0x41,
            "version 9",
        ),
        (&b"\0AMQPBR?\x01\x07\x7f\0\0\x01\0\x50"[..], 0x40, "kind 7"),
    ] {
        let mut stream = raw_stream(&queue);
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, [&b"\0AMQPBR!\x01"[..], &[reply]].concat());
        let line = server.wait_for(logged);
        assert!(
            line.contains(" WARN ") && line.contains("refused"),
            "{line}"
        );
    }
}

#[test]
fn a_stream_that_sends_no_request_is_reset_once_the_time_bound_passes() {
    let url = common::url();
    let (server, queue) = serve_allowing(&url, &["127.0.0.1:*"]);
    // As a forwarded client of a protocol whose server speaks first
    // (SSH) would: it waits for the server.
    let mut stream = raw_stream(&queue);
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let err = stream.read_to_end(&mut got).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty());
    // The bound is 10 s: not much sooner (it did wait), and not never.
    assert!(started.elapsed() >= std::time::Duration::from_secs(9));
    let line = server.wait_for("no target request within");
    assert!(line.contains(" WARN ") && line.contains("--to"), "{line}");
}

#[test]
fn a_target_that_resets_reaches_the_socks_client_as_a_reset() {
    let url = common::url();
    // Reads one request, answers part of it, then resets.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut request = [0u8; 5];
        tcp.read_exact(&mut request).unwrap();
        tcp.write_all(b"partial").unwrap();
        socket2::SockRef::from(&tcp)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
    });
    let (_server, queue) = serve_allowing(&url, &[&target.to_string()]);
    let (proxy, port) = socks(&url, &queue);
    let (code, mut tcp) = socks_connect(port, 1, target);
    assert_eq!(code, 0);
    tcp.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let err = tcp.read_to_end(&mut got).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(got, b"partial", "what came before the reset arrives first");
    proxy.wait_for(" reset: ");
}

#[test]
fn socks_to_a_queue_nobody_serves_is_a_general_failure_with_a_clear_log() {
    let url = common::url();
    let nobody = common::queue("socks-nobody");
    let (proxy, port) = socks(&url, &nobody);
    let out = curl(port, "http://127.0.0.1:9/");
    assert_socks_refusal(&out, 1);
    let line = proxy.wait_for("failed");
    assert!(line.contains("no listener"), "{line}");
}
