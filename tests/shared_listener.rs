//! Shared listeners: several listeners, in one process or several, serve
//! one queue; the broker spreads clients over them, and a request held by
//! a listener that dies or is dropped goes to another one. None is lost.

mod common;

use amqp_stream::{Listener, ProtocolVersion, Stream, StreamOptions};
use common::relay::Relay;
use common::summary::record;
use common::{eventually, queue, queue_state, url};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const ROLE: &str = "AMQP_STREAM_TEST_SHARED_LISTENER_QUEUE";

/// Set for a child listener on a replicated (quorum) queue.
const REPLICATED: &str = "AMQP_STREAM_TEST_SHARED_LISTENER_REPLICATED";

/// How many streams the child listener serves before it stops calling
/// `accept` (and so holds the next request without answering it).
const CHILD_SERVES: usize = 2;

fn shared() -> StreamOptions {
    StreamOptions::new().shared(true)
}

/// Clients wait in the queue while the test arranges the listeners.
fn patient() -> StreamOptions {
    StreamOptions::new().handshake_timeout(Some(Duration::from_secs(60)))
}

/// Echoes everything until the peer's FIN, then closes.
fn echo(stream: Stream) -> io::Result<u64> {
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let n = io::copy(&mut reader, &mut writer)?;
    writer.shutdown(Shutdown::Write)?;
    Ok(n)
}

/// A client that sends `tag` through a listener on `q` and checks that
/// the same bytes come back.
fn client(q: String, tag: String) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut stream = Stream::connect_with(&url(), &q, patient())?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.write_all(tag.as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        let mut back = String::new();
        stream.read_to_string(&mut back)?;
        assert_eq!(back, tag, "the echo of {tag}");
        Ok(())
    })
}

/// Waits until the broker shows `q` as (ready, unacknowledged, consumers).
fn wait_for_queue(q: &str, expected: (u64, u64, u64), what: &str) {
    eventually(Duration::from_secs(30), what, || match queue_state(q) {
        Some(state) if state == expected => Ok(()),
        other => Err(format!("queue {q:?} is {other:?}, expected {expected:?}")),
    });
}

/// Run in a child process: a shared listener that serves a few streams,
/// then stops accepting (holding one request) until it is killed.
#[test]
#[ignore = "runs only as the child process of the shared-listener tests"]
fn child_listener() {
    let Ok(q) = std::env::var(ROLE) else { return };
    let replicated = std::env::var_os(REPLICATED).is_some();
    let listener = Listener::bind_with(&url(), &q, shared().replicated(replicated)).unwrap();
    println!("child: bound");
    for _ in 0..CHILD_SERVES {
        let (stream, _) = listener.accept().unwrap();
        echo(stream).unwrap();
    }
    println!("child: served");
    thread::sleep(Duration::from_secs(600));
}

/// Starts the child listener and returns once it has bound its queue,
/// with the lines it prints still to come.
fn spawn_child_listener(q: &str, replicated: bool) -> (ChildListener, mpsc::Receiver<String>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if replicated {
        command.env(REPLICATED, "1");
    }
    let mut child = command
        .args([
            "--exact",
            "child_listener",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, q)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let child = ChildListener(child);
    wait_for_line(&lines, "child: bound");
    (child, lines)
}

/// The child listener's process, killed when the test ends either way.
struct ChildListener(Child);

impl ChildListener {
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ChildListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to a minute) for the child to print `wanted`; the test
/// harness may print on the same line, so it need not be alone there.
fn wait_for_line(lines: &mpsc::Receiver<String>, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(wanted) => return,
            Ok(_) => {}
            Err(err) => panic!("the child listener did not say {wanted:?}: {err}"),
        }
    }
}

#[test]
fn requests_held_by_a_killed_listener_go_to_the_other_one() {
    killed_listener_leaves_its_requests_to_the_other(false);
}

#[test]
fn requests_held_by_a_killed_listener_of_a_replicated_queue_go_to_the_other_one() {
    killed_listener_leaves_its_requests_to_the_other(true);
}

fn killed_listener_leaves_its_requests_to_the_other(replicated: bool) {
    const CLIENTS: usize = 12;
    let q = queue("shared-kill");
    let (mut child, child_says) = spawn_child_listener(&q, replicated);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| client(q.clone(), format!("client {i} of {CLIENTS}")))
        .collect();
    // The child served two, holds a third, and the rest wait in the queue.
    wait_for_line(&child_says, "child: served");
    let ready = (CLIENTS - CHILD_SERVES - 1) as u64;
    wait_for_queue(&q, (ready, 1, 1), "the child holds one request");
    // A second listener, not accepting yet, holds one request too.
    let listener = Listener::bind_with(&url(), &q, shared().replicated(replicated)).unwrap();
    wait_for_queue(&q, (ready - 1, 2, 2), "both listeners hold one");

    child.kill();
    wait_for_queue(
        &q,
        (ready, 1, 1),
        "the killed listener's request is back in the queue",
    );
    let started = Instant::now();
    let servers: Vec<_> = (0..CLIENTS - CHILD_SERVES)
        .map(|_| {
            let (stream, _) = listener.accept().unwrap();
            thread::spawn(move || echo(stream))
        })
        .collect();
    let mut bytes = 0;
    for server in servers {
        bytes += server.join().unwrap().unwrap();
    }
    for (i, c) in clients.into_iter().enumerate() {
        c.join()
            .unwrap()
            .unwrap_or_else(|err| panic!("client {i}: {err}"));
    }
    let accepted_in = started.elapsed();
    drop(listener);
    eventually(
        Duration::from_secs(10),
        "the queue goes with its last listener",
        || match queue_state(&q) {
            None => Ok(()),
            Some(state) => Err(format!("{q:?} is still there: {state:?}")),
        },
    );
    record(
        if replicated {
            "shared listener killed (replicated queue)"
        } else {
            "shared listener killed"
        },
        &format!("{CLIENTS} clients, 2 processes"),
        "SIGKILL with 1 request held",
        &format!(
            "the other accepted all {} left in {} ms",
            CLIENTS - CHILD_SERVES,
            accepted_in.as_millis()
        ),
        bytes,
    );
}

