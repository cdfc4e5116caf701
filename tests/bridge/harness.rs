//! Runs `amqp-bridge` as a child process and follows its log.
// Shared by several test targets; each uses part of it.
#![allow(dead_code)]

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError, unbounded};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the tests wait for a log line or an exit; far more than any
/// of it takes.
pub const BOUND: Duration = Duration::from_secs(30);

/// A running bridge.
pub struct Bridge {
    pid: u32,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    exited: Receiver<ExitStatus>,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
}

impl Bridge {
    /// Starts `amqp-bridge ARGS` against `url` at log level `info`.
    pub fn start(url: &str, args: &[&str]) -> Bridge {
        Bridge::start_logging(url, args, "info")
    }

    /// Starts `amqp-bridge ARGS` against `url` with `RUST_LOG=level`
    /// (an empty `level`: without `RUST_LOG`, as users run it).
    pub fn start_logging(url: &str, args: &[&str], level: &str) -> Bridge {
        Bridge::start_with_env(url, args, level, &[])
    }

    /// As [`start_logging`](Bridge::start_logging), with the variables
    /// `env` set too.
    pub fn start_with_env(url: &str, args: &[&str], level: &str, env: &[(&str, &str)]) -> Bridge {
        let mut command = Command::new(env!("CARGO_BIN_EXE_amqp-bridge"));
        command
            .args(args)
            .env("AMQP_URL", url)
            .envs(env.iter().copied());
        if level.is_empty() {
            command.env_remove("RUST_LOG");
        } else {
            command.env("RUST_LOG", level);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start amqp-bridge");
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (line_tx, lines) = unbounded();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line.clone());
                let _ = line_tx.send(line);
            }
        });
        let (exit_tx, exited) = unbounded();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Bridge {
            pid,
            lines,
            log,
            exited,
            stdin,
            stdout,
        }
    }

    /// Waits for the next log line containing `needle` (lines before it
    /// are skipped) and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no log line with {needle:?}; log:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "bridge ended before logging {needle:?}; log:\n{}",
                        self.log()
                    )
                }
            }
        }
    }

    /// Waits until a log line containing each of `needles` has come, in
    /// any order.
    pub fn wait_for_each(&self, needles: &[&str]) {
        let mut missing: Vec<&str> = needles.to_vec();
        let deadline = Instant::now() + BOUND;
        while !missing.is_empty() {
            match self.lines.recv_deadline(deadline) {
                Ok(line) => missing.retain(|needle| !line.contains(needle)),
                Err(_) => panic!("no log lines with {missing:?}; log:\n{}", self.log()),
            }
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.exited.try_recv(), Err(TryRecvError::Empty))
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"KILL"`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// Waits for the process to end.
    pub fn wait_exit(&self) -> ExitStatus {
        match self.exited.recv_timeout(BOUND) {
            Ok(status) => status,
            Err(_) => panic!("bridge still running after {BOUND:?}; log:\n{}", self.log()),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Empty: still running (Disconnected: it ended and was reaped).
        if matches!(self.exited.try_recv(), Err(TryRecvError::Empty)) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Starts `serve` for a fresh queue in front of `target`; returns it and
/// the queue once it serves.
pub fn serve(url: &str, target: SocketAddr) -> (Bridge, String) {
    let queue = crate::common::queue("bridge");
    let bridge = Bridge::start(
        url,
        &["serve", "--queue", &queue, "--to", &target.to_string()],
    );
    bridge.wait_for("serving queue");
    (bridge, queue)
}

/// Starts `forward` from a free local port to `queue`; returns it and
/// the port's address once it accepts.
pub fn forward(url: &str, queue: &str) -> (Bridge, SocketAddr) {
    let bridge = Bridge::start(
        url,
        &["forward", "--listen", "127.0.0.1:0", "--queue", queue],
    );
    let line = bridge.wait_for("forwarding");
    (bridge, address_in(&line))
}

/// The `IP:PORT` after "forwarding " or "front door on " in a log line.
pub fn address_in(line: &str) -> SocketAddr {
    line.split_whitespace()
        .filter_map(|word| word.trim_end_matches(':').parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// The log lines at `WARN` or `ERROR` in `log`.
pub fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect()
}

/// A minimal HTTP server: answers every request with `200` and a body
/// that names the request line, then closes.
pub fn http_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let body = format!("you asked for {}", request_line.trim_end());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(answer.as_bytes()).unwrap();
            });
        }
    });
    addr
}

/// A TCP echo service on a free local port of `ip`: each connection gets
/// back what it sends, then the end of it.
pub fn echo_service_on(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            std::thread::spawn(move || {
                let mut reader = client.try_clone().unwrap();
                let mut writer = client;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// A TCP echo service on a free port of 127.0.0.1.
pub fn echo_service() -> SocketAddr {
    echo_service_on("127.0.0.1")
}

/// Sends `data` through `addr` on one TCP connection (then half-closes)
/// while reading everything that comes back, each read within [`BOUND`].
pub fn round_trip(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    round_trip_over(client, data)
}

/// Sends `data` on `tcp` (then half-closes) while reading everything that
/// comes back.
pub fn round_trip_over(tcp: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = tcp.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&tcp).read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

/// Asserts that `got` is `sent`, saying where they first differ.
pub fn assert_same(what: &str, sent: &[u8], got: &[u8]) {
    assert!(
        sent == got,
        "{what}: {} bytes sent, {} received, first difference at {:?}",
        sent.len(),
        got.len(),
        crate::common::first_difference(sent, got)
    );
}
