//! Streams behave like TcpStreams: io::copy, try_clone, half-close, big writes.

mod common;

use amqp_stream::{Connector, Listener, Stream};
use common::{first_difference, queue, random_bytes, url};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

/// An echo server on `listener` for one stream.
fn echo_one(listener: Listener) -> thread::JoinHandle<io::Result<u64>> {
    thread::spawn(move || {
        let (stream, _) = listener.accept()?;
        let mut reader = stream.try_clone()?;
        let mut writer = stream;
        let n = io::copy(&mut reader, &mut writer)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(n)
    })
}

#[test]
fn io_copy_between_tcp_and_stream_carries_64_mib_and_eof() {
    const LEN: usize = 64 << 20;
    let q = queue("copy");
    let server = echo_one(Listener::bind(&url(), &q).unwrap());

    // A TCP socket pair whose far end is bridged onto an amqp stream.
    let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp_listener.local_addr().unwrap();
    let bridge_url = url();
    let bridge = thread::spawn(move || -> io::Result<()> {
        let (tcp, _) = tcp_listener.accept()?;
        let stream = Stream::connect(&bridge_url, &q)?;
        let (mut tcp_in, mut stream_out) = (tcp.try_clone()?, stream.try_clone()?);
        let up = thread::spawn(move || -> io::Result<u64> {
            let n = io::copy(&mut tcp_in, &mut stream_out)?;
            stream_out.shutdown(Shutdown::Write)?;
            Ok(n)
        });
        let (mut stream_in, mut tcp_out) = (stream, tcp);
        io::copy(&mut stream_in, &mut tcp_out)?;
        tcp_out.shutdown(Shutdown::Write)?;
        up.join().unwrap()?;
        Ok(())
    });

    let data = random_bytes(LEN, 1);
    let client = TcpStream::connect(tcp_addr).unwrap();
    let mut client_writer = client.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        client_writer.write_all(&sent).unwrap();
        client_writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::with_capacity(LEN);
    (&client).read_to_end(&mut echoed).unwrap();
    writer.join().unwrap();
    bridge.join().unwrap().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), LEN as u64);
    assert_eq!(echoed.len(), LEN);
    assert_eq!(first_difference(&echoed, &data), None);
}

#[test]
fn half_close_lets_the_other_direction_go_on() {
    let q = queue("half");
    let listener = Listener::bind(&url(), &q).unwrap();
    let server = thread::spawn(move || -> io::Result<Vec<u8>> {
        let (mut stream, _) = listener.accept()?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got)?; // until the client's FIN
        assert_eq!(stream.read(&mut [0; 8])?, 0, "EOF stays EOF");
        // Our direction is still open: answer after the client shut down.
        stream.write_all(b"answer after your FIN")?;
        stream.shutdown(Shutdown::Write)?;
        Ok(got)
    });
    let mut client = Stream::connect(&url(), &q).unwrap();
    client.write_all(b"question").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let err = client.write(b"more").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    client.shutdown(Shutdown::Write).unwrap(); // twice is fine
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "answer after your FIN");
    assert_eq!(server.join().unwrap().unwrap(), b"question");
}

#[test]
fn one_write_all_of_64_mib_is_split_and_arrives_intact() {
    const LEN: usize = 64 << 20;
    let q = queue("big");
    let listener = Listener::bind(&url(), &q).unwrap();
    let server = thread::spawn(move || -> io::Result<Vec<u8>> {
        let (mut stream, _) = listener.accept()?;
        let mut got = Vec::with_capacity(LEN);
        stream.read_to_end(&mut got)?;
        Ok(got)
    });
    let data = random_bytes(LEN, 2);
    let mut client = Stream::connect(&url(), &q).unwrap();
    client.write_all(&data).unwrap();
    client.flush().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = server.join().unwrap().unwrap();
    assert_eq!(got.len(), LEN);
    assert_eq!(first_difference(&got, &data), None);
}

#[test]
fn read_and_write_work_through_shared_references_and_bufreader() {
    let q = queue("shared");
    let connector = Connector::open(&url()).unwrap();
    let server = echo_one(connector.bind(&q).unwrap());
    let stream = connector.connect(&q).unwrap();
    let lines: Vec<String> = (0..200).map(|i| format!("line {i}\n")).collect();
    let to_send = lines.concat();
    thread::scope(|s| {
        s.spawn(|| {
            let mut w = &stream;
            w.write_all(to_send.as_bytes()).unwrap();
            w.flush().unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        });
        let reader = io::BufReader::new(&stream);
        let got: Vec<String> = io::BufRead::lines(reader)
            .map(|l| l.unwrap() + "\n")
            .collect();
        assert_eq!(got, lines);
    });
    assert_eq!(server.join().unwrap().unwrap(), to_send.len() as u64);
}

