//! Echo server: every stream accepted on the queue gets back what it sends.
//!
//! `cargo run --example echo_server [QUEUE]` (default queue `echo`;
//! broker from `AMQP_URL`, default the local one).

use amqp_stream::Listener;
use std::net::Shutdown;

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let queue = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "echo".to_string());

    let listener = Listener::bind(&url, &queue)?;
    log::info!("echo server listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let result = (|| -> std::io::Result<u64> {
                let mut reader = stream.try_clone()?;
                let mut writer = stream;
                let echoed = std::io::copy(&mut reader, &mut writer)?; // until EOF
                writer.shutdown(Shutdown::Write)?;
                Ok(echoed)
            })();
            match result {
                Ok(bytes) => log::info!("{peer}: echoed {bytes} bytes"),
                Err(err) => log::warn!("{peer}: {err}"),
            }
        });
    }
    Ok(())
}
