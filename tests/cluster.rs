//! A RabbitMQ cluster of the suite's own (three nodes, see
//! `common/cluster.rs`): streams between ends on different nodes, what a
//! killed node takes with it (measured: it decides how streams resume),
//! broker URL lists, a reconnecting listener that comes back on another
//! node, and the bridge across nodes. The tests take the one cluster of
//! this target in turn; each finds it whole.

mod common;
#[cfg(feature = "bridge")]
#[path = "bridge/harness.rs"]
mod harness;

use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use common::cluster::{TestCluster, shared};
use common::queue;
use common::summary::record;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Nodes in the cluster.
const NODES: usize = 3;

/// How long anything here may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

/// Writes `message` one way and reads it back the other, both ways.
fn check_both_ways(client: &mut Stream, server: &mut Stream, message: &[u8]) {
    client.write_all(message).unwrap();
    client.flush().unwrap();
    let mut got = vec![0; message.len()];
    server.read_exact(&mut got).unwrap();
    assert!(got == message, "the server read other bytes");
    server.write_all(message).unwrap();
    server.flush().unwrap();
    client.read_exact(&mut got).unwrap();
    assert!(got == message, "the client read other bytes");
}

/// The cluster node an end's address names.
fn node_of(cluster: &TestCluster, addr: &amqp_stream::Addr) -> usize {
    cluster
        .node_on_port(addr.broker().port())
        .unwrap_or_else(|| panic!("{addr} is on no node of the cluster"))
}

