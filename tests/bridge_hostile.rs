//! `amqp-bridge` against hostile and careless inputs, as child processes
//! over real TCP and the real broker: key material given where it does
//! not belong, clients that never finish their target request or SOCKS5
//! handshake, many refused clients at once, replayed and injected
//! stream messages.

mod common;
#[path = "bridge/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

const BRIDGE: &str = env!("CARGO_BIN_EXE_amqp-bridge");

/// A fresh directory for one test's key files.
fn key_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bridge-hostile-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// `amqp-bridge keygen ARGS` in `dir`.
fn keygen(dir: &Path, args: &[&str]) {
    let out = Command::new(BRIDGE)
        .arg("keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hex digits of the key line in a key file.
fn key_digits(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn a_secret_given_as_peer_key_is_refused_without_being_echoed() {
    let dir = key_dir();
    keygen(&dir, &["client.key"]);
    keygen(&dir, &["server.key"]);
    keygen(&dir, &["--psk", "psk"]);
    let client_key = dir.join("client.key").display().to_string();
    // What a careless user pastes: the private key file's content, its
    // key line, the pre-shared key's line, the bare digits.
    let server_private = std::fs::read_to_string(dir.join("server.key")).unwrap();
    let psk = std::fs::read_to_string(dir.join("psk")).unwrap();
    let server_digits = key_digits(&dir.join("server.key"));
    let psk_digits = key_digits(&dir.join("psk"));
    let pasted = [
        (server_private.clone(), &server_digits),
        (
            server_private.lines().last().unwrap().to_string(),
            &server_digits,
        ),
        (psk.lines().last().unwrap().to_string(), &psk_digits),
        (server_digits.clone(), &server_digits),
    ];
    for (value, secret) in pasted {
        let out = Command::new(BRIDGE)
            .args(["forward", "--listen", "127.0.0.1:0", "--queue", "q"])
            .args(["--key", &client_key, "--peer-key", &value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            !stderr.contains(&secret[..16]),
            "the secret is in the error: {stderr}"
        );
        assert!(stderr.contains("--peer-key"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
