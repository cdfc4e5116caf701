//! A real OpenSSH server for the tests, on a free local port, with its
//! own configuration, host key and client key in a temporary directory
//! (`scripts/ensure-test-tools.sh` installs OpenSSH). It runs as the
//! tests' user (root on the test machines) and stops when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SSHD: &str = "/usr/sbin/sshd";
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// A running `sshd -D` and the key that logs in to it.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Sshd {
    /// Generates keys and a configuration, starts sshd on a free port and
    /// waits until it accepts connections.
    pub fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: run scripts/ensure-test-tools.sh (scripts/test.sh does)"
        );
        let dir = std::env::temp_dir().join(format!("amqp-bridge-sshd-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        for key in ["host_key", "client_key"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(dir.join(key)),
            );
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = super::common::free_port();
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             HostKey {dir}/host_key\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile {dir}/sshd.pid\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             Subsystem sftp {SFTP_SERVER}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        super::common::eventually(Duration::from_secs(20), "sshd accepts connections", || {
            TcpStream::connect(addr)
                .map(drop)
                .map_err(|err| err.to_string())
        });
        Sshd { child, dir, addr }
    }

    /// The options every `ssh` and `scp` here takes: our key, no known
    /// hosts, no questions.
    pub fn client_options(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            &self.dir.join("client_key").display().to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=30",
            "-o",
            "LogLevel=ERROR",
        ]
        .map(String::from)
        .to_vec()
    }

    /// A scratch directory that goes with the server.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` and panics with its output unless it succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