#[test]
fn addresses_name_both_queues_and_no_password() {
    let q = queue("addr");
    let listener = Listener::bind(&url(), &q).unwrap();
    assert_eq!(listener.local_addr().unwrap().queue(), q);
    let (client, (server, peer)) = thread::scope(|s| {
        let accepted = s.spawn(|| listener.accept().unwrap());
        let client = Stream::connect(&url(), &q).unwrap();
        (client, accepted.join().unwrap())
    });
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
    assert_eq!(client.peer_addr().unwrap(), server.local_addr().unwrap());
    for text in [
        client.peer_addr().unwrap().to_string(),
        format!("{client:?}"),
        format!("{listener:?}"),
    ] {
        assert!(!text.contains(":guest@"), "{text}");
    }
}

#[test]
fn connect_then_accept_on_one_thread_like_tcp() {
    let q = queue("backlog");
    let listener = Listener::bind(&url(), &q).unwrap();
    // Three clients connect before anyone calls accept: the backlog holds them.
    let mut clients: Vec<Stream> = (0..3)
        .map(|_| Stream::connect(&url(), &q).unwrap())
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("client {i}").as_bytes()).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
    }
    let mut greetings = Vec::new();
    for _ in 0..3 {
        let (mut server, peer) = listener.accept().unwrap();
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert!(clients.iter().any(|c| c.local_addr().unwrap() == peer));
        greetings.push(got);
    }
    greetings.sort();
    assert_eq!(greetings, ["client 0", "client 1", "client 2"]);
}

#[test]
fn stream_listener_and_connector_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Stream>();
    assert_send_sync::<Listener>();
    assert_send_sync::<Connector>();
}

#[test]
fn streams_outlive_the_connector_that_made_them() {
    let q = queue("outlive");
    let connector = Connector::open(&url()).unwrap();
    let server = echo_one(connector.bind(&q).unwrap());
    let mut stream = connector.connect(&q).unwrap();
    drop(connector);
    stream.write_all(b"still here").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).unwrap();
    assert_eq!(got, "still here");
    server.join().unwrap().unwrap();
}

#[test]
fn shutdown_read_makes_reads_return_eof() {
    let q = queue("shutread");
    let listener = Listener::bind(&url(), &q).unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"unread data").unwrap();
        stream.flush().unwrap();
        stream
    });
    let mut client = Stream::connect(&url(), &q).unwrap();
    let _server = server.join().unwrap();
    client.shutdown(Shutdown::Read).unwrap();
    assert_eq!(client.read(&mut [0; 32]).unwrap(), 0);
    // The write half is untouched.
    client.write_all(b"still writable").unwrap();
    client.flush().unwrap();
}

#[test]
fn shutdown_read_wakes_a_read_blocked_in_another_thread() {
    let q = queue("wake");
    let listener = Listener::bind(&url(), &q).unwrap();
    let client = Stream::connect(&url(), &q).unwrap();
    let (_server, _) = listener.accept().unwrap(); // sends nothing
    // Without the wake-up the blocked read would end only by this timeout.
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let blocked = client.try_clone().unwrap();
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let reader = thread::spawn({
        let ready = ready.clone();
        move || {
            ready.wait();
            let started = std::time::Instant::now();
            ((&blocked).read(&mut [0; 8]), started.elapsed())
        }
    });
    ready.wait();
    client.shutdown(Shutdown::Read).unwrap();
    let (result, took) = reader.join().unwrap();
    assert_eq!(result.unwrap(), 0);
    assert!(
        took < std::time::Duration::from_secs(10),
        "read woke after {took:?}"
    );
}

#[test]
fn peek_shows_what_the_next_read_takes_on_every_version() {
    use amqp_stream::{ProtocolVersion, StreamOptions};
    use std::time::Duration;
    for version in [
        ProtocolVersion::V1,
        ProtocolVersion::V2,
        ProtocolVersion::V3,
    ] {
        let q = queue("peek");
        let options = StreamOptions::new().protocol_version(Some(version));
        let listener = Listener::bind_with(&url(), &q, options.clone()).unwrap();
        let mut client = Stream::connect_with(&url(), &q, options).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(server.protocol_version(), version);

        // Nothing yet: a peek waits like a read, up to the read timeout.
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0; 8];
        let err = server.peek(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{version}: {err}");
        server.set_read_timeout(None).unwrap();

        client.write_all(b"hello").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut small = [0; 3];
        assert_eq!(server.peek(&mut small).unwrap(), 3, "{version}");
        assert_eq!(&small, b"hel");
        let n = server.peek(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello", "{version}");
        // The peeked bytes are all still there for read, then the EOF,
        // which a peek sees too.
        let mut all = Vec::new();
        server.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"hello", "{version}");
        assert_eq!(server.peek(&mut buf).unwrap(), 0, "{version}");
    }
}
