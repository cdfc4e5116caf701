//! The demultiplexer: the one thread of an AMQP connection that takes the
//! deliveries of its queue and the confirms and returns of its publishing
//! channel, and hands each to the stream it belongs to.

use super::budget::{ANSWERS_PER_SECOND, AnswerBudgets, Budget, FORMER_PEER_ANSWERS_PER_SECOND};
use super::routes::{AnswerWait, Route, Routes};
use crate::error::Error;
use crate::lock::lock;
use crate::protocol::handshake;
use amiquip::{Channel, Confirm, ConsumerMessage, ConsumerOptions, QueueDeclareOptions, Return};
use crossbeam_channel::{Receiver, Sender, never, select};
use log::debug;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// What the demultiplexer asks of the transport it runs for
/// ([`Mux`](super::Mux)), which it holds weakly: its confirms' book and
/// its answers to what nobody on the connection asked for.
pub(super) trait Owner: Send + Sync + 'static {
    /// A broker's confirm, as the confirms of each stream it covers.
    fn confirmed(&self, confirm: Confirm) -> Vec<(Arc<str>, Confirm)>;

    /// Answers a frame for a stream nobody here holds, within `budgets`.
    fn answer_stray(&self, delivery: &amiquip::Delivery, budgets: &mut AnswerBudgets);

    /// An older listener's answer that names no stream came.
    fn untied_answer_came(&self, answer: handshake::Untied<'_>);

    /// When the next claimed answer naming no stream is due to be ended.
    fn untied_next_due(&self) -> Option<Instant>;

    /// Ends the claimed answers naming no stream that are due by `now`.
    fn end_due_untied(&self, now: Instant);
}

/// What the demultiplexer reads besides its consumer.
pub(super) struct Feeds {
    pub(super) queue: String,
    pub(super) routes: Arc<Routes>,
    pub(super) confirms: Receiver<Confirm>,
    pub(super) returns: Receiver<Return>,
    /// A stream claimed an answer naming no stream (see `untied`).
    pub(super) untied_claims: Receiver<()>,
}