/// Accepts and echoes streams until a client sends "stop"; returns how
/// many other streams it served.
fn serve_until_stop(listener: Listener) -> JoinHandle<usize> {
    thread::spawn(move || {
        let mut served = 0;
        loop {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = stream.try_clone().unwrap();
            let mut first = [0u8; 4];
            reader.read_exact(&mut first).unwrap();
            if &first == b"stop" {
                return served;
            }
            served += 1;
            thread::spawn(move || {
                let mut writer = stream;
                writer.write_all(&first)?;
                echo(writer)
            });
        }
    })
}

#[test]
fn shared_listeners_spread_clients_and_do_not_mix_with_exclusive_ones() {
    const CLIENTS: usize = 20;
    let q = queue("shared-spread");
    let one = Listener::bind_with(&url(), &q, shared()).unwrap();
    let two = Listener::bind_with(&url(), &q, shared()).unwrap();
    let exclusive = Listener::bind(&url(), &q).unwrap_err();
    assert_eq!(exclusive.kind(), io::ErrorKind::AddrInUse, "{exclusive}");

    let servers = [serve_until_stop(one), serve_until_stop(two)];
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| client(q.clone(), format!("spread {i:02}")))
        .collect();
    for c in clients {
        c.join().unwrap().unwrap();
    }
    // One "stop" per listener: each goes to one still accepting (or is
    // given back to it by one that stopped).
    for _ in &servers {
        let mut stop = Stream::connect_with(&url(), &q, patient()).unwrap();
        stop.write_all(b"stop").unwrap();
        stop.flush().unwrap();
        let mut rest = Vec::new();
        let _ = stop.read_to_end(&mut rest);
    }
    let served = servers.map(|s| s.join().unwrap());
    assert_eq!(served.iter().sum::<usize>(), CLIENTS);
    assert!(
        served.iter().all(|&n| n > 0),
        "both listeners take clients: {served:?}"
    );

    let other = queue("exclusive-first");
    let _alone = Listener::bind(&url(), &other).unwrap();
    let err = Listener::bind_with(&url(), &other, shared()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    record(
        "shared listeners",
        &format!("{CLIENTS} clients, 2 listeners"),
        "none",
        &format!("spread {} / {}", served[0], served[1]),
        (CLIENTS * "spread 00".len()) as u64,
    );
}

#[test]
fn a_dropped_shared_listener_gives_its_request_back_or_refuses_it_last() {
    let q = queue("shared-drop");
    let first = Listener::bind_with(&url(), &q, shared()).unwrap();
    let waiting = client(q.clone(), "given back".to_string());
    wait_for_queue(&q, (0, 1, 1), "the first listener holds the request");
    let second = Listener::bind_with(&url(), &q, shared()).unwrap();
    wait_for_queue(&q, (0, 1, 2), "the second listener is there");
    drop(first);
    let (stream, _) = second.accept().unwrap();
    assert_eq!(echo(stream).unwrap(), "given back".len() as u64);
    waiting.join().unwrap().unwrap();

    // The last listener has nobody to give a request to: it refuses it.
    let (tx, rx) = mpsc::channel();
    let q2 = q.clone();
    thread::spawn(move || tx.send(Stream::connect_with(&url(), &q2, patient())));
    wait_for_queue(&q, (0, 1, 1), "the last listener holds the request");
    let dropped = Instant::now();
    drop(second);
    let refused = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the client hears within 10 s")
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    let refused_in = dropped.elapsed();
    assert!(
        queue_state(&q).is_none(),
        "the queue went with its last listener"
    );
    record(
        "shared listener dropped",
        "2 clients, 2 listeners",
        "drop with 1 request held",
        &format!(
            "given back to the other; the last refused in {} ms",
            refused_in.as_millis()
        ),
        "given back".len() as u64,
    );
}

