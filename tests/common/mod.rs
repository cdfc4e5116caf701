//! Helpers shared by the integration tests: broker URL, unique queue
//! names, reproducible random data and a log capture.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod data;
pub mod node;
pub mod raw;
pub mod relay;
pub mod schedule;
pub mod summary;

use std::sync::{Mutex, Once};

/// The broker the tests use: `AMQP_URL`, or the local one. A test that
/// asks for it fails at once, without a backtrace, when nothing answers
/// there; the first one of a `cargo test` run says what to do.
pub fn url() -> String {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    static REACHABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*REACHABLE.get_or_init(|| broker_answers(&url)) {
        no_broker(&url);
    }
    url
}

/// Whether something accepts TCP connections at `url`'s host and port.
fn broker_answers(url: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(broker) = url.parse::<amqp_stream::BrokerUrl>() else {
        return true; // a test of bad URLs: let it go on
    };
    let Ok(addrs) = (broker.host(), broker.port()).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok())
}

/// Fails the calling test for want of a broker. The hint goes to the
/// terminal (not to the test's captured output) once per `cargo test`
/// run, whose test processes share a parent; the failure unwinds without
/// the panic hook, so no backtrace buries it.
fn no_broker(url: &str) -> ! {
    use std::io::Write;
    let shown = url
        .parse::<amqp_stream::BrokerUrl>()
        .map(|broker| broker.to_string())
        .unwrap_or_else(|_| "AMQP_URL".into());
    let marker = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "no-broker-hint.{}",
        std::os::unix::process::parent_id()
    ));
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_ok();
    if first {
        let _ = writeln!(
            std::io::stderr(),
            "\nno broker at AMQP_URL ({shown}): run scripts/test.sh (it installs and \
             starts RabbitMQ) or start RabbitMQ\n"
        );
    }
    std::panic::resume_unwind(Box::new(format!("no broker at {shown}")))
}

/// A queue name no other test (or test run) uses.
pub fn queue(tag: &str) -> String {
    format!("test-{tag}-{}", uuid::Uuid::new_v4())
}

/// `len` pseudo-random bytes from `seed` (see [`data::RandomSource`]).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    data::RandomSource::new(seed).fill(&mut out);
    out
}

/// A TCP port free right now on 127.0.0.1 (nothing listens on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// This process's thread count (Linux).
pub fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("Linux /proc")
        .count()
}

/// Whether this process still holds a TCP socket whose local port is
/// `port` (Linux: its open files against `/proc/net/tcp` and `tcp6`): a
/// broker connection is closed for good once this is `false`.
pub fn holds_tcp_socket_from(port: u16) -> bool {
    holds_tcp_socket(port, None)
}

/// Whether this process still holds a TCP socket from local port `port`
/// to remote port `to` (Linux): [`holds_tcp_socket_from`] for one
/// connection, not fooled by another that the kernel gave the same local
/// port (it may, for a different destination).
pub fn holds_tcp_socket_between(port: u16, to: u16) -> bool {
    holds_tcp_socket(port, Some(to))
}

fn holds_tcp_socket(port: u16, to: Option<u16>) -> bool {
    let inodes: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("Linux /proc")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let local_port = format!(":{port:04X}");
    let remote_port = to.map(|to| format!(":{to:04X}"));
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 9
                    && cols[1].ends_with(&local_port)
                    && remote_port.as_ref().is_none_or(|to| cols[2].ends_with(to))
                    && inodes.iter().any(|i| i == cols[9])
            })
    })
}

