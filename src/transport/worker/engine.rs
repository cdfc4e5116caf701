//! The engine: one thread per AMQP connection that runs all of its
//! version-3 streams once they are connected, in place of a worker thread
//! per stream.
//!
//! A stream's worker is the same state as a thread would run
//! ([`Worker`]); it lives in a [`Slot`] that the engine and the stream's
//! own handles share. Whoever rings a stream's [`Bell`] marks it pending;
//! the demultiplexer (after every delivery, confirm or return) then wakes
//! the engine, while a user's handle (after a write, flush, shutdown, read
//! that frees credit, or drop) runs the worker in its own thread
//! ([`Worker::poll`]), so a write is published by the writer's thread
//! with no hop through the engine. Whoever holds the worker polls it until
//! nothing is pending; one that finds it held leaves the work to the
//! holder, which looks again after letting go. A tick runs keepalives and
//! closing deadlines. A finished worker is dropped by the engine, which is
//! how the user's handles learn it is gone.

use super::connected::{Step, Worker};
use super::publisher::SharedChannel;
use crate::error::Error;
use crate::lock::lock;
use crate::session::carrier::Carrier;
use crate::transport::mux::{Mux, StreamWake};
use crossbeam_channel::{Receiver, Sender, select, tick, unbounded};
use log::debug;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::{Duration, Instant};

/// How often the engine looks at every stream: keepalives, closing
/// deadlines, and disconnections nobody rang for.
const TICK: Duration = Duration::from_millis(50);

/// Past this many body bytes published on the connection and not yet
/// confirmed, a handle leaves its stream's work to the engine instead of
/// publishing in its own thread: a broker that stops reading (a memory or
/// disk alarm, a stalled link) makes amiquip's `basic_publish` block once
/// its output buffer is full (16 MiB), and a handle blocked there would
/// hold the connection's publishing lock past its write timeout or
/// linger. Well below that mark, publishing cannot block.
const HANDLE_PUBLISH_LIMIT: u64 = 4 * 1024 * 1024;

/// A version-3 stream's worker, where the engine and the stream's handles
/// both reach it.
#[derive(Default)]
pub(crate) struct Slot {
    /// The worker, once adopted; taken out by the engine when finished.
    worker: Mutex<Option<Box<Worker<SharedChannel>>>>,
    /// Something waits for the worker. Set before every ring; cleared by
    /// whoever polls it.
    pending: AtomicBool,
    /// The worker has finished: nobody polls it again, the engine lets it
    /// go.
    finished: AtomicBool,
    /// The worker is in the slot (or was): from then on a ring from a
    /// handle needs no engine.
    adopted: AtomicBool,
    /// The worker waits for a confirm (held-back data, a flush, closing):
    /// only then does a broker's ack wake the engine. Other acks wait in
    /// the stream's channel for its next poll (a handle's, or the tick's).
    wants_confirms: AtomicBool,
}

/// What [`Slot::run`] found.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    /// The worker runs on (or is not adopted yet, or another thread holds
    /// it and looks again before it lets go).
    Running,
    /// A handle's run left work for the engine: the connection had too
    /// much unconfirmed, or more was rung than the one poll it makes.
    Leftover,
    /// The worker has finished: the engine lets it go.
    Finished,
}

/// A handle's claim on what its thread may publish: the connection's
/// unconfirmed bytes and the claims of the handles publishing now stay
/// under [`HANDLE_PUBLISH_LIMIT`] together.
struct Claim<'a> {
    unconfirmed: &'a AtomicU64,
    claimed: &'a AtomicU64,
}

/// More than a poll takes from the write buffer and `unsent` when it
/// looks: a write of another handle of the stream that lands meanwhile,
/// window reports, a FIN.
const CLAIM_SLACK: u64 = 256 * 1024;

