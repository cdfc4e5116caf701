//! A port forwarder through the broker, in both directions.
//!
//! Expose a local TCP service on a queue (run it where the service is):
//!     cargo run --example tcp_over_amqp -- serve QUEUE 127.0.0.1:22
//! Reach it from anywhere that sees the broker:
//!     cargo run --example tcp_over_amqp -- forward 127.0.0.1:2222 QUEUE
//! then `ssh -p 2222 127.0.0.1`. Broker from `AMQP_URL`. Wrong arguments:
//! the usage, exit code 2. (It carries half-closes but, kept short, not
//! resets: `amqp-bridge` passes a reset on as a reset.)

use amqp_stream::{Connector, Stream};
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;

/// Copies both ways until each side has sent EOF, carrying the half-close.
fn pipe(tcp: TcpStream, stream: Stream) -> io::Result<()> {
    let (mut tcp_in, mut stream_out) = (tcp.try_clone()?, stream.try_clone()?);
    let upstream = thread::spawn(move || -> io::Result<u64> {
        let n = io::copy(&mut tcp_in, &mut stream_out)?;
        stream_out.shutdown(Shutdown::Write)?;
        Ok(n)
    });
    let (mut stream_in, mut tcp_out) = (stream, tcp);
    let down = io::copy(&mut stream_in, &mut tcp_out)?;
    tcp_out.shutdown(Shutdown::Write)?;
    let up = upstream.join().expect("copy thread panicked")?;
    log::info!("closed: {up} bytes up, {down} bytes down");
    Ok(())
}

const USAGE: &str = "usage: tcp_over_amqp serve QUEUE HOST:PORT | forward ADDR:PORT QUEUE";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The command line first: a wrong one gets the usage, before the
    // broker is contacted.
    let (serve, queue, address) = match args.as_slice() {
        ["serve", queue, target] => (true, *queue, *target),
        ["forward", listen, queue] => (false, *queue, *listen),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let run = if serve {
        serve_queue(&url, queue, address)
    } else {
        forward_port(&url, address, queue)
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcp_over_amqp: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Connects every stream arriving on `queue` to `target`.
fn serve_queue(url: &str, queue: &str, target: &str) -> io::Result<()> {
    let listener = Connector::open(url)?.bind(queue)?;
    for stream in listener.incoming() {
        let stream = stream?;
        let target = target.to_string();
        thread::spawn(move || match TcpStream::connect(&target) {
            Ok(tcp) => pipe(tcp, stream).unwrap_or_else(|e| log::warn!("{e}")),
            Err(e) => log::warn!("cannot reach {target}: {e}"),
        });
    }
    Ok(())
}

/// Carries every TCP client of `listen` to `queue`.
fn forward_port(url: &str, listen: &str, queue: &str) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let connector = Connector::open(url)?;
    for tcp in listener.incoming() {
        let tcp = tcp?;
        let stream = connector.connect(queue)?;
        thread::spawn(move || pipe(tcp, stream).unwrap_or_else(|e| log::warn!("{e}")));
    }
    Ok(())
}
