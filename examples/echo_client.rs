//! Echo client: sends standard input to the echo server and prints the
//! answer.
//!
//! `echo hello | cargo run --example echo_client [QUEUE]` (default queue
//! `echo`; broker from `AMQP_URL`, default the local one).

use amqp_stream::Stream;
use std::io::{Read, Write};
use std::net::Shutdown;

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let queue = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "echo".to_string());

    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;

    let mut stream = Stream::connect(&url, &queue)?;
    stream.write_all(&input)?;
    stream.shutdown(Shutdown::Write)?; // the server sees EOF and answers
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    std::io::stdout().write_all(&reply)?;
    Ok(())
}