impl Slot {
    /// Runs [`Worker::tick`] (when `tick` says it is time) and then
    /// [`Worker::poll`] while something is pending, unless another thread
    /// holds the worker: that one looks at `pending` again after letting
    /// go, so no ring is lost.
    ///
    /// A handle's run (`claim` set) makes at most one poll, and none when
    /// what it could publish does not fit under the connection's limit:
    /// then, or when more was rung meanwhile, it leaves the rest to the
    /// engine ([`Ran::Leftover`]).
    fn run(&self, tick: Option<Instant>, claim: Option<Claim<'_>>) -> Ran {
        let mut tick = tick;
        loop {
            if self.finished.load(Ordering::SeqCst) {
                return Ran::Finished;
            }
            let mut held = match self.worker.try_lock() {
                Ok(held) => held,
                Err(TryLockError::WouldBlock) => return Ran::Running,
                // A poll panicked: the worker's state is unknown, so it is
                // let go (its handles then fail) rather than left stuck.
                Err(TryLockError::Poisoned(_)) => {
                    self.finished.store(true, Ordering::SeqCst);
                    return Ran::Finished;
                }
            };
            if self.finished.load(Ordering::SeqCst) {
                return Ran::Finished;
            }
            let Some(worker) = held.as_mut() else {
                // Not adopted yet: adopting polls it.
                return Ran::Running;
            };
            let mut step = match tick.take() {
                Some(now) => worker.tick(now),
                None => Step::Running,
            };
            if let Some(claim) = &claim {
                let need =
                    (worker.unsent.len() + worker.ends.shared.written.len()) as u64 + CLAIM_SLACK;
                let before = claim.claimed.fetch_add(need, Ordering::SeqCst);
                let fits = before + need + claim.unconfirmed.load(Ordering::SeqCst)
                    <= HANDLE_PUBLISH_LIMIT;
                if fits && self.pending.swap(false, Ordering::SeqCst) {
                    step = worker.poll();
                }
                claim.claimed.fetch_sub(need, Ordering::SeqCst);
                if step == Step::Running {
                    if !self.note_wants_confirms(worker) {
                        self.pending.store(true, Ordering::SeqCst);
                    }
                    drop(held);
                    if !fits || self.pending.load(Ordering::SeqCst) {
                        return Ran::Leftover;
                    }
                    return Ran::Running;
                }
            }
            while step == Step::Running && self.pending.swap(false, Ordering::SeqCst) {
                step = worker.poll();
            }
            if step == Step::Running && !self.note_wants_confirms(worker) {
                // An ack came just as the worker started waiting for one,
                // and its ring may have been skipped: look again.
                self.pending.store(true, Ordering::SeqCst);
                continue;
            }
            if step == Step::Finished {
                self.finished.store(true, Ordering::SeqCst);
                return Ran::Finished;
            }
            drop(held);
            // A ring that came while we held the worker found it busy.
            if !self.pending.load(Ordering::SeqCst) {
                return Ran::Running;
            }
        }
    }
}

impl Slot {
    /// Records whether `worker` waits for a confirm; `false` when it does
    /// and one is already in its channel. (The demultiplexer sends a
    /// confirm and then reads the mark; this writes the mark and then
    /// looks at the channel: with a fence on each side, one of the two
    /// sees the other.)
    fn note_wants_confirms(&self, worker: &Worker<SharedChannel>) -> bool {
        let wants = waits_for_confirms(worker);
        self.wants_confirms.store(wants, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        !wants || worker.publisher.confirms.is_empty()
    }
}

/// Whether a confirm would let `worker` do something: send data held
/// back behind an unconfirmed message, answer a flush, send a held-back
/// FIN, or finish closing.
fn waits_for_confirms(worker: &Worker<SharedChannel>) -> bool {
    !worker.unsent.is_empty()
        || !worker.publisher.flushes.is_empty()
        || worker.state.waits_for_confirms()
}

/// Tells whoever runs a version-3 stream that something waits for it;
/// rung after every message to the stream's worker.
#[derive(Clone)]
pub(crate) struct Bell {
    engine: Sender<Arc<str>>,
    id: Arc<str>,
    slot: Arc<Slot>,
    /// The connection's body bytes published and not yet confirmed.
    unconfirmed: Arc<AtomicU64>,
    /// What the connection's handles publishing now have claimed.
    claimed: Arc<AtomicU64>,
}

impl Bell {
    /// Wakes the engine for this stream (the demultiplexer's ring: its
    /// thread must not wait for a stream's publishing).
    pub(crate) fn ring(&self) {
        self.slot.pending.store(true, Ordering::SeqCst);
        let _ = self.engine.send(Arc::clone(&self.id));
    }

    /// After a broker's confirm for the stream reached its channel: wakes
    /// the engine for a refusal, or when the worker waits for a confirm.
    pub(crate) fn confirmed(&self, refused: bool) {
        fence(Ordering::SeqCst);
        if refused || self.slot.wants_confirms.load(Ordering::SeqCst) {
            self.ring();
        }
    }

