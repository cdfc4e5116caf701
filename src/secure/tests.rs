//! Secured streams over in-memory pipes: whatever the wire does to the
//! records (change, replay, reorder, drop, cut), the reader fails with
//! `InvalidData`; handshakes refuse wrong keys and never hang.

use super::*;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One end of an in-memory pipe: each write is one chunk on a channel.
#[derive(Debug)]
struct End {
    tx: Arc<Mutex<Option<Sender<Vec<u8>>>>>,
    rx: Receiver<Vec<u8>>,
    left: Arc<Mutex<Vec<u8>>>,
    read_timeout: Arc<Mutex<Option<Duration>>>,
    /// Every chunk written, for replays.
    written: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// The wire from the client to the server, as a test sees it.
struct Tap {
    rx: Receiver<Vec<u8>>,
    tx: Option<Sender<Vec<u8>>>,
}

impl Tap {
    /// The chunks the client has written and the server not read.
    fn take(&self) -> Vec<Vec<u8>> {
        self.rx.try_iter().collect()
    }
    fn send(&self, chunk: &[u8]) {
        self.tx.as_ref().unwrap().send(chunk.to_vec()).unwrap();
    }
}

fn end(tx: Sender<Vec<u8>>, rx: Receiver<Vec<u8>>) -> End {
    End {
        tx: Arc::new(Mutex::new(Some(tx))),
        rx,
        left: Arc::default(),
        read_timeout: Arc::default(),
        written: Arc::default(),
    }
}

/// (client end, server end, the client-to-server wire).
fn pipe() -> (End, End, Tap) {
    let (c2s_tx, c2s_rx) = unbounded();
    let (s2c_tx, s2c_rx) = unbounded();
    let tap = Tap {
        rx: c2s_rx.clone(),
        tx: Some(c2s_tx.clone()),
    };
    (end(c2s_tx, s2c_rx), end(s2c_tx, c2s_rx), tap)
}

impl Read for &End {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut left = self.left.lock().unwrap();
        if left.is_empty() {
            let timeout = self.read_timeout.lock().unwrap().unwrap_or(Duration::MAX);
            match self.rx.recv_timeout(timeout) {
                Ok(chunk) => *left = chunk,
                Err(RecvTimeoutError::Timeout) => return Err(ErrorKind::WouldBlock.into()),
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = buf.len().min(left.len());
        buf[..n].copy_from_slice(&left[..n]);
        left.drain(..n);
        Ok(n)
    }
}

impl Write for &End {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.lock().unwrap().push(buf.to_vec());
        match &*self.tx.lock().unwrap() {
            Some(tx) => tx
                .send(buf.to_vec())
                .map(|()| buf.len())
                .map_err(|_| ErrorKind::BrokenPipe.into()),
            None => Err(ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for End {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for End {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Channel for End {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self.read_timeout.lock().unwrap() = timeout;
        Ok(())
    }
    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn try_clone(&self) -> io::Result<Self> {
        Ok(End {
            tx: Arc::clone(&self.tx),
            rx: self.rx.clone(),
            left: Arc::clone(&self.left),
            read_timeout: Arc::clone(&self.read_timeout),
            written: Arc::clone(&self.written),
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            self.tx.lock().unwrap().take();
        }
        Ok(())
    }
}

const SHORT: Duration = Duration::from_millis(300);

fn psk_configs() -> (ClientConfig, ServerConfig) {
    let psk = PresharedKey::generate().unwrap();
    (ClientConfig::psk(psk.clone()), ServerConfig::psk(psk))
}

fn key_configs() -> (ClientConfig, ServerConfig, PublicKey) {
    let (server, client) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let client_public = client.public().clone();
    let accepted: AuthorizedKeys = [client_public.clone()].into_iter().collect();
    (
        ClientConfig::key_pair(client, server.public().clone()),
        ServerConfig::key_pair(server, accepted),
        client_public,
    )
}

/// Runs both handshakes: (client result, server result, the wire).
fn shake(
    client_config: &ClientConfig,
    server_config: ServerConfig,
) -> (
    io::Result<SecureStream<End>>,
    io::Result<SecureStream<End>>,
    Tap,
) {
    let (client_end, server_end, tap) = pipe();
    let server = std::thread::spawn(move || super::server::<End>(server_end, &server_config));
    let client = super::client(client_end, client_config);
    (client, server.join().unwrap(), tap)
}

/// A connected pair over a pre-shared key.
fn connected() -> (SecureStream<End>, SecureStream<End>, Tap) {
    let (client_config, server_config) = psk_configs();
    let (client, server, tap) = shake(&client_config, server_config);
    (client.unwrap(), server.unwrap(), tap)
}

fn kind<T: std::fmt::Debug>(result: io::Result<T>) -> ErrorKind {
    result.unwrap_err().kind()
}

fn read_some(stream: &mut SecureStream<End>) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

#[test]
fn bytes_go_both_ways_and_the_close_record_is_a_clean_end() {
    for (client_config, server_config) in [
        psk_configs(),
        {
            let (c, s, _) = key_configs();
            (c, s)
        },
        {
            let psk = PresharedKey::generate().unwrap();
            let (c, s, _) = key_configs();
            (c.with_psk(psk.clone()), s.with_psk(psk))
        },
    ] {
        let (client, server, _tap) = shake(&client_config, server_config);
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping");
        server.write_all(b"pong").unwrap();
        server.close_write().unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"pong");
        assert_eq!(kind(client.write(b"late")), ErrorKind::BrokenPipe);
    }
}

#[test]
fn the_server_knows_which_key_the_client_used() {
    let (client_config, server_config, client_public) = key_configs();
    let (_client, server, _tap) = shake(&client_config, server_config);
    assert_eq!(server.unwrap().peer_key(), Some(&client_public));
}

#[test]
fn large_writes_are_split_into_records_within_the_noise_limit() {
    let (mut client, mut server, tap) = connected();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    client.write_all(&data).unwrap();
    client.close_write().unwrap();
    let wire = tap.take().concat();
    let mut frames = 0;
    let mut at = 0;
    while at < wire.len() {
        let len = u16::from_be_bytes([wire[at], wire[at + 1]]) as usize;
        assert!(len >= 16, "a frame of {len}");
        at += 2 + len;
        frames += 1;
    }
    assert_eq!(at, wire.len());
    // 200,000 bytes need four records of at most 65,519, and the close.
    assert_eq!(frames, 5);
    tap.send(&wire);
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert!(got == data, "the data changed on the way");
}

#[test]
fn full_duplex_from_two_threads() {
    let (client, server, _tap) = connected();
    let size = 1 << 20;
    let echo = std::thread::spawn(move || {
        let (mut reader, mut writer) = (server.try_clone().unwrap(), server);
        io::copy(&mut reader, &mut writer).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut writer = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
        data
    });
    let mut reader = client;
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    let sent = sender.join().unwrap();
    echo.join().unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent);
}

#[test]
fn a_changed_record_is_invalid_data_and_stays_so() {
    let (mut client, mut server, tap) = connected();
    client.write_all(b"transfer 10 EUR").unwrap();
    let mut chunk = tap.take().pop().unwrap();
    let last = chunk.len() - 20;
    chunk[last] ^= 1;
    tap.send(&chunk);
    assert_eq!(kind(read_some(&mut server)), ErrorKind::InvalidData);
    assert_eq!(kind(read_some(&mut server)), ErrorKind::InvalidData);
}

#[test]
fn a_replayed_record_is_invalid_data() {
    let (mut client, mut server, tap) = connected();
    client.write_all(b"once").unwrap();
    let chunk = tap.take().pop().unwrap();
    tap.send(&chunk);
    tap.send(&chunk);
    assert_eq!(read_some(&mut server).unwrap(), b"once");
    let err = read_some(&mut server).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.to_string().contains("replayed"), "{err}");
}

#[test]
fn reordered_and_dropped_records_are_invalid_data() {
    let (mut client, mut server, tap) = connected();
    client.write_all(b"first").unwrap();
    client.write_all(b"second").unwrap();
    let chunks = tap.take();
    tap.send(&chunks[1]);
    tap.send(&chunks[0]);
    assert_eq!(kind(read_some(&mut server)), ErrorKind::InvalidData);

    let (mut client, mut server, tap) = connected();
    client.write_all(b"first").unwrap();
    client.write_all(b"second").unwrap();
    let chunks = tap.take();
    tap.send(&chunks[1]);
    assert_eq!(kind(read_some(&mut server)), ErrorKind::InvalidData);
}

#[test]
fn an_end_without_the_close_record_is_invalid_data_not_an_end() {
    // Between records.
    let (mut client, mut server, mut tap) = connected();
    client.write_all(b"partial").unwrap();
    let chunk = tap.take().pop().unwrap();
    tap.send(&chunk);
    drop(client);
    tap.tx.take();
    assert_eq!(read_some(&mut server).unwrap(), b"partial");
    let err = read_some(&mut server).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.to_string().contains("truncated"), "{err}");

    // In the middle of one.
    let (mut client, mut server, mut tap) = connected();
    client.write_all(b"cut in the middle").unwrap();
    let chunk = tap.take().pop().unwrap();
    tap.send(&chunk[..chunk.len() / 2]);
    drop(client);
    tap.tx.take();
    assert_eq!(kind(read_some(&mut server)), ErrorKind::InvalidData);

    // The close record itself taken out.
    let (mut client, mut server, mut tap) = connected();
    client.write_all(b"all of it?").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let chunks = tap.take();
    assert_eq!(chunks.len(), 2);
    tap.send(&chunks[0]);
    drop(client);
    tap.tx.take();
    let mut got = Vec::new();
    assert_eq!(
        server.read_to_end(&mut got).unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    assert_eq!(got, b"all of it?");
}

#[test]
fn a_wrong_psk_is_refused_on_both_ends() {
    let (client_config, _) = psk_configs();
    let (_, server_config) = psk_configs();
    let (client, server, _tap) = shake(&client_config, server_config);
    let err = server.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("pre-shared key"), "{err}");
    assert_eq!(kind(client), ErrorKind::PermissionDenied);
}

#[test]
fn a_client_key_not_authorized_is_refused() {
    let (_, server_config, _) = key_configs();
    // The client pins the right server key, but is not listed.
    let server_public = server_config.keys.as_ref().unwrap().0.public().clone();
    let stranger = KeyPair::generate().unwrap();
    let client_config =
        ClientConfig::key_pair(stranger, server_public).handshake_timeout(SHORT * 10);
    let (client, server, _tap) = shake(&client_config, server_config);
    let err = server.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("authorized keys"), "{err}");
    // The client's handshake ended before the server checked: its first
    // read finds the refusal.
    let mut client = client.unwrap();
    let err = read_some(&mut client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("refused this end's key"), "{err}");
    // A client that writes first, and finds the stream ended before it
    // reads, learns the same from its write.
    let (_, server_config, _) = key_configs();
    let server_public = server_config.keys.as_ref().unwrap().0.public().clone();
    let writer_config = ClientConfig::key_pair(KeyPair::generate().unwrap(), server_public)
        .handshake_timeout(SHORT * 10);
    let (client, server, tap) = shake(&writer_config, server_config);
    assert_eq!(kind(server), ErrorKind::PermissionDenied);
    drop(tap);
    let mut client = client.unwrap();
    let err = (0..64)
        .find_map(|_| {
            client
                .write_all(&[7; 1024])
                .and_then(|()| client.flush())
                .err()
        })
        .expect("writes to an ended stream fail");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("refused this end's key"), "{err}");
    // And one that half-closes first.
    let (_, server_config, _) = key_configs();
    let server_public = server_config.keys.as_ref().unwrap().0.public().clone();
    let closer_config = ClientConfig::key_pair(KeyPair::generate().unwrap(), server_public)
        .handshake_timeout(SHORT * 10);
    let (client, server, tap) = shake(&closer_config, server_config);
    assert_eq!(kind(server), ErrorKind::PermissionDenied);
    drop(tap);
    let err = client.unwrap().close_write().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // Nor does a client that pins another server's key get in.
    let (_, server_config, _) = key_configs();
    let (client, server, _tap) = shake(&client_config, server_config);
    assert_eq!(kind(server), ErrorKind::PermissionDenied);
    let err = client.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(
        err.to_string().contains("whose key this end pinned"),
        "{err}"
    );
}

#[test]
fn a_replayed_handshake_is_refused() {
    for (client_config, server_config) in [psk_configs(), {
        let (c, s, _) = key_configs();
        (c, s)
    }] {
        let (client, server, _tap) = shake(&client_config, server_config.clone());
        let (client, _server) = (client.unwrap(), server.unwrap());
        let recorded = client.get_ref().written.lock().unwrap().clone();
        assert_eq!(recorded.len(), 2, "hello + message 1, then the last one");
        // Everything the client sent, replayed to the same server.
        let (attacker, server_end, _) = pipe();
        let server = std::thread::spawn(move || super::server::<End>(server_end, &server_config));
        for chunk in &recorded {
            (&attacker).write_all(chunk).unwrap();
        }
        let err = server.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    }
}

#[test]
fn mismatched_kinds_of_keys_are_a_clear_failure() {
    let (psk_client, _) = psk_configs();
    let (_, key_server, _) = key_configs();
    let (client_end, server_end, mut tap) = pipe();
    tap.tx.take();
    let server = std::thread::spawn(move || super::server::<End>(server_end, &key_server));
    let client = super::client(client_end, &psk_client);
    let server = server.join().unwrap();
    let err = client.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.to_string().contains("key pairs"), "{err}");
    assert_eq!(kind(server), ErrorKind::InvalidData);
}

