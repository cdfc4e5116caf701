//! A port forwarder through the broker, in both directions.
//!
//! Expose a local TCP service on a queue (run it where the service is):
//!     cargo run --example tcp_over_amqp -- serve QUEUE 127.0.0.1:22
//! Reach it from anywhere that sees the broker:
//!     cargo run --example tcp_over_amqp -- forward 127.0.0.1:2222 QUEUE
//! then `ssh -p 2222 127.0.0.1`. Broker from `AMQP_URL`.

use amqp_stream::{Connector, Stream};
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
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

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let connector = Connector::open(&url)?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", queue, target] => {
            let listener = connector.bind(queue)?;
            for stream in listener.incoming() {
                let stream = stream?;
                let target = target.to_string();
                thread::spawn(move || match TcpStream::connect(&target) {
                    Ok(tcp) => pipe(tcp, stream).unwrap_or_else(|e| log::warn!("{e}")),
                    Err(e) => log::warn!("cannot reach {target}: {e}"),
                });
            }
        }
        ["forward", listen, queue] => {
            for tcp in TcpListener::bind(listen)?.incoming() {
                let tcp = tcp?;
                let stream = connector.connect(queue)?;
                thread::spawn(move || pipe(tcp, stream).unwrap_or_else(|e| log::warn!("{e}")));
            }
        }
        _ => eprintln!("usage: tcp_over_amqp serve QUEUE HOST:PORT | forward ADDR:PORT QUEUE"),
    }
    Ok(())
}
