//! The engine: one thread per AMQP connection that runs all of its
//! version-3 streams once they are connected, in place of a worker thread
//! per stream.
//!
//! A stream's worker is the same state as a thread would run
//! ([`Worker`]); the engine keeps them by stream id and, woken by a
//! stream's bell (rung by the user's handles after every message to the
//! worker, and by the demultiplexer after every confirm or return),
//! handles whatever waits for that stream without blocking
//! ([`Worker::poll`]). A tick runs keepalives and closing deadlines. A
//! finished worker is dropped, which is how the user's handles learn it
//! is gone.

use super::connected::{Step, Worker};
use super::publisher::SharedChannel;
use crate::error::Error;
use crate::mux::Mux;
use crate::shared::Bell;
use crossbeam_channel::{Receiver, Sender, select, tick, unbounded};
use log::debug;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the engine looks at every stream: keepalives, closing
/// deadlines, and disconnections nobody rang for.
const TICK: Duration = Duration::from_millis(50);

/// A connected stream for the engine to run.
pub(crate) struct Adopted {
    worker: Box<Worker<SharedChannel>>,
    id: Arc<str>,
    name: String,
    mux: Weak<Mux>,
}

/// The handle to a connection's engine thread.
pub(crate) struct Engine {
    adopt: Sender<Adopted>,
    bells: Sender<Arc<str>>,
}

impl Engine {
    /// Starts the engine's thread; it ends once every handle and bell is
    /// gone.
    pub(crate) fn start() -> Result<Engine, Error> {
        let (adopt, adopted) = unbounded();
        let (bells, rung) = unbounded();
        std::thread::Builder::new()
            .name("amqp-stream-engine".to_string())
            .spawn(move || run(adopted, rung))
            .map_err(|e| Error::InvalidArgument(format!("cannot start a thread: {e}")))?;
        Ok(Engine { adopt, bells })
    }

    /// The bell of stream `id`.
    pub(crate) fn bell(&self, id: Arc<str>) -> Bell {
        Bell {
            engine: self.bells.clone(),
            id,
        }
    }

    /// Hands the engine a connected stream's worker.
    pub(super) fn adopt(
        &self,
        worker: Worker<SharedChannel>,
        id: Arc<str>,
        name: String,
        mux: &Arc<Mux>,
    ) {
        let _ = self.adopt.send(Adopted {
            worker: Box::new(worker),
            id,
            name,
            mux: Arc::downgrade(mux),
        });
    }
}

fn run(adopted: Receiver<Adopted>, rung: Receiver<Arc<str>>) {
    let mut streams: HashMap<Arc<str>, Adopted> = HashMap::new();
    let ticker = tick(TICK);
    let mut adopting = true;
    let nothing = crossbeam_channel::never();
    loop {
        select! {
            recv(if adopting { &adopted } else { &nothing }) -> stream => match stream {
                Ok(stream) => {
                    let id = Arc::clone(&stream.id);
                    streams.insert(Arc::clone(&id), stream);
                    poll(&mut streams, &id, |worker| worker.poll());
                }
                // The connection's transport is gone: run what is left.
                Err(_) => adopting = false,
            },
            recv(rung) -> id => match id {
                Ok(id) => poll(&mut streams, &id, |worker| worker.poll()),
                Err(_) => return,
            },
            recv(ticker) -> _ => {
                let now = Instant::now();
                let ids: Vec<Arc<str>> = streams.keys().cloned().collect();
                for id in ids {
                    poll(&mut streams, &id, |worker| worker.tick(now));
                }
                if !adopting && streams.is_empty() {
                    return;
                }
            },
        }
    }
}

/// Runs `step` on stream `id`'s worker, if the engine has it, and lets a
/// finished one go.
fn poll(
    streams: &mut HashMap<Arc<str>, Adopted>,
    id: &str,
    step: impl FnOnce(&mut Worker<SharedChannel>) -> Step,
) {
    let Some(stream) = streams.get_mut(id) else {
        return;
    };
    if step(&mut stream.worker) == Step::Running {
        return;
    }
    let stream = streams.remove(id).expect("it was there");
    let Adopted {
        mut worker,
        id,
        name,
        mux,
    } = stream;
    // No frame reaches it from now on (the connection answers later ones
    // with a reset); data that came in after its last handle went is
    // answered so too.
    if let Some(mux) = mux.upgrade() {
        mux.unregister(&id);
    }
    worker.reset_if_data_came_after_close();
    // Its handles learn it is gone as it drops.
    drop(worker);
    debug!("stream {name} closed");
}
