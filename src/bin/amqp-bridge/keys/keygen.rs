//! `amqp-bridge keygen`: writes a new key pair (or a pre-shared key) for
//! the end-to-end key options.

use crate::fatal::Fatal;
use amqp_stream::secure::{KeyPair, PresharedKey, public_path};
use clap::Args;
use std::path::PathBuf;

/// `keygen`'s options.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (0600); the public key goes to
    /// FILE.pub and to standard output. Existing files are never replaced
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Write a pre-shared key to FILE instead (for --psk-file on both ends)
    #[arg(long)]
    pub psk: bool,
    /// The comment after the public key (default: USER@HOST)
    #[arg(long, conflicts_with = "psk")]
    pub comment: Option<String>,
}

/// Writes the key files `args` asks for; prints the public key's line
/// (for the other end's authorized keys or `--peer-key`).
pub fn run(args: &KeygenArgs) -> Result<(), Fatal> {
    let failed = |err: std::io::Error| Fatal::runtime(err.to_string());
    if args.psk {
        PresharedKey::generate()
            .and_then(|psk| psk.write_new(&args.file))
            .map_err(failed)?;
        eprintln!(
            "wrote a pre-shared key to {} (mode 0600): copy it to the other end",
            args.file.display()
        );
        return Ok(());
    }
    let pair = KeyPair::generate().map_err(failed)?;
    let comment = args.comment.clone().unwrap_or_else(default_comment);
    pair.write_new(&args.file, &comment).map_err(failed)?;
    eprintln!(
        "wrote the private key to {} (mode 0600) and the public key to {}",
        args.file.display(),
        public_path(&args.file).display()
    );
    println!("{}", pair.line(&comment));
    Ok(())
}

/// `user@host`, as ssh-keygen comments its keys: the user from `USER`
/// or `LOGNAME`, else the password database's name for our uid (a
/// service or a container often has no `USER`); the host from the
/// kernel.
fn default_comment() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|user| user.trim().to_string())
        .find(|user| !user.is_empty())
        .or_else(user_of_uid)
        .unwrap_or_else(|| "user".to_string());
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|host| host.trim().to_string())
        .find(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{user}@{host}")
}

/// The name `/etc/passwd` gives this process's real uid (or `uid1000`
/// when it lists none).
fn user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 2 && fields[2] == uid).then(|| fields[0].to_string())
    });
    Some(name.unwrap_or_else(|| format!("uid{uid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_comment_names_a_user_and_a_host_even_without_user() {
        let comment = default_comment();
        let (user, host) = comment.split_once('@').unwrap();
        assert!(!user.is_empty() && !host.is_empty(), "{comment}");
        let uid_user = user_of_uid().unwrap();
        assert!(!uid_user.is_empty());
    }
}