/// A shared listener that dies after it answered a request, before it
/// heard the broker's confirm of the answer: the request must not go to
/// another listener, whose second answer would reach a client already
/// connected (a version-1 client read it as a clean EOF). The client
/// finds its server gone instead: an error, never `Ok(0)`.
#[test]
fn a_listener_that_dies_after_answering_leaves_no_request_to_answer_again() {
    for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let relay = Relay::to_broker();
        let q = queue("answered-once");
        let options = shared()
            .protocol_version(Some(version))
            .keepalive_interval(Duration::from_millis(200));
        let first = Arc::new(Listener::bind_with(&relay.url(), &q, options.clone()).unwrap());
        let accepting = Arc::clone(&first);
        let first_accept = thread::spawn(move || accepting.accept().map(drop));
        // Its prepared streams ready (queue declared and consumed), so
        // that it answers at once: one set up now would wait for the
        // broker's answer to its consume, which the deaf relay keeps back.
        let ports = relay.broker_side_ports();
        eventually(Duration::from_secs(30), "prepared streams", || {
            let ready = common::queues_owned_by(&ports)
                .iter()
                .filter(|q| queue_state(q).is_some_and(|(_, _, consumers)| consumers == 1))
                .count();
            (ready >= 2)
                .then_some(())
                .ok_or_else(|| format!("{ready} of 2 ready"))
        });
        // The request reaches the first listener, which answers it; then
        // it hears nothing more from the broker, confirms included.
        relay.deaf_after(q.as_bytes());
        let client = Stream::connect_with(&url(), &q, options.clone()).unwrap();
        assert!(
            relay.is_deaf(),
            "{version}: the request went through the relay"
        );
        let second = Arc::new(Listener::bind_with(&url(), &q, options.clone()).unwrap());
        let accepting = Arc::clone(&second);
        let (served_tx, served) = mpsc::channel();
        thread::spawn(move || {
            let _ = served_tx.send(accepting.accept().map(|(_, peer)| peer));
        });
        relay.cut();
        let _ = first_accept.join();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let end = (&client).read(&mut [0u8; 16]);
        assert!(
            matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{version}: the client read {end:?}"
        );
        // Nothing was left in the queue for the second listener.
        wait_for_queue(&q, (0, 0, 1), "the request not requeued");
        assert!(served.try_recv().is_err(), "{version}: served twice");
        second.close();
    }
}

#[test]
fn replicated_listeners_serve_and_the_last_one_deletes_the_queue() {
    let q = queue("replicated");
    let options = shared().replicated(true);
    let first = Listener::bind_with(&url(), &q, options.clone()).unwrap();
    let second = Listener::bind_with(&url(), &q, options).unwrap();
    let listed = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type", "durable"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let row = listed.lines().find(|line| line.starts_with(q.as_str()));
    assert_eq!(
        row.map(|row| row.split_whitespace().skip(1).collect::<Vec<_>>()),
        Some(vec!["quorum", "true"]),
        "{listed}"
    );
    for listener in [&first, &second] {
        let echoed = client(q.clone(), "through a replicated queue".to_string());
        let (stream, _) = listener.accept().unwrap();
        echo(stream).unwrap();
        echoed.join().unwrap().unwrap();
    }
    // The queue outlives a listener while another consumes it...
    drop(first);
    let echoed = client(q.clone(), "still served".to_string());
    let (stream, _) = second.accept().unwrap();
    echo(stream).unwrap();
    echoed.join().unwrap().unwrap();
    // ... and goes with the last (not after its minute of expiry).
    drop(second);
    eventually(
        Duration::from_secs(10),
        "the last listener deletes the queue",
        || match queue_state(&q) {
            None => Ok(()),
            Some(state) => Err(format!("{q:?} is still there: {state:?}")),
        },
    );
    let began = Instant::now();
    let err = Stream::connect_with(&url(), &q, patient()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
}

#[test]
fn replicated_listeners_are_shared_and_do_not_mix_with_other_kinds() {
    let q = queue("replicated-kinds");
    let err = Listener::bind_with(&url(), &q, StreamOptions::new().replicated(true)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("shared(true)"), "{err}");
    let replicated = shared().replicated(true);
    let kinds = [
        ("exclusive", StreamOptions::new()),
        ("classic shared", shared()),
    ];
    for (kind, other) in kinds {
        // The other kind holds the name: a replicated listener is refused...
        let holder = Listener::bind_with(&url(), &q, other.clone()).unwrap();
        let err = Listener::bind_with(&url(), &q, replicated.clone()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{kind}: {err}");
        drop(holder);
        eventually(Duration::from_secs(10), "the queue goes", || {
            queue_state(&q).map_or(Ok(()), |state| Err(format!("{state:?}")))
        });
        // ... and the other way round.
        let holder = Listener::bind_with(&url(), &q, replicated.clone()).unwrap();
        let err = Listener::bind_with(&url(), &q, other).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{kind}: {err}");
        // The refusal cost the holder nothing: it still serves.
        let echoed = client(q.clone(), format!("after a {kind} listener was refused"));
        let (stream, _) = holder.accept().unwrap();
        echo(stream).unwrap();
        echoed.join().unwrap().unwrap();
        drop(holder);
        eventually(Duration::from_secs(10), "the queue goes", || {
            queue_state(&q).map_or(Ok(()), |state| Err(format!("{state:?}")))
        });
    }
}
