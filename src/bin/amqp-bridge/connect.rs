//! `amqp-bridge connect`: standard input and output joined to one stream,
//! for `ssh -o ProxyCommand=...` and shell pipes.

use crate::cli::ConnectArgs;
use crate::fatal::Fatal;
use amqp_stream::Connector;
use log::{debug, info};
use std::io::{self, Write};
use std::net::Shutdown;
use std::time::Instant;

/// Copies standard input into a stream to `args.queue` (its end becomes
/// the stream's FIN) and the stream onto standard output, until the far
/// end closes.
pub fn run(url: &str, args: &ConnectArgs) -> Result<(), Fatal> {
    let timeout = args.connect_timeout().map_err(Fatal::usage)?;
    let started = Instant::now();
    let connector = Connector::open(url).map_err(Fatal::broker)?;
    let stream = connector
        .connect_timeout(&args.queue, timeout)
        .map_err(Fatal::connect)?;
    info!("connected to queue {:?}", args.queue);

    let mut to_stream = stream
        .try_clone()
        .map_err(|e| Fatal::runtime(e.to_string()))?;
    let sender = std::thread::Builder::new()
        .name("stdin".to_string())
        .spawn(move || -> io::Result<u64> {
            let sent = io::copy(&mut io::stdin().lock(), &mut to_stream)?;
            to_stream.shutdown(Shutdown::Write)?;
            Ok(sent)
        })
        .map_err(|e| Fatal::runtime(e.to_string()))?;

    let mut stdout = io::stdout().lock();
    let mut from_stream = &stream;
    let received = io::copy(&mut from_stream, &mut stdout)
        .and_then(|n| stdout.flush().map(|()| n))
        .map_err(|e| Fatal::runtime(format!("queue {:?}: {e}", args.queue)))?;
    // The far end has closed its side. If standard input is still open
    // the process ends anyway, as `nc -N` would.
    if sender.is_finished() {
        match sender.join() {
            Ok(Ok(sent)) => debug!("sent {sent} bytes"),
            Ok(Err(err)) => return Err(Fatal::runtime(format!("queue {:?}: {err}", args.queue))),
            Err(_) => return Err(Fatal::runtime("the standard input thread panicked")),
        }
    }
    info!(
        "queue {:?} closed: {received} bytes received in {:.3} s",
        args.queue,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
