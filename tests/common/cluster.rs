//! A RabbitMQ cluster of the suite's own: nodes of [`TestNode`], each with
//! its own name, ports and data directory, all with one Erlang cookie of
//! their own (never the machine's broker's), joined with `rabbitmqctl
//! join_cluster`. Dropping it kills every node and deletes their
//! directories.
//!
//! The nodes start in parallel (the two cores are shared, so that saves
//! about half the boot time); joining is one node at a time (`stop_app`,
//! `reset`, `join_cluster`, `start_app`), as RabbitMQ's clustering guide
//! does it. [`shared`] hands the tests of one target one cluster in turn.

use super::node::TestNode;
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the nodes may take to agree on the cluster's members (a
/// node restarting first boots, then syncs with the others).
const AGREE_WITHIN: Duration = Duration::from_secs(120);

/// A running cluster; node `i` is `0..size`.
pub struct TestCluster {
    nodes: Vec<TestNode>,
}

/// One row of `rabbitmqctl list_queues name pid consumers messages`, the
/// queue's node taken from its process id (RabbitMQ 3.10 has no `node`
/// column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterQueue {
    pub name: String,
    /// The Erlang name of the node the queue lives on.
    pub node: String,
    pub consumers: u64,
    pub messages: u64,
}

impl TestCluster {
    /// Starts `size` nodes in parallel, joins the others to the first and
    /// waits until every node lists every node as running. Prints how long
    /// that took.
    pub fn start(size: usize) -> TestCluster {
        assert!(size >= 1, "a cluster has a node");
        let cookie = format!("AMQPSTREAM{}", uuid::Uuid::new_v4().simple()).to_uppercase();
        let began = Instant::now();
        let nodes: Vec<TestNode> = (0..size)
            .map(|_| TestNode::create("", Some(&cookie)))
            .collect();
        std::thread::scope(|scope| {
            for node in &nodes {
                scope.spawn(|| node.launch());
            }
        });
        let booted = began.elapsed();
        let cluster = TestCluster { nodes };
        let seed = cluster.nodes[0].name().to_string();
        // Each `rabbitmqctl` call boots a VM of its own (seconds on a busy
        // machine): the nodes take the steps side by side, all but the
        // join itself, which changes the cluster's schema one node at a
        // time.
        let joining = &cluster.nodes[1..];
        let each = |args: &[&str]| {
            std::thread::scope(|scope| {
                for node in joining {
                    scope.spawn(|| node.ctl(args));
                }
            })
        };
        each(&["stop_app"]);
        each(&["reset"]);
        for node in joining {
            node.ctl(&["join_cluster", &seed]);
        }
        each(&["start_app"]);
        cluster.wait_until_members(&cluster.all());
        eprintln!(
            "cluster of {size} nodes up in {:.1?} ({booted:.1?} to boot them side by side, {:.1?} to join)",
            began.elapsed(),
            began.elapsed() - booted
        );
        cluster
    }