    /// Runs the stream's worker in the caller's thread (a user's handle
    /// after a write, flush, shutdown, read or drop), or leaves the work
    /// to the thread that holds it. The engine is woken only to let a
    /// finished worker go, or to adopt it.
    ///
    /// A handle publishes only while the connection's unconfirmed bytes
    /// and what the handles publishing now may add stay under
    /// [`HANDLE_PUBLISH_LIMIT`]; past it the engine publishes, and the
    /// handle waits with its own deadlines.
    pub(crate) fn run_here(&self) {
        self.slot.pending.store(true, Ordering::SeqCst);
        let claim = Claim {
            unconfirmed: &self.unconfirmed,
            claimed: &self.claimed,
        };
        match self.slot.run(None, Some(claim)) {
            // A finished worker is the engine's to let go.
            Ran::Finished => {
                let _ = self.engine.send(Arc::clone(&self.id));
            }
            Ran::Leftover => self.ring(),
            // Before adoption the engine does not know the stream
            // (adopting polls it).
            Ran::Running => {
                if !self.slot.adopted.load(Ordering::SeqCst) {
                    let _ = self.engine.send(Arc::clone(&self.id));
                }
            }
        }
    }
}

impl Carrier for Bell {
    fn run_here(&self) {
        Bell::run_here(self);
    }

    fn ring(&self) {
        Bell::ring(self);
    }
}

impl StreamWake for Bell {
    fn ring(&self) {
        Bell::ring(self);
    }

    fn confirmed(&self, refused: bool) {
        Bell::confirmed(self, refused);
    }
}

/// A connected stream for the engine to run.
struct Adopted {
    slot: Arc<Slot>,
    id: Arc<str>,
    name: String,
    mux: Weak<Mux>,
}

/// The handle to a connection's engine thread.
pub(crate) struct Engine {
    adopt: Sender<Adopted>,
    bells: Sender<Arc<str>>,
    /// What the connection's handles publishing in their own threads now
    /// have claimed (see [`Bell::run_here`]).
    claimed: Arc<AtomicU64>,
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
        Ok(Engine {
            adopt,
            bells,
            claimed: Arc::default(),
        })
    }

    /// The bell of stream `id` on a connection with `unconfirmed` body
    /// bytes published and not yet confirmed.
    pub(crate) fn bell(&self, id: Arc<str>, unconfirmed: Arc<AtomicU64>) -> Bell {
        Bell {
            engine: self.bells.clone(),
            id,
            slot: Arc::default(),
            unconfirmed,
            claimed: Arc::clone(&self.claimed),
        }
    }

    /// Hands the engine a connected stream's worker; `bell` is the
    /// stream's.
    pub(super) fn adopt(
        &self,
        worker: Worker<SharedChannel>,
        bell: &Bell,
        name: String,
        mux: &Arc<Mux>,
    ) {
        *lock(&bell.slot.worker) = Some(Box::new(worker));
        bell.slot.adopted.store(true, Ordering::SeqCst);
        let _ = self.adopt.send(Adopted {
            slot: Arc::clone(&bell.slot),
            id: Arc::clone(&bell.id),
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
                    stream.slot.pending.store(true, Ordering::SeqCst);
                    streams.insert(Arc::clone(&id), stream);
                    poll(&mut streams, &id, None);
                }
                // The connection's transport is gone: run what is left.
                Err(_) => adopting = false,
            },
            recv(rung) -> id => match id {
                Ok(id) => poll(&mut streams, &id, None),
                Err(_) => return,
            },
            recv(ticker) -> _ => {
                let now = Instant::now();
                let ids: Vec<Arc<str>> = streams.keys().cloned().collect();
                for id in ids {
                    poll(&mut streams, &id, Some(now));
                }
                if !adopting && streams.is_empty() {
                    return;
                }
            },
        }
    }
}

/// Runs stream `id`'s worker (its tick when `tick` is set, then whatever
/// is pending), if the engine has it, and lets a finished one go.
fn poll(streams: &mut HashMap<Arc<str>, Adopted>, id: &str, tick: Option<Instant>) {
    let Some(stream) = streams.get(id) else {
        return;
    };
    if stream.slot.run(tick, None) != Ran::Finished {
        return;
    }
    let Adopted {
        slot,
        id,
        name,
        mux,
    } = streams.remove(id).expect("it was there");
    let Some(mut worker) = lock(&slot.worker).take() else {
        return;
    };
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
