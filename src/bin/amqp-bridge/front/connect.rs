//! `amqp-bridge connect`: standard input and output joined to one stream,
//! for `ssh -o ProxyCommand=...` and shell pipes.
//!
//! Every byte goes on as soon as it arrives: standard output is written
//! unbuffered (a line-buffered one held an SSH key exchange, which has no
//! newline, until the stream ended). The end of standard input is the
//! stream's FIN; a failure resets the stream.

use crate::args::{queue_name, seconds};
use crate::carry::address::BrokerAddress;
use crate::carry::broker_stream::{self, BrokerStream};
use crate::carry::splice::Duplex;
use crate::fatal::Fatal;
use crate::keys::options::ClientKeyArgs;
use amqp_stream::Connector;
use clap::Args;
use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};
use log::debug;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How much one read takes, from standard input or from the stream.
const CHUNK: usize = 64 * 1024;
/// How long a write into the stream blocks before it looks whether the
/// program is ending.
const WRITE_POLL: Duration = Duration::from_millis(200);
/// How long ending waits for the copying threads to let go of the stream.
const LET_GO: Duration = Duration::from_secs(5);

/// What the copying threads and the signal handler report.
enum Event {
    /// Standard input ended and the stream's FIN is sent (bytes sent).
    InputDone(Result<u64, Failure>),
    /// The far end's FIN came, everything before it is written out.
    OutputDone(Result<u64, Failure>),
    /// SIGINT, SIGTERM, SIGHUP or SIGQUIT.
    Signal(i32),
}

/// Which end failed, and how.
enum Failure {
    Stream(io::Error),
    Stdin(io::Error),
    Stdout(io::Error),
}

/// `connect`'s options.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The queue that serves the far end
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    /// How long to wait for the server's answer
    #[arg(long, value_name = "SECONDS", default_value = "30",
          value_parser = seconds, allow_negative_numbers = true)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
}

/// Copies standard input into a stream to `args.queue` and the stream onto
/// standard output, until the far end closes, a failure, or a signal.
pub fn run(broker: &BrokerAddress, args: &ConnectArgs) -> Result<(), Fatal> {
    let started = Instant::now();
    let secure = match args.keys.live()? {
        Some(live) => Some(live.current().0.map_err(|e| Fatal::usage(e.to_string()))?),
        None => None,
    };
    let connector = broker
        .resolve()
        .and_then(|url| Connector::open(&url))
        .map_err(Fatal::broker)?;
    let stream = connector
        .connect_timeout(&args.queue, args.connect_timeout)
        .map_err(Fatal::connect)?;
    let stream = broker_stream::connect(stream, secure.as_deref())
        .map_err(|err| Fatal::runtime(format!("queue {:?}: {err}", args.queue)))?;
    debug!("connected to queue {:?}", args.queue);
    let queue = args.queue.clone();
    let runtime = |e: io::Error| Fatal::runtime(e.to_string());

    let (events_tx, events) = unbounded();
    // SIGUSR1 and SIGUSR2 would kill it (and cut standard output short
    // with a clean end): taken over, and ignored.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]).map_err(runtime)?;
    let signal_tx = events_tx.clone();
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let ending = signals
                .forever()
                .find(|&signal| !matches!(signal, SIGUSR1 | SIGUSR2));
            if let Some(signal) = ending {
                let _ = signal_tx.send(Event::Signal(signal));
            }
        })
        .map_err(runtime)?;

    let stopping = Arc::new(AtomicBool::new(false));
    let input_ended = Arc::new(AtomicBool::new(false));
    // Chunks read from standard input and not yet all written.
    let pending = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop) = bounded::<()>(0);
    let stdin = File::from(io::stdin().as_fd().try_clone_to_owned().map_err(runtime)?);
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned().map_err(runtime)?);

    // Standard input is read on a thread of its own that holds no handle
    // to the stream: a read blocked there cannot keep the stream open.
    let (chunks_tx, chunks) = bounded(1);
    let read_pending = Arc::clone(&pending);
    std::thread::Builder::new()
        .name("stdin".to_string())
        .spawn(move || read_input(stdin, &chunks_tx, &read_pending))
        .map_err(runtime)?;

    // Each copying thread holds a sender until it ends.
    let (done_tx, let_go) = bounded::<()>(0);
    {
        let done = done_tx.clone();
        let (stream, events_tx, stopping) = (
            stream.duplicate().map_err(runtime)?,
            events_tx.clone(),
            Arc::clone(&stopping),
        );
        let (input_ended, pending) = (Arc::clone(&input_ended), Arc::clone(&pending));
        std::thread::Builder::new()
            .name("to-stream".to_string())
            .spawn(move || {
                let sent = send(&stream, &chunks, &stop, &stopping, &input_ended, &pending);
                if let Some(sent) = sent {
                    let _ = events_tx.send(Event::InputDone(sent));
                }
                drop((stream, done));
            })
            .map_err(runtime)?;
    }
    {
        let (stream, events_tx) = (stream.duplicate().map_err(runtime)?, events_tx.clone());
        let stopping = Arc::clone(&stopping);
        std::thread::Builder::new()
            .name("from-stream".to_string())
            .spawn(move || {
                let received = receive(&stream, stdout);
                if !stopping.load(Ordering::SeqCst) {
                    let _ = events_tx.send(Event::OutputDone(received));
                }
                drop((stream, done_tx));
            })
            .map_err(runtime)?;
    }
    drop(events_tx);

    let outcome = wait_for_the_end(&events, &input_ended, &pending, &queue);
    // Ending: both copying threads let go of the stream, then it closes
    // (reset when the transfer did not end normally) and, with it, the
    // broker connection.
    stopping.store(true, Ordering::SeqCst);
    if outcome.abort {
        stream.abort();
    }
    drop(stop_tx);
    stream.stop_reading();
    // Disconnects once both threads have ended.
    let _ = let_go.recv_timeout(LET_GO);
    drop(stream);
    drop(connector);
    debug!(
        "queue {queue:?} closed after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    outcome.result
}

