//! Echo client: sends standard input to the echo server and prints the
//! answer as it comes.
//!
//! `echo hello | cargo run --example echo_client [QUEUE]` (default queue
//! `echo`; broker from `AMQP_URL`, default the local one). Any amount of
//! input works: `head -c 100M /dev/urandom | cargo run --example
//! echo_client | wc -c`.

use amqp_stream::Stream;
use std::io::{self, Write};
use std::net::Shutdown;
use std::thread;

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let queue = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "echo".to_string());

    let stream = Stream::connect(&url, &queue)?;

    // Write and read at the same time, from two threads, as with a
    // TcpStream. Writing everything before reading deadlocks once the
    // input is larger than what the two directions hold in flight (the
    // peer's receive window, 1 MiB by default, plus the broker's share):
    // the server stops reading while its echo waits for us to read, and
    // our write waits for the server to read.
    let mut writer = stream.try_clone()?;
    let sender = thread::spawn(move || -> io::Result<u64> {
        let sent = io::copy(&mut io::stdin().lock(), &mut writer)?;
        writer.shutdown(Shutdown::Write)?; // the server sees EOF
        Ok(sent)
    });

    let mut reader = stream;
    let mut stdout = io::stdout().lock();
    let received = io::copy(&mut reader, &mut stdout)?;
    stdout.flush()?;
    let sent = sender.join().expect("the sending thread panicked")?;
    if received != sent {
        return Err(io::Error::other(format!(
            "sent {sent} bytes but {received} came back"
        )));
    }
    Ok(())
}