/// Declares and consumes the connection's queue on `channel`, says so on
/// `ready`, then hands out what arrives until the publishing channel
/// closes (its confirms and returns must be received for as long as it is
/// open: amiquip fails the whole connection otherwise).
pub(super) fn run(
    channel: Channel,
    feeds: Feeds,
    mux: Weak<impl Owner>,
    ready: Sender<Result<(), Error>>,
) {
    let consumer = match consume(&channel, &feeds.queue) {
        Ok(consumer) => consumer,
        Err(err) => {
            let _ = ready.send(Err(err));
            end(&feeds.routes);
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut deliveries = Some(consumer.receiver().clone());
    // What the connection answers that nobody on it asked for.
    let mut answers = AnswerBudgets {
        strangers: Budget::new(ANSWERS_PER_SECOND, Instant::now()),
        former_peers: Budget::new(FORMER_PEER_ANSWERS_PER_SECOND, Instant::now()),
    };
    let nothing = never();
    let mut untied_timer = UntiedTimer::default();
    loop {
        select! {
            recv(deliveries.as_ref().unwrap_or(&nothing)) -> message => match message {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    let Some(to) = delivery.properties.correlation_id().clone() else {
                        match handshake::untied_answer(&delivery.body, &delivery.properties) {
                            Some(answer) => {
                                // Recorded before any stream can vouch for it.
                                if let Some(mux) = mux.upgrade() {
                                    mux.untied_answer_came(answer);
                                }
                                untied_timer.refresh(&mux);
                                let waiting = hand_untied_answer(&feeds.routes, &delivery);
                                debug!(
                                    "{:?}: a version-{} answer naming no stream (stream queue \
                                     {:?}) to a version-3 SYN, handed to {waiting} waiting \
                                     streams",
                                    feeds.queue, answer.version, answer.server_queue
                                );
                            }
                            None => debug!("{:?}: dropped a message that names no stream", feeds.queue),
                        }
                        continue;
                    };
                    let stray = {
                        let mut streams = lock(&feeds.routes.streams);
                        match streams.get_mut(to.as_str()) {
                            Some(route) => {
                                route.answer = match route.answer {
                                    AnswerWait::TookUntied => AnswerWait::OwnCameAfterUntied,
                                    AnswerWait::Waiting => AnswerWait::Settled,
                                    settled => settled,
                                };
                                hand_over(route, delivery);
                                None
                            }
                            None => Some(delivery),
                        }
                    };
                    if let Some(delivery) = stray {
                        debug!("{:?}: a frame for stream {to:?}, which is not here", feeds.queue);
                        if let Some(mux) = mux.upgrade() {
                            mux.answer_stray(&delivery, &mut answers);
                        }
                    }
                }
                Ok(other) => {
                    debug!("{:?}: the consumer ended: {other:?}", feeds.queue);
                    deliveries = None;
                    end(&feeds.routes);
                }
                Err(_) => {
                    deliveries = None;
                    end(&feeds.routes);
                }
            },
            recv(feeds.untied_claims) -> _ => untied_timer.refresh(&mux),
            recv(untied_timer.timer) -> _ => {
                if let Some(mux) = mux.upgrade() {
                    mux.end_due_untied(Instant::now());
                }
                untied_timer.fired(&mux);
            },
            recv(feeds.returns) -> returned => match returned {
                Ok(returned) => route_return(&feeds.routes, returned),
                Err(_) => break,
            },
            recv(feeds.confirms) -> confirm => match confirm {
                Ok(confirm) => {
                    // A message comes back before it is confirmed: the
                    // returns waiting go first.
                    while let Ok(returned) = feeds.returns.try_recv() {
                        route_return(&feeds.routes, returned);
                    }
                    let Some(mux) = mux.upgrade() else { continue };
                    let confirmed = mux.confirmed(confirm);
                    let streams = lock(&feeds.routes.streams);
                    for (stream, confirm) in confirmed {
                        if let Some(route) = streams.get(&stream) {
                            let refused = matches!(confirm, amiquip::Confirm::Nack(_));
                            let _ = route.confirms.send(confirm);
                            route.bell.confirmed(refused);
                        }
                    }
                }
                Err(_) => break,
            },
        }
    }
    end(&feeds.routes);
    drop(consumer);
    let _ = channel.close();
}

/// The demultiplexer's timer for the next claimed answer naming no
/// stream to end (see `untied`).
struct UntiedTimer {
    due: Option<Instant>,
    timer: Receiver<Instant>,
}

impl Default for UntiedTimer {
    fn default() -> UntiedTimer {
        UntiedTimer {
            due: None,
            timer: never(),
        }
    }
}

impl UntiedTimer {
    /// Sets the timer for the claim due next, if that changed.
    fn refresh(&mut self, mux: &Weak<impl Owner>) {
        let due = mux.upgrade().and_then(|mux| mux.untied_next_due());
        if due != self.due {
            self.due = due;
            self.timer = due.map_or_else(never, crossbeam_channel::at);
        }
    }

    /// The timer went off (and goes off no more): set it again.
    fn fired(&mut self, mux: &Weak<impl Owner>) {
        self.due = None;
        self.timer = never();
        self.refresh(mux);
    }
}

/// Hands a delivery to its stream, unless the stream holds more than its
/// window allows (a peer that ignores it): then the delivery is dropped
/// and the stream aborted, once.
fn hand_over(route: &mut Route, delivery: amiquip::Delivery) {
    if route.overran {
        return;
    }
    let size = delivery.body.len() as u64;
    let held = route.held.handed(size);
    if held > route.limit {
        route.held.taken(size);
        route.overran = true;
        (route.abort)(format!(
            "the peer ignored flow control: {held} bytes (with the messages' cost) arrived \
             that the stream had not taken, more than its window allows ({})",
            route.limit
        ));
        return;
    }
    let _ = route.deliveries.send(ConsumerMessage::Delivery(delivery));
}

/// Hands a SYN-ACK that names no stream (from a version-1 listener, or a
/// version-2 one built before version 3: see `handshake::untied_answer`)
/// to every stream waiting for the answer to its version-3 SYN that can
/// ask again as version 2; returns how many. It answers one of them, and
/// nothing tells which: each waiting stream that believes it (see
/// `vouched_for`) takes it as a refusal of version 3 and asks again as
/// version 2 at once, rather than wait out its handshake timeout, and
/// says so (`Mux::untied_answer_believed`), so that the older listener's
/// stream for its SYN is ended. A stream whose own (version-3) answer was
/// still on its way then leaves that answer unclaimed, and the listener's
/// stream is reset as stray; the connect itself succeeds.
fn hand_untied_answer(routes: &Routes, delivery: &amiquip::Delivery) -> usize {
    let mut streams = lock(&routes.streams);
    let mut handed = 0;
    for route in streams
        .values_mut()
        .filter(|route| route.answer == AnswerWait::Waiting)
    {
        route.answer = AnswerWait::TookUntied;
        hand_over(route, delivery.clone());
        handed += 1;
    }
    handed
}

/// Hands a returned message to the stream that published it.
fn route_return(routes: &Routes, returned: Return) {
    let from = returned.properties.app_id().clone();
    let streams = lock(&routes.streams);
    match from.as_deref().and_then(|from| streams.get(from)) {
        Some(Route { returns, bell, .. }) => {
            let _ = returns.send(returned);
            bell.ring();
        }
        None => debug!(
            "a message to {:?} came back for a stream not here: {}",
            returned.routing_key, returned.reply_text
        ),
    }
}

/// The connection's consumer is gone: every stream loses its feeds (and
/// learns it from their disconnection) and none registers any more.
fn end(routes: &Routes) {
    let mut streams = lock(&routes.streams);
    routes.ended.store(true, Ordering::SeqCst);
    // Their feeds disconnect: each engine hears of it.
    let bells: Vec<_> = streams.drain().map(|(_, route)| route.bell).collect();
    drop(streams);
    for bell in bells {
        bell.ring();
    }
}

fn consume<'a>(channel: &'a Channel, queue: &str) -> Result<amiquip::Consumer<'a>, Error> {
    let what = |action: &str| format!("{action} the connection's stream queue {queue:?}");
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: false,
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        )
        .map_err(|e| Error::broker(what("declaring"), e))?;
    channel
        .basic_consume(
            queue,
            ConsumerOptions {
                no_ack: true,
                exclusive: true,
                ..ConsumerOptions::default()
            },
        )
        .map_err(|e| Error::broker(what("consuming"), e))
}
