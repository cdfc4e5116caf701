//! A RabbitMQ node of the suite's own, beside the machine's broker: its
//! own node name, ports, data directory, Erlang cookie and configuration,
//! so a test can restart it or give it settings (a low channel limit, a
//! TLS listener) without touching the broker other tests use.
//!
//! It runs the same RabbitMQ installation as the machine's broker
//! (`scripts/ensure-broker.sh` installs it on a fresh machine) straight
//! from `/usr/lib/rabbitmq/bin`, as the user running the tests.
//!
//! The Erlang cookie: the node's `HOME` is its own directory, for the
//! server and for every `rabbitmqctl` call alike, so both read
//! `HOME/.erlang.cookie` (Erlang/OTP 25's only place, RabbitMQ 3.10's CLI
//! taking it when neither `--erlang-cookie` nor the deprecated
//! `RABBITMQ_ERLANG_COOKIE` is given). The server writes a random one
//! there on its first start; nodes of one cluster get the same one
//! written before ([`TestNode::create`]). The machine's broker keeps its
//! own in `/var/lib/rabbitmq` and never hears from ours.
//!
//! A watchdog process per node kills it should the test process end
//! without dropping it (a static shared by the tests of a target, or a
//! test run killed from outside).

use super::free_port;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to start on a busy two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A test node; dropping it kills it and deletes its directory.
pub struct TestNode {
    name: String,
    dir: PathBuf,
    port: u16,
    /// Whether it was launched and neither killed nor stopped since.
    running: AtomicBool,
}

impl TestNode {
    /// Starts a node whose `rabbitmq.conf` holds `config` besides its TCP
    /// listener; waits until it accepts AMQP connections.
    pub fn start(config: &str) -> TestNode {
        let node = TestNode::create(config, None);
        node.launch();
        node
    }

    /// As [`start`](TestNode::start), its AMQP listener on `port` (one
    /// chosen before the node runs: a client may be trying it already).
    pub fn start_on(port: u16, config: &str) -> TestNode {
        let node = TestNode::create_on(port, config, None);
        node.launch();
        node
    }

    /// Prepares a node (its directory, configuration and, if given, its
    /// Erlang cookie) without starting it: see [`launch`](Self::launch).
    pub fn create(config: &str, cookie: Option<&str>) -> TestNode {
        TestNode::create_on(free_port(), config, cookie)
    }

    /// As [`create`](TestNode::create), its AMQP listener on `port`.
    pub fn create_on(port: u16, config: &str, cookie: Option<&str>) -> TestNode {
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
        if let Some(cookie) = cookie {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(".erlang.cookie");
            std::fs::write(&path, cookie).expect(".erlang.cookie");
            // Erlang refuses a cookie file others may read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
                .expect(".erlang.cookie mode");
        }
        watch(&dir);
        TestNode {
            name,
            dir,
            port,
            running: AtomicBool::new(false),
        }
    }

    /// The node's Erlang name, `amqpstream-PID-N@localhost`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it was launched and neither killed nor stopped since.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
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
        self.try_ctl(args)
            .unwrap_or_else(|err| panic!("rabbitmqctl -n {} {args:?}: {err}", self.name))
    }

    /// Runs `rabbitmqctl -q ARGS` against this node: its output, or what
    /// it said on failure.
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = self.command("rabbitmqctl").arg("-q").args(args).output();
        let out = out.expect("rabbitmqctl runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Stops the node properly (`rabbitmqctl stop`: its connections are
    /// closed, its queues' owners told) and waits until its port is closed.
    pub fn stop(&self) {
        self.ctl(&["stop"]);
        self.wait_port_closed();
        let _ = std::fs::remove_file(self.dir.join("pid"));
        self.running.store(false, Ordering::SeqCst);
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

    /// Starts the node's Erlang VM (on its ports and data, as before if
    /// it ran before) and waits until it accepts AMQP connections.
    pub fn launch(&self) {
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
        self.running.store(true, Ordering::SeqCst);
    }

    /// SIGKILLs the node's Erlang VM (as a crash would: connections are
    /// cut, nothing is closed) and waits until its port is closed.
    pub fn kill(&self) {
        self.running.store(false, Ordering::SeqCst);
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap_or_default();
        let pid = pid.trim();
        if pid.is_empty() {
            return;
        }
        let _ = Command::new("kill").arg("-KILL").arg(pid).status();
        self.wait_port_closed();
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    fn wait_port_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts the watchdog of the node in `dir`: once this process has ended
/// while the directory is still there (the node was never dropped), it
/// kills the node whose pid is in the directory and deletes it. It checks
/// once a second and leaves when the directory goes.
fn watch(dir: &Path) {
    let dir = dir.display();
    let script = format!(
        "while kill -0 {test} 2>/dev/null && [ -d '{dir}' ]; do sleep 1; done; \
         if [ -d '{dir}' ]; then \
           [ -f '{dir}/pid' ] && kill -KILL \"$(cat '{dir}/pid')\" 2>/dev/null; \
           rm -rf '{dir}'; \
         fi",
        test = std::process::id()
    );
    // Its own session: a signal to the test's process group spares it.
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