/// Checks `settled` until it holds or `limit` passes; the broker and our
/// threads settle on their own time, and this is how a test observes it.
pub fn eventually(
    limit: std::time::Duration,
    what: &str,
    mut settled: impl FnMut() -> Result<(), String>,
) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match settled() {
            Ok(()) => return,
            Err(why) if std::time::Instant::now() > deadline => panic!("{what}: {why}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// Runs `f` on a thread of its own and waits at most `limit` for it: a
/// call that hangs fails the test instead of holding it forever.
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: still not done after {limit:?}"))
}

/// Where the first difference between two byte strings is, for messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// A raw amiquip connection to the test broker (for playing the peer).
pub fn raw_connection() -> amiquip::Connection {
    amiquip::Connection::insecure_open(&url()).expect("raw amiquip connection")
}

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.target().starts_with("amqp_stream") {
            LOGS.lock()
                .unwrap()
                .push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

/// Captures every log line of the crate from now on (process-wide).
pub fn capture_logs() {
    INSTALL.call_once(|| {
        log::set_boxed_logger(Box::new(Capture)).expect("no other logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// The captured log lines so far.
pub fn logs() -> Vec<String> {
    LOGS.lock().unwrap().clone()
}

/// The numbers `rabbitmqctl list_queues` gives for `queue` in `columns`
/// (after its name); `None` if the broker has no such queue.
fn queue_numbers<const N: usize>(queue: &str, columns: [&str; N]) -> Option<[u64; N]> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "name"])
        .args(columns)
        .output()
        .expect("rabbitmqctl runs (scripts/ensure-broker.sh installs it)");
    assert!(
        out.status.success(),
        "rabbitmqctl list_queues failed: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next() != Some(queue) {
                return None;
            }
            let numbers: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
            numbers.try_into().ok()
        })
}

/// What the broker holds in `queue` now: (messages, body bytes), ready and
/// unacknowledged together, from `rabbitmqctl`; `None` if it has no such
/// queue.
pub fn queue_depth(queue: &str) -> Option<(u64, u64)> {
    let [messages, bytes] = queue_numbers(queue, ["messages", "message_bytes"])?;
    Some((messages, bytes))
}

/// How `queue` stands now, from `rabbitmqctl`: (messages ready,
/// messages delivered but unacknowledged, consumers); `None` if the broker
/// has no such queue.
pub fn queue_state(queue: &str) -> Option<(u64, u64, u64)> {
    let [ready, unacked, consumers] = queue_numbers(
        queue,
        ["messages_ready", "messages_unacknowledged", "consumers"],
    )?;
    Some((ready, unacked, consumers))
}

/// This process's resident memory in bytes (Linux).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// The highest resident memory of this process, sampled every 20 ms on a
/// thread of its own from [`start`](MemoryPeak::start) to
/// [`stop`](MemoryPeak::stop), over what it was at the start.
pub struct MemoryPeak {
    stop: std::sync::mpsc::Sender<()>,
    sampler: std::thread::JoinHandle<u64>,
}

impl MemoryPeak {
    pub fn start() -> MemoryPeak {
        let base = resident_bytes();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let sampler = std::thread::spawn(move || {
            let mut peak = base;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(std::time::Duration::from_millis(20))
            {
                peak = peak.max(resident_bytes());
            }
            peak.max(resident_bytes()).saturating_sub(base)
        });
        MemoryPeak { stop, sampler }
    }

    /// The highest growth seen, in bytes.
    pub fn stop(self) -> u64 {
        drop(self.stop);
        self.sampler.join().expect("the memory sampler")
    }
}

/// `rabbitmqctl list_connections peer_port channels`: the channel count of
/// our connection whose local port is `port`; `None` when it is not
/// listed (or rabbitmqctl cannot run).
pub fn broker_channels_of(port: u16) -> Option<u32> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "peer_port", "channels"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            let p: u16 = cols.next()?.parse().ok()?;
            (p == port).then(|| cols.next()?.parse().ok())?
        })
}

/// `rabbitmqctl -q ARGS`, as lines of whitespace-separated fields (the
/// header line included: callers match on their own values).
fn rabbitmqctl_rows(args: &[&str]) -> Vec<Vec<String>> {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (scripts/ensure-broker.sh installs it)");
    assert!(out.status.success(), "rabbitmqctl {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The exclusive queues the broker holds for our connections whose local
/// ports are `ports`: what a test made, whatever else uses the broker.
pub fn queues_owned_by(ports: &[u16]) -> Vec<String> {
    let owners: Vec<String> = rabbitmqctl_rows(&["list_connections", "pid", "peer_port"])
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [pid, port] if port.parse().is_ok_and(|p: u16| ports.contains(&p)) => Some(pid.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(owners.len(), ports.len(), "our connections are listed");
    rabbitmqctl_rows(&["list_queues", "name", "owner_pid"])
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [name, owner] if owners.contains(owner) => Some(name.clone()),
            _ => None,
        })
        .collect()
}
