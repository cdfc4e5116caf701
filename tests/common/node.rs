//! A RabbitMQ node of the suite's own, beside the machine's broker: its
//! own node name, ports, data directory, Erlang cookie and configuration,
//! so a test can restart it or give it settings (a low channel limit, a
//! TLS listener) without touching the broker other tests use.
//!
//! It runs the same RabbitMQ installation as the machine's broker
//! (`scripts/ensure-broker.sh` installs it on a fresh machine) straight
//! from `/usr/lib/rabbitmq/bin`, as the user running the tests.

use super::free_port;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to start on a busy two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running test node; dropping it kills it and deletes its directory.
pub struct TestNode {
    name: String,
    dir: PathBuf,
    port: u16,
}

impl TestNode {
    /// Starts a node whose `rabbitmq.conf` holds `config` besides its TCP
    /// listener; waits until it accepts AMQP connections.
    pub fn start(config: &str) -> TestNode {
        TestNode::start_on(free_port(), config)
    }

    /// As [`start`](TestNode::start), its AMQP listener on `port` (one
    /// chosen before the node runs: a client may be trying it already).
    pub fn start_on(port: u16, config: &str) -> TestNode {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let name = format!("amqpstream-{}-{n}@localhost", std::process::id());
        let dir = std::env::temp_dir().join(format!("amqp-stream-node-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("node directory");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n{config}\n"),
        )
        .expect("rabbitmq.conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        let node = TestNode { name, dir, port };
        node.launch();
        node
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`, plus `query` if not empty.
    pub fn url(&self, query: &str) -> String {
        let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port);
        if query.is_empty() {
            url
        } else {
            format!("{url}?{query}")
        }
    }

    /// The node's AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's own directory (for certificates and the like).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the node as a crash would (SIGKILL: connections are cut, not
    /// closed) and starts it again on the same ports and data; returns once
    /// it accepts connections again.
    pub fn crash_and_restart(&self) {
        self.kill();
        self.launch();
    }

    /// Runs `rabbitmqctl` against this node; panics if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.command("rabbitmqctl").arg("-q").args(args).output();
        let out = out.expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(Path::new(BIN).join(program));
        command
            .arg("-n")
            .arg(&self.name)
            .env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        command
    }

    fn launch(&self) {
        let dist_port = free_port();
        let out: Output = Command::new(Path::new(BIN).join("rabbitmq-server"))
            .arg("-detached")
            .env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            // No busy-waiting schedulers: two cores are shared with the
            // machine's broker and the tests.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none",
            )
            .output()
            .expect("rabbitmq-server runs (scripts/ensure-broker.sh installs it)");
        assert!(
            out.status.success(),
            "starting test node {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "test node {} did not open port {} within {START_TIMEOUT:?}; its logs are in {}",
                self.name,
                self.port,
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the node's Erlang VM and waits until its port is closed.
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap_or_default();
        let pid = pid.trim();
        if pid.is_empty() {
            return;
        }
        let _ = Command::new("kill").arg("-KILL").arg(pid).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
