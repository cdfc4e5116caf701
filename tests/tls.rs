//! `amqps://` against a RabbitMQ node of the suite's own with a TLS
//! listener and certificates made for the run: streams work over TLS,
//! with and without a client certificate; a wrong CA, a wrong host name
//! and unreadable files are clear errors, never a hang.

mod common;

use amqp_stream::{Connector, Error, Listener, ProtocolVersion, Stream};
use common::certs::Certificates;
use common::node::TestNode;
use common::summary::record;
use common::{free_port, queue, random_bytes};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::time::{Duration, Instant};

/// A test node with a TLS listener that trusts the test CA for client
/// certificates (asked for, not required).
struct TlsNode {
    node: TestNode,
    tls_port: u16,
    certs: Certificates,
}

impl TlsNode {
    fn start() -> TlsNode {
        let dir = std::env::temp_dir().join(format!("amqp-stream-certs-{}", std::process::id()));
        let certs = Certificates::generate(&dir);
        let tls_port = free_port();
        let (cert, key) = certs.server();
        let node = TestNode::start(&format!(
            "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            certs.ca().display(),
            cert.display(),
            key.display()
        ));
        common::eventually(Duration::from_secs(60), "the TLS port opens", || {
            std::net::TcpStream::connect(("127.0.0.1", tls_port))
                .map(drop)
                .map_err(|err| err.to_string())
        });
        TlsNode {
            node,
            tls_port,
            certs,
        }
    }

    /// `amqps://guest:guest@HOST:TLS_PORT/%2f?QUERY`.
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "amqps://guest:guest@{host}:{}/%2f?connection_timeout=10000&{query}",
            self.tls_port
        )
    }
}

fn ca_query(ca: &Path) -> String {
    format!("cacertfile={}", ca.display())
}

/// Sends `data` through a stream on `url` and back, twice on one
/// connector: the first stream speaks version 2, the second (the
/// connector has learned the listener takes it) version 3; checks both.
fn echo_through(url: &str, data: &[u8]) {
    let connector = Connector::open(url).expect("TLS connection");
    let q = queue("tls");
    let listener = connector.bind(&q).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = stream.try_clone().unwrap();
            let mut writer = stream;
            io::copy(&mut reader, &mut writer).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        }
    });
    for version in [ProtocolVersion::V2, ProtocolVersion::V3] {
        let mut client = connector.connect(&q).unwrap();
        assert_eq!(client.protocol_version(), version);
        let mut writer = client.try_clone().unwrap();
        let sent = data.to_vec();
        let sender = std::thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        sender.join().unwrap();
        assert!(
            back == data,
            "version {version}: {} bytes sent, {} back",
            data.len(),
            back.len()
        );
    }
    server.join().unwrap();
}

/// The crate's error inside an `io::Error`.
fn inner(err: &io::Error) -> &Error {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not an amqp_stream::Error: {err}"))
}

/// Connecting fails, fast, with `kind`; returns the message.
fn fails(url: &str, kind: io::ErrorKind) -> String {
    let started = Instant::now();
    let err = Stream::connect(url, "nobody").unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failing took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(!text.contains("guest:guest"), "{text}");
    text
}

#[test]
fn amqps_streams_and_clear_tls_errors() {
    let tls = TlsNode::start();
    let certs = &tls.certs;
    let data = random_bytes(4 * 1024 * 1024 + 17, 41);

    // Trusting the test CA: a stream both ways, and the broker sees TLS.
    echo_through(&tls.url("localhost", &ca_query(&certs.ca())), &data);
    echo_through(&tls.url("127.0.0.1", &ca_query(&certs.ca())), &data);
    let connector = Connector::open(&tls.url("localhost", &ca_query(&certs.ca()))).unwrap();
    let _listener = connector.bind(&queue("tls-seen")).unwrap();
    let connections = tls.node.ctl(&["list_connections", "ssl", "ssl_protocol"]);
    assert!(
        connections.lines().any(|line| line.starts_with("true")),
        "no TLS connection listed: {connections}"
    );
    drop((_listener, connector));
    record(
        "amqps:// with the test CA",
        "4 MiB echoed, twice",
        "none",
        "stream intact; the broker lists the connection as TLS",
        2 * 2 * data.len() as u64,
    );

    // A client certificate: the broker sees who we are.
    let (cert, key) = certs.client();
    let with_identity = format!(
        "{}&certfile={}&keyfile={}",
        ca_query(&certs.ca()),
        cert.display(),
        key.display()
    );
    let connector = Connector::open(&tls.url("localhost", &with_identity)).unwrap();
    let _listener = connector.bind(&queue("tls-client-cert")).unwrap();
    let subjects = tls.node.ctl(&["list_connections", "peer_cert_subject"]);
    assert!(
        subjects.contains("amqp-stream test client"),
        "client certificate not seen: {subjects}"
    );
    drop((_listener, connector));

    // A CA that did not sign the broker's certificate.
    let text = fails(
        &tls.url("localhost", &ca_query(&certs.other_ca())),
        io::ErrorKind::InvalidData,
    );
    assert!(text.contains("not trusted"), "{text}");
    assert!(text.contains("other-ca.pem"), "{text}");
    // No CA named: the system's CAs do not know the test CA either.
    let text = fails(&tls.url("localhost", ""), io::ErrorKind::InvalidData);
    assert!(text.contains("system's trusted CAs"), "{text}");
    // `verify_none` accepts it anyway (encrypted, unauthenticated).
    echo_through(
        &tls.url("localhost", "verify=verify_none"),
        &data[..64 * 1024],
    );
    record(
        "amqps:// with a CA that did not sign the broker",
        "connect",
        "wrong CA",
        "InvalidData \"not trusted\" at once; verify_none connects",
        64 * 1024 * 2,
    );

    // A name the broker's certificate does not carry.
    let wrong_name = format!(
        "{}&server_name_indication=broker.example",
        ca_query(&certs.ca())
    );
    let text = fails(
        &tls.url("127.0.0.1", &wrong_name),
        io::ErrorKind::InvalidData,
    );
    assert!(text.contains("not for \"broker.example\""), "{text}");

    // Files that are not there, and a file that is not a certificate.
    let missing = format!(
        "cacertfile={}",
        certs.ca().with_extension("missing").display()
    );
    let text = fails(&tls.url("localhost", &missing), io::ErrorKind::InvalidInput);
    assert!(text.contains("cannot read cacertfile"), "{text}");
    let not_pem = format!("cacertfile={}", certs.not_pem().display());
    let err = Stream::connect(&tls.url("localhost", &not_pem), "nobody").unwrap_err();
    assert!(
        matches!(inner(&err), Error::Tls { .. }),
        "{err}: not a TLS error"
    );

    // The wrong password is still refused as such over TLS.
    let wrong_password = tls
        .url("localhost", &ca_query(&certs.ca()))
        .replace("guest:guest", "guest:wrong");
    let text = fails(&wrong_password, io::ErrorKind::PermissionDenied);
    assert!(!text.contains("wrong@"), "{text}");

    // amqps:// to the plain AMQP port: an error, not a hang.
    let plain_port = format!(
        "amqps://guest:guest@localhost:{}/%2f?connection_timeout=3000&{}",
        tls.node.port(),
        ca_query(&certs.ca())
    );
    let started = Instant::now();
    let err = Listener::bind(&plain_port, "nobody").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.to_string().contains("did not answer with TLS"), "{err}");
    record(
        "amqps:// misconfigured",
        "connect",
        "wrong name, missing file, not PEM, wrong password, plain port",
        "InvalidData / InvalidInput / PermissionDenied / error, each at once",
        0,
    );
}