/// Connects to `queue` through `url` until it works (the listener may be
/// rebinding), for at most [`HANG`].
fn connect_when_back(url: &str, queue: &str) -> Stream {
    let began = Instant::now();
    loop {
        match Stream::connect_timeout(url, queue, Duration::from_secs(5)) {
            Ok(stream) => return stream,
            Err(err) => {
                assert!(
                    began.elapsed() < HANG,
                    "no listener on {queue:?} through {url} after {HANG:?}: {err}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads until `stream` fails, for at most [`HANG`]: it must fail (a
/// clean end is a bug) with a lost-connection kind. Answers how long
/// after `since` it did.
fn time_until_it_fails(end: &str, stream: &mut Stream, since: Instant) -> Duration {
    stream.set_read_timeout(Some(HANG)).unwrap();
    let mut buf = [0; 64];
    let err = match stream.read(&mut buf) {
        Ok(0) => panic!("the {end} ended cleanly when the other end's node was killed"),
        Ok(_) => panic!("the {end} read data nobody sent"),
        Err(err) => err,
    };
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
        "the {end} failed with {:?}: {err}",
        err.kind()
    );
    since.elapsed()
}

/// Checks `changed` until it holds, for at most [`HANG`]; says when the
/// last check that did not hold ended and when the first that did ended,
/// both measured from `since`.
fn until_changed(since: Instant, mut changed: impl FnMut() -> bool) -> String {
    let mut last_before = Duration::ZERO;
    loop {
        let now_changed = changed();
        let at = since.elapsed();
        if now_changed {
            return format!("between {last_before:.1?} and {at:.1?}");
        }
        assert!(at < HANG, "still unchanged after {HANG:?}");
        last_before = at;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn streams_cross_nodes_in_every_protocol_version() {
    let cluster = shared(NODES);
    let q = queue("cluster-cross");
    let listener = Listener::bind(&cluster.url(1), &q).unwrap();
    assert_eq!(node_of(&cluster, &listener.local_addr().unwrap()), 1);
    let listed = cluster.queue(&q).expect("the listener's queue is listed");
    assert_eq!(listed.node, cluster.node(1).name(), "{listed:?}");
    assert_eq!(listed.consumers, 1, "{listed:?}");

    let data = common::random_bytes(1 << 20, 23);
    let mut bytes = 0;
    for (version, through) in [
        (ProtocolVersion::V1, 0),
        (ProtocolVersion::V2, 2),
        (ProtocolVersion::V3, 0),
    ] {
        let options = StreamOptions::new().protocol_version(Some(version));
        let connector = Connector::open_with(&cluster.url(through), options).unwrap();
        let mut client = connector.connect(&q).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        assert_eq!(client.protocol_version(), version);
        assert_eq!(node_of(&cluster, &client.local_addr().unwrap()), through);
        assert_eq!(node_of(&cluster, &client.peer_addr().unwrap()), through);
        assert_eq!(node_of(&cluster, &server.local_addr().unwrap()), 1);
        assert_eq!(node_of(&cluster, &peer), 1);
        check_both_ways(&mut client, &mut server, &data);
        bytes += 2 * data.len() as u64;
    }

    // A list of every node: whichever the shuffle picks, it gets there.
    for _ in 0..4 {
        let mut client = Stream::connect(&cluster.urls(), &q).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        check_both_ways(&mut client, &mut server, b"through a list");
        bytes += 2 * 14;
    }
    record(
        "cluster: streams across nodes",
        "versions 1, 2 and 3, 1 MiB each way; 4 through a URL list",
        "none (client and listener on different nodes)",
        "every byte through",
        bytes,
    );
}

#[test]
fn a_killed_node_takes_its_exclusive_queues_and_streams_and_rejoins_on_restart() {
    let cluster = shared(NODES);
    let q = queue("cluster-kill");
    // The listener and the server ends of its streams are on node 2; the
    // clients on node 0, one per protocol version that has a queue of its
    // own per stream (2) or per connection (3).
    let listener = Listener::bind(&cluster.url(2), &q).unwrap();
    let v2 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V2));
    let v3 = StreamOptions::new().protocol_version(Some(ProtocolVersion::V3));
    let mut v2_client = Connector::open_with(&cluster.url(0), v2)
        .unwrap()
        .connect(&q)
        .unwrap();
    let (mut v2_server, _) = listener.accept().unwrap();
    let mut v3_client = Connector::open_with(&cluster.url(0), v3)
        .unwrap()
        .connect(&q)
        .unwrap();
    let (mut v3_server, _) = listener.accept().unwrap();
    check_both_ways(&mut v2_client, &mut v2_server, b"before");
    check_both_ways(&mut v3_client, &mut v3_server, b"before");
    let listed = cluster.queue(&q).expect("the listener's queue is listed");
    assert_eq!(listed.node, cluster.node(2).name());

    let killed = Instant::now();
    cluster.kill(2);
    let port_closed = killed.elapsed();
    // Each of these is measured from the kill, side by side.
    let v2_noticed =
        std::thread::spawn(move || time_until_it_fails("version-2 client", &mut v2_client, killed));
    let v3_noticed =
        std::thread::spawn(move || time_until_it_fails("version-3 client", &mut v3_client, killed));
    // Each watched on its own thread: a `rabbitmqctl` call takes seconds
    // on a busy machine, so those figures are when the first answer
    // without the node (or queue) came, after the last one with it.
    let (seen_down, unlisted, refused) = std::thread::scope(|scope| {
        let seen_down = scope.spawn(|| {
            until_changed(killed, || {
                cluster
                    .running_nodes_seen_by(0)
                    .is_ok_and(|nodes| !nodes.contains(cluster.node(2).name()))
            })
        });
        let unlisted = scope.spawn(|| until_changed(killed, || cluster.queue(&q).is_none()));
        // Precise: the SYN of a connect through node 0 comes back unrouted
        // once the queue is gone (a SYN routed to the dead node's queue
        // before that is lost: that connect times out).
        let refused = scope.spawn(|| {
            until_changed(killed, || {
                match Stream::connect_timeout(&cluster.url(0), &q, Duration::from_secs(2)) {
                    Err(err) => err.kind() == ErrorKind::ConnectionRefused,
                    Ok(_) => panic!("connected to a listener whose node was killed"),
                }
            })
        });
        let join = |watch: std::thread::ScopedJoinHandle<'_, _>| watch.join().unwrap();
        (join(seen_down), join(unlisted), join(refused))
    });
    let v2_noticed = v2_noticed.join().unwrap();
    let v3_noticed = v3_noticed.join().unwrap();
    // The exclusive queue is gone for good: free to declare elsewhere.
    let elsewhere = Listener::bind(&cluster.url(1), &q).unwrap();
    drop(elsewhere);

    let rejoined = cluster.restart(2);
    assert!(
        cluster.queue(&q).is_none(),
        "the restarted node brought the queue back"
    );
    drop(listener);
    let figures = format!(
        "port closed {port_closed:.1?}, node 0 sees it down {seen_down}, \
         queue unlisted {unlisted}, connect refused {refused}, \
         clients on node 0 fail: version 2 {v2_noticed:.1?}, version 3 {v3_noticed:.1?}; \
         restart to rejoined and serving {rejoined:.1?}"
    );
    eprintln!("after SIGKILL of the listener's node: {figures}");
    record(
        "cluster: node killed under a listener",
        "listener on node 2; version-2 and version-3 clients on node 0",
        "SIGKILL of node 2, then its restart",
        &figures,
        4 * 6,
    );
}

#[test]
fn a_reconnecting_listener_comes_back_on_another_node() {
    let cluster = shared(NODES);
    let q = queue("cluster-failover");
    let options = StreamOptions::new().reconnect(true);
    let listener = Listener::bind_with(&cluster.urls(), &q, options.clone()).unwrap();
    let mut figures = Vec::new();
    for round in 0..2 {
        let on = node_of(&cluster, &listener.local_addr().unwrap());
        let other = (on + 1) % NODES;
        let mut client = connect_when_back(&cluster.url(other), &q);
        let (mut server, _) = listener.accept().unwrap();
        check_both_ways(&mut client, &mut server, b"before the kill");

        let killed = Instant::now();
        cluster.kill(on);
        // Through a node that stays, until the listener has bound again.
        let mut client = connect_when_back(&cluster.url(other), &q);
        let back_after = killed.elapsed();
        let (mut server, _) = listener.accept().unwrap();
        check_both_ways(&mut client, &mut server, b"after the kill");
        let now_on = node_of(&cluster, &listener.local_addr().unwrap());
        assert_ne!(now_on, on, "the listener says it is on the killed node");
        assert_eq!(
            cluster.queue(&q).map(|listed| listed.node),
            Some(cluster.node(now_on).name().to_string())
        );
        // A list with the dead node in it gets there too.
        let mut client = Stream::connect(&cluster.urls(), &q).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        check_both_ways(&mut client, &mut server, b"through the list");
        eprintln!(
            "round {round}: listener back on node {now_on} {back_after:.1?} after node {on} was killed"
        );
        figures.push(format!("{back_after:.1?}"));
        let rejoined = cluster.restart(on);
        eprintln!("round {round}: node {on} rejoined and serving {rejoined:.1?} after its restart");
    }
    record(
        "cluster: listener failover",
        "reconnecting listener bound with the list of 3 nodes",
        "SIGKILL of the listener's node, twice",
        &format!(
            "accepting through another node after {}",
            figures.join(" and ")
        ),
        2 * 2 * (15 + 14 + 16),
    );
}

#[cfg(feature = "bridge")]
#[test]
fn the_bridge_serves_and_forwards_across_nodes_from_url_lists() {
    use harness::{Bridge, address_in, assert_same, echo_service, round_trip};
    use std::net::{Shutdown, TcpStream};

    /// `data` through the forwarder at `port` and back, or how it failed.
    fn echo(port: std::net::SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut tcp = TcpStream::connect(port)?;
        tcp.set_read_timeout(Some(HANG))?;
        tcp.write_all(data)?;
        tcp.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        tcp.read_to_end(&mut back)?;
        Ok(back)
    }

    let cluster = shared(NODES);
    let q = queue("cluster-bridge");
    // `serve` takes every node (through AMQP_URL) and says which it got.
    let server = Bridge::start(
        &cluster.urls(),
        &["serve", "--queue", &q, "--to", &echo_service().to_string()],
    );
    let line = server.wait_for("serving queue");
    let serving_on = cluster
        .all()
        .into_iter()
        .find(|&i| line.contains(&format!(":{}/", cluster.node(i).port())))
        .unwrap_or_else(|| panic!("no node of the cluster in {line:?}"));
    // `forward` the two others (through --url).
    let others: Vec<usize> = cluster
        .all()
        .into_iter()
        .filter(|&i| i != serving_on)
        .collect();
    let url_flag = format!("--url={}", cluster.urls_of(&others));
    let forwarder = Bridge::start(
        &cluster.url(serving_on),
        &[
            &url_flag,
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            &q,
        ],
    );
    let port = address_in(&forwarder.wait_for("forwarding"));
    let data = common::random_bytes(1 << 20, 29);
    assert_same("echo across nodes", &data, &round_trip(port, data.clone()));

    // `serve` loses its node and binds again through another.
    cluster.kill(serving_on);
    let line = server.wait_for("serving queue");
    assert!(
        !line.contains(&format!(":{}/", cluster.node(serving_on).port())),
        "serve says it is back on the killed node: {line}"
    );
    let began = Instant::now();
    loop {
        match echo(port, b"after the kill") {
            Ok(echoed) if echoed == b"after the kill" => break,
            other => assert!(
                began.elapsed() < HANG,
                "no echo after {HANG:?} ({other:?}); serve:\n{}",
                server.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    record(
        "cluster: bridge across nodes",
        "serve and forward on different nodes from URL lists, 1 MiB echo",
        "SIGKILL of serve's node",
        "echo intact; serve bound again through another node",
        2 * (1 << 20),
    );
}

/// How many clients wait in a shared listener's queue when its node dies.
const WAITING: usize = 8;

/// The id of a client that connects after the waiting ones are done.
const LATE: u8 = 255;

/// What became of `WAITING` connects through `through` that wait in the
/// shared queue `q` (its two listeners `listeners` not accepting) when
/// the node holding the queue is killed, after which the listener on a
/// node that stays accepts: which client ids were served (each counted
/// once per serving), and how each client's connect ended. When some
/// failed, a later client (id [`LATE`]) connects through the same node
/// until it is served. The killed node is restarted before this returns.
fn kill_the_queues_node_with_requests_waiting(
    cluster: &TestCluster,
    q: &str,
    listeners: [(usize, &Listener); 2],
    through: usize,
    handshake_timeout: Duration,
) -> (Vec<u8>, Vec<Result<Duration, ErrorKind>>, usize) {
    let queue_node = cluster
        .queue(q)
        .and_then(|listed| cluster.node_named(&listed.node))
        .expect("the queue is listed on a node of the cluster");
    let (_, survivor) = listeners
        .into_iter()
        .find(|(node, _)| *node != queue_node)
        .expect("a listener on another node than the queue's");
    let url = cluster.url(through);
    let clients: Vec<_> = (0..WAITING as u8)
        .map(|id| {
            let (url, q) = (url.clone(), q.to_string());
            std::thread::spawn(move || {
                let began = Instant::now();
                let options = StreamOptions::new().handshake_timeout(Some(handshake_timeout));
                let mut stream = Connector::open_with(&url, options)
                    .and_then(|connector| connector.connect(&q))
                    .map_err(|err| err.kind())?;
                let waited = began.elapsed();
                stream.write_all(&[id]).unwrap();
                stream.flush().unwrap();
                let mut echo = [0];
                stream.read_exact(&mut echo).unwrap();
                assert_eq!(echo, [id], "client {id} got another client's echo");
                Ok(waited)
            })
        })
        .collect();
    // Every request waits in the queue (nobody accepts yet).
    let waiting = until_changed(Instant::now(), || {
        cluster
            .queue(q)
            .is_some_and(|listed| listed.messages == WAITING as u64)
    });
    eprintln!("{WAITING} requests waiting in {q:?} on node {queue_node} ({waiting})");
    cluster.kill(queue_node);
    // The listener on a node that stays serves what comes.
    let served = std::sync::Mutex::new(Vec::new());
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let serving = scope.spawn(|| {
            loop {
                let (mut stream, _) = match survivor.accept() {
                    Ok(accepted) => accepted,
                    Err(err) => panic!("the surviving listener failed: {err}"),
                };
                let mut id = [0];
                if stream.read_exact(&mut id).is_ok() {
                    served.lock().unwrap().push(id[0]);
                    stream.write_all(&id).unwrap();
                    stream.flush().unwrap();
                }
                let served = served.lock().unwrap();
                if served.len() >= WAITING || served.contains(&LATE) {
                    return;
                }
            }
        });
        let outcomes: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        if !outcomes.iter().all(Result::is_ok) {
            let mut late = connect_when_back(&url, q);
            late.write_all(&[LATE]).unwrap();
            late.flush().unwrap();
            let mut echo = [0];
            late.read_exact(&mut echo).unwrap();
            assert_eq!(echo, [LATE]);
        }
        serving.join().unwrap();
        outcomes
    });
    let rejoined = cluster.restart(queue_node);
    eprintln!("node {queue_node} rejoined {rejoined:.1?} after its restart");
    let served = served.into_inner().unwrap();
    (served, outcomes, queue_node)
}

#[test]
fn shared_listeners_on_a_replicated_queue_serve_every_waiting_request_once_when_its_node_dies() {
    let cluster = shared(NODES);
    let q = queue("cluster-replicated");
    let options = StreamOptions::new()
        .shared(true)
        .replicated(true)
        .reconnect(true);
    // The first to declare places the queue's leader on its node.
    let first = Listener::bind_with(&cluster.url(0), &q, options.clone()).unwrap();
    let second = Listener::bind_with(&cluster.url(1), &q, options).unwrap();
    let (served, outcomes, killed) = kill_the_queues_node_with_requests_waiting(
        &cluster,
        &q,
        [(0, &first), (1, &second)],
        2,
        HANG,
    );
    let mut ids = served.clone();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        served.len(),
        "a request was served twice: {served:?}"
    );
    assert_eq!(ids, (0..WAITING as u8).collect::<Vec<_>>(), "requests lost");
    let waits: Vec<String> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(waited) => format!("{waited:.1?}"),
            Err(kind) => panic!("a waiting client failed: {kind:?}"),
        })
        .collect();
    eprintln!(
        "replicated: all {WAITING} served once after node {killed} died; connects took {waits:?}"
    );
    record(
        "cluster: replicated shared listener",
        &format!("{WAITING} connects waiting in a quorum listener queue, listeners on 2 nodes"),
        "SIGKILL of the queue's node",
        &format!(
            "every request served once, by the listener on another node; connects took {}",
            waits.join(", ")
        ),
        WAITING as u64 * 2,
    );
    // Closing the last listener deletes the queue (it would stay a minute).
    drop(first);
    drop(second);
    until_changed(Instant::now(), || cluster.queue(&q).is_none());
}

#[test]
fn shared_listeners_on_a_classic_queue_lose_the_waiting_requests_when_its_node_dies() {
    // The trade-off `replicated` makes, measured: without it the queue
    // lives on one node and takes the waiting requests along.
    let cluster = shared(NODES);
    let q = queue("cluster-classic-shared");
    let options = StreamOptions::new().shared(true).reconnect(true);
    let first = Listener::bind_with(&cluster.url(0), &q, options.clone()).unwrap();
    let second = Listener::bind_with(&cluster.url(1), &q, options).unwrap();
    let (served, outcomes, killed) = kill_the_queues_node_with_requests_waiting(
        &cluster,
        &q,
        [(0, &first), (1, &second)],
        2,
        Duration::from_secs(10),
    );
    // Each client was served once, or failed (loudly, never a hang).
    let mut ids = served.clone();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        served.len(),
        "a request was served twice: {served:?}"
    );
    let mut lost = Vec::new();
    for (id, outcome) in outcomes.iter().enumerate() {
        let was_served = served.contains(&(id as u8));
        match outcome {
            Ok(_) => assert!(was_served, "client {id} connected but was never served"),
            Err(kind) => {
                assert!(!was_served, "client {id} was served but failed: {kind:?}");
                lost.push(format!("{kind:?}"));
            }
        }
    }
    eprintln!(
        "classic: {} of the {WAITING} waiting connects failed ({lost:?}) when node {killed} died; \
         a later one was served by the listener that declared the queue again",
        lost.len()
    );
    record(
        "cluster: classic shared listener",
        &format!("{WAITING} connects waiting in a classic listener queue, listeners on 2 nodes"),
        "SIGKILL of the queue's node",
        &format!(
            "{} of {WAITING} waiting connects failed ({}); a later connect was served",
            lost.len(),
            lost.join(", ")
        ),
        0,
    );
    drop((first, second));
}
