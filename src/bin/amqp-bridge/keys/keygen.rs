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

/// `user@host`, as ssh-keygen comments its keys.
fn default_comment() -> String {
    let user = std::env::var("USER").unwrap_or_default();
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    match (user.trim(), host.trim()) {
        ("", _) | (_, "") => String::new(),
        (user, host) => format!("{user}@{host}"),
    }
}