/// How the program ends: its result, and whether the stream is reset.
struct Outcome {
    result: Result<(), Fatal>,
    abort: bool,
}

/// Waits until the far end has closed and everything is written out, a
/// failure, or a signal.
fn wait_for_the_end(
    events: &Receiver<Event>,
    input_ended: &AtomicBool,
    pending: &AtomicUsize,
    queue: &str,
) -> Outcome {
    let failed = |failure: Failure| {
        let message = match failure {
            Failure::Stream(err) => format!("queue {queue:?}: {err}"),
            Failure::Stdin(err) => format!("reading standard input: {err}"),
            Failure::Stdout(err) => format!("writing standard output: {err}"),
        };
        Outcome {
            result: Err(Fatal::runtime(message)),
            abort: true,
        }
    };
    loop {
        match events.recv() {
            Ok(Event::InputDone(Ok(sent))) => debug!("standard input ended: {sent} bytes sent"),
            // The far end has closed its side. If standard input is still
            // open the program ends anyway, as `nc -N` would: normally if
            // all that was read from it is sent, else with a reset (the
            // far end must not take a cut-off input for all of it).
            Ok(Event::OutputDone(Ok(received))) => {
                debug!("the far end closed: {received} bytes received");
                return Outcome {
                    result: Ok(()),
                    abort: pending.load(Ordering::SeqCst) > 0,
                };
            }
            Ok(Event::InputDone(Err(failure)) | Event::OutputDone(Err(failure))) => {
                return failed(failure);
            }
            // Stopped: abortive unless all our input had been sent.
            Ok(Event::Signal(signal)) => {
                debug!("signal {signal}: stopping");
                return Outcome {
                    result: Ok(()),
                    abort: !input_ended.load(Ordering::SeqCst),
                };
            }
            Err(_) => {
                return failed(Failure::Stream(io::Error::other(
                    "the copying threads ended unexpectedly",
                )));
            }
        }
    }
}

/// Reads standard input in chunks until its end (the channel then
/// disconnects) or a failure (sent as the last item).
fn read_input(mut stdin: File, chunks: &Sender<io::Result<Vec<u8>>>, pending: &AtomicUsize) {
    let mut buf = vec![0; CHUNK];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                pending.fetch_add(1, Ordering::SeqCst);
                if chunks.send(Ok(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                let _ = chunks.send(Err(err));
                return;
            }
        }
    }
}

/// Writes what standard input gives into the stream, then its FIN;
/// `None` when stopped first.
fn send(
    mut stream: &BrokerStream,
    chunks: &Receiver<io::Result<Vec<u8>>>,
    stop: &Receiver<()>,
    stopping: &AtomicBool,
    input_ended: &AtomicBool,
    pending: &AtomicUsize,
) -> Option<Result<u64, Failure>> {
    if let Err(err) = stream.set_write_limit(Some(WRITE_POLL)) {
        return Some(Err(Failure::Stream(err)));
    }
    let mut sent = 0;
    loop {
        let chunk = select! {
            recv(chunks) -> chunk => chunk,
            recv(stop) -> _ => return None,
        };
        let data = match chunk {
            Ok(Ok(data)) => data,
            Ok(Err(err)) => return Some(Err(Failure::Stdin(err))),
            Err(_) => break,
        };
        let mut rest = &data[..];
        while !rest.is_empty() {
            match stream.write(rest) {
                Ok(n) => {
                    rest = &rest[n..];
                    sent += n as u64;
                }
                Err(err)
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                {
                    if stopping.load(Ordering::SeqCst) {
                        return None;
                    }
                }
                Err(err) => return Some(Err(Failure::Stream(err))),
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
    input_ended.store(true, Ordering::SeqCst);
    // Without a write limit: it waits for the broker's confirms.
    let fin = stream.finish();
    Some(fin.map(|()| sent).map_err(Failure::Stream))
}

/// Copies the stream onto standard output, each piece as it arrives,
/// until the far end's FIN.
fn receive(mut stream: &BrokerStream, mut stdout: File) -> Result<u64, Failure> {
    let mut buf = vec![0; CHUNK];
    let mut received = 0;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(Failure::Stream(err)),
        };
        stdout.write_all(&buf[..n]).map_err(Failure::Stdout)?;
        received += n as u64;
    }
}