    /// How many nodes it has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's index.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i]
    }

    /// Node `i`'s AMQP URL (`amqp://guest:guest@127.0.0.1:PORT/%2f`).
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url("")
    }

    /// The comma-separated list of the URLs of `nodes`.
    pub fn urls_of(&self, nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(|&i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The comma-separated list of every node's URL.
    pub fn urls(&self) -> String {
        self.urls_of(&self.all())
    }

    /// The index of the node whose AMQP port is `port`, if one is.
    pub fn node_on_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|node| node.port() == port)
    }

    /// The index of the node whose Erlang name is `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name() == name)
    }

    /// SIGKILLs node `i` (its connections are cut); returns once its port
    /// is closed.
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again (after [`kill`](Self::kill) or
    /// [`stop`](Self::stop)) and waits until it is a member again that
    /// every running node agrees on and that takes AMQP connections;
    /// answers how long that took.
    pub fn restart(&self, i: usize) -> Duration {
        let began = Instant::now();
        self.nodes[i].launch();
        self.wait_until_members(&self.running());
        self.assert_serves(i);
        began.elapsed()
    }

    /// Stops node `i` properly (`rabbitmqctl stop`); the others go on.
    pub fn stop(&self, i: usize) {
        self.nodes[i].stop();
    }

    /// The nodes launched and neither killed nor stopped since.
    pub fn running(&self) -> Vec<usize> {
        self.all()
            .into_iter()
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Starts every node that is not running and waits for them all to
    /// agree on the cluster's members: the cluster whole again.
    pub fn heal(&self) {
        for i in self.all() {
            if !self.nodes[i].is_running() {
                self.nodes[i].launch();
            }
        }
        self.wait_until_members(&self.all());
    }

    /// The running nodes of the cluster as node `i` sees them (Erlang
    /// names), from `rabbitmqctl cluster_status`.
    pub fn running_nodes_seen_by(&self, i: usize) -> Result<BTreeSet<String>, String> {
        let status = self.nodes[i].try_ctl(&["cluster_status", "--formatter", "json"])?;
        json_strings(&status, "running_nodes")
            .map(|names| names.into_iter().collect())
            .ok_or_else(|| format!("no running_nodes in {status}"))
    }

    /// Waits until each of `members` lists exactly `members` as the
    /// cluster's running nodes.
    pub fn wait_until_members(&self, members: &[usize]) {
        let expected: BTreeSet<String> = members
            .iter()
            .map(|&i| self.nodes[i].name().to_string())
            .collect();
        super::eventually(
            AGREE_WITHIN,
            "the cluster's nodes agree on its members",
            || {
                // Asked side by side: each `rabbitmqctl` takes seconds.
                let seen: Vec<_> = std::thread::scope(|scope| {
                    let asked: Vec<_> = members
                        .iter()
                        .map(|&i| scope.spawn(move || (i, self.running_nodes_seen_by(i))))
                        .collect();
                    asked.into_iter().map(|a| a.join().unwrap()).collect()
                });
                for (i, seen) in seen {
                    let seen = seen?;
                    if seen != expected {
                        return Err(format!("node {i} sees {seen:?}, not {expected:?}"));
                    }
                }
                Ok(())
            },
        );
    }

    /// Node `i` takes AMQP connections: a login, a channel and a queue.
    pub fn assert_serves(&self, i: usize) {
        let mut connection = amiquip::Connection::insecure_open(&self.url(i))
            .unwrap_or_else(|err| panic!("node {i} takes no connection: {err}"));
        let channel = connection.open_channel(None).expect("a channel");
        channel
            .queue_declare(
                "",
                amiquip::QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|err| panic!("node {i} declares no queue: {err}"));
        connection.close().expect("a clean close");
    }

    /// Every queue of the cluster with the node it lives on, asked of the
    /// first running node that answers.
    pub fn queues(&self) -> Vec<ClusterQueue> {
        let mut last_error = String::from("no node is running");
        for i in self.running() {
            match self.nodes[i].try_ctl(&["list_queues", "name", "pid", "consumers", "messages"]) {
                Ok(out) => return parse_queues(&out),
                Err(err) => last_error = err,
            }
        }
        panic!("list_queues: {last_error}");
    }

    /// The queue `name` as the cluster lists it, if it does.
    pub fn queue(&self, name: &str) -> Option<ClusterQueue> {
        self.queues().into_iter().find(|queue| queue.name == name)
    }
}

/// The rows of `list_queues name pid consumers messages` (its header and
/// anything else that is not such a row skipped).
fn parse_queues(out: &str) -> Vec<ClusterQueue> {
    out.lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [name, pid, consumers, messages] => Some(ClusterQueue {
                    name: name.to_string(),
                    node: node_of_pid(pid)?,
                    consumers: consumers.parse().ok()?,
                    messages: messages.parse().ok()?,
                }),
                _ => None,
            },
        )
        .collect()
}

/// The node of an Erlang process id as `rabbitmqctl` prints it:
/// `<amqpstream-1-0@localhost.1796400045.10300.7>` is on
/// `amqpstream-1-0@localhost`.
fn node_of_pid(pid: &str) -> Option<String> {
    let inner = pid.strip_prefix('<')?.strip_suffix('>')?;
    let mut parts = inner.rsplitn(4, '.');
    let numbers = [parts.next()?, parts.next()?, parts.next()?];
    numbers
        .iter()
        .all(|n| n.parse::<u64>().is_ok())
        .then(|| parts.next().map(str::to_string))?
}

/// The strings of the JSON array `"key":[...]` in `json` (no nesting:
/// enough for `cluster_status`'s node lists).
fn json_strings(json: &str, key: &str) -> Option<Vec<String>> {
    let start = json.find(&format!("\"{key}\":["))? + key.len() + 4;
    let end = start + json[start..].find(']')?;
    Some(
        json[start..end]
            .split(',')
            .map(|item| item.trim().trim_matches('"').to_string())
            .filter(|item| !item.is_empty())
            .collect(),
    )
}

/// One cluster of `size` nodes for all the tests of a target, one test at
/// a time: the first call starts it, each call waits for the tests before
/// to be done with it and makes it whole again (restarts what they
/// killed). It lives until the test process ends, when the nodes'
/// watchdogs kill them (a static is never dropped).
pub fn shared(size: usize) -> SharedCluster {
    static SHARED: Mutex<Option<TestCluster>> = Mutex::new(None);
    // A test that failed holding it poisoned it: heal and go on.
    let mut guard = SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match guard.as_ref() {
        Some(cluster) => {
            assert_eq!(cluster.size(), size, "one shared cluster size per target");
            cluster.heal();
        }
        None => *guard = Some(TestCluster::start(size)),
    }
    SharedCluster(guard)
}

/// The cluster [`shared`] lends a test.
pub struct SharedCluster(MutexGuard<'static, Option<TestCluster>>);

impl std::ops::Deref for SharedCluster {
    type Target = TestCluster;

    fn deref(&self) -> &TestCluster {
        self.0.as_ref().expect("started by `shared`")
    }
}