#[test]
fn a_plain_client_is_refused_by_a_secure_server() {
    let (client_end, server_end, _tap) = pipe();
    let (_, server_config) = psk_configs();
    let server = std::thread::spawn(move || super::server::<End>(server_end, &server_config));
    (&client_end).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let err = server.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.to_string().contains("without key options"), "{err}");
}

#[test]
fn a_secure_client_sends_nothing_to_a_plain_server() {
    // A server that speaks first (an SSH banner): refused at once.
    let (client_end, server_end, tap) = pipe();
    (&server_end).write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
    let (client_config, _) = psk_configs();
    let err = super::client(client_end, &client_config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.to_string().contains("without key options"), "{err}");
    assert!(tap.take().is_empty(), "the client sent something");

    // One that waits for its client: the handshake times out.
    let (client_end, _server_end, tap) = pipe();
    let client_config = client_config.handshake_timeout(SHORT);
    let started = std::time::Instant::now();
    let err = super::client(client_end, &client_config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() < SHORT * 10);
    assert!(tap.take().is_empty(), "the client sent something");
}

#[test]
fn a_silent_client_times_out() {
    let (_client_end, server_end, _tap) = pipe();
    let (_, server_config) = psk_configs();
    let err = server(server_end, &server_config.handshake_timeout(SHORT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
}

#[test]
fn records_split_anyhow_on_the_wire_read_back_into_buffers_of_any_size() {
    let (mut client, mut server, tap) = connected();
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 31 % 257) as u8).collect();
    let mut at = 0;
    for size in [1usize, 70_000, 13, 65_519, 65_520, 2, 100_000]
        .iter()
        .cycle()
    {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        client.write_all(&data[at..end]).unwrap();
        at = end;
    }
    client.close_write().unwrap();
    let wire: Vec<u8> = tap.take().concat();
    let mut at = 0;
    for size in [1usize, 3, 65_536, 7, 131_100, 1000, 90_000].iter().cycle() {
        if at == wire.len() {
            break;
        }
        let end = (at + size).min(wire.len());
        tap.send(&wire[at..end]);
        at = end;
    }
    let mut got = Vec::new();
    let mut sizes = [1usize, 100_000, 17, 65_519, 4096, 65_518].iter().cycle();
    loop {
        let mut buf = vec![0u8; *sizes.next().unwrap()];
        match server.read(&mut buf).unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the data changed on the way");
}

#[test]
fn once_accepted_an_end_without_the_close_record_is_no_refusal() {
    let (mut client, server, _tap) = connected();
    drop(server);
    let err = read_some(&mut client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_handshake_timeout_too_long_for_an_instant_is_no_limit_not_a_panic() {
    // `serve --handshake-timeout 1e19` panicked in every stream's thread:
    // `Instant::now() + timeout` overflowed.
    for (client_config, server_config) in [psk_configs(), {
        let (c, s, _) = key_configs();
        (c, s)
    }] {
        let (client, server, _tap) = shake(
            &client_config.handshake_timeout(Duration::MAX),
            server_config.handshake_timeout(Duration::MAX),
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.write_all(b"ping").unwrap();
        assert_eq!(read_some(&mut server).unwrap(), b"ping");
    }
}
