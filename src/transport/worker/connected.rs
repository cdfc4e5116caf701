//! A connected stream's worker: the I/O of one stream once its handshake
//! is done. It takes what the user writes and asks for, what the reader
//! reports and the broker's confirms and returns, asks the stream's state
//! machine ([`StreamState`]) what follows, and publishes.
//!
//! One driver runs it: [`Worker::poll`] handles whatever waits for the
//! worker without blocking, [`Worker::tick`] runs the keepalive too when
//! it is due. An engine calls them for the version-3 streams of a
//! connection (see [`engine`](super::engine)); a stream with a thread of
//! its own (versions 1 and 2) calls them from [`Worker::run`], blocking
//! in between until an input is ready or a deadline comes. What only
//! version 1 does is in [`v1`](super::v1).

use super::assignment::{Agreed, Handshake, SetupOutcome, WorkerEnds};
use super::inbox::Inbox;
use super::peer_probe::Probe;
use super::publisher::{Publisher, Transport};
use crate::options::StreamOptions;
use crate::protocol::frame;
use crate::session::credit::{SendWindow, message_limit};
use crate::session::shared::{Ending, Failure};
use crate::session::state::{self, FinStep, Phase, ResetStep, StreamState};
use crate::transport::connection::BrokerConnection;
use crate::version::ProtocolVersion;
use amiquip::{ConsumerMessage, Return};
use crossbeam_channel::{Receiver, Select, Sender};
use log::{debug, warn};
use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use super::commands::{Control, Outbound};

/// A connected stream's worker.
pub(super) struct Worker<T> {
    pub(super) connection: Arc<BrokerConnection>,
    /// The secret of our "peer gone" marker.
    pub(super) marker: String,
    pub(super) publisher: Publisher<T>,
    pub(super) returns: Receiver<Return>,
    pub(super) ends: WorkerEnds,
    pub(super) peer_queue: String,
    pub(super) local_queue: String,
    pub(super) inbox: Arc<Inbox>,
    /// The largest message to publish.
    pub(super) message_limit: usize,
    /// Written bytes not yet published: a partial message waits here while
    /// earlier data awaits its confirm, gathering the writes behind it
    /// (see [`state::next_message`]).
    pub(super) unsent: Vec<u8>,
    /// What the stream decides by: sequence numbers, what went and came,
    /// its phase.
    pub(super) state: StreamState,
    /// Version 1: the channel the peer's queue is checked on.
    pub(super) probe: Probe,
}

/// Whether a worker keeps running.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Running,
    Finished,
}

impl<T: Transport> Worker<T> {
    /// Runs the worker on this thread until it is finished (versions 1
    /// and 2): waits for an input or the next deadline, takes a step as
    /// an engine would, again.
    pub(super) fn run(&mut self) {
        loop {
            self.wait();
            if self.tick(Instant::now()) == Step::Finished {
                break;
            }
        }
        self.probe.close();
    }

    /// Blocks until one of the inputs the worker takes in its phase is
    /// ready, or its next deadline (a keepalive while running, the
    /// linger's end while finishing) has come. A disconnected input is
    /// always ready: the step that follows reacts to it for good (the
    /// worker finishes, or no longer takes that input).
    fn wait(&self) {
        let mut select = Select::new();
        select.recv(&self.publisher.confirms);
        select.recv(&self.returns);
        match self.state.phase() {
            Phase::Running => {
                select.recv(self.ends.shared.written.filled());
                select.recv(&self.ends.outbound);
                select.recv(&self.ends.control);
            }
            Phase::Finishing { handles_left, .. } => {
                if handles_left {
                    select.recv(&self.ends.outbound);
                }
            }
        }
        match self.state.next_wake() {
            Some(deadline) => {
                let _ = select.ready_deadline(deadline);
            }
            None => {
                select.ready();
            }
        }
    }

    /// Handles everything waiting for the worker, without blocking: while
    /// running, what the user wrote and asked for, what the reader
    /// reported, the broker's confirms and returns; while finishing (both
    /// directions over, the last handle gone, or a failure), the confirms
    /// it waits for and the flushes the handles still ask for.
    pub(super) fn poll(&mut self) -> Step {
        if self.state.phase() == Phase::Running {
            if self.poll_running().is_continue() && !self.state.done() {
                return Step::Running;
            }
            self.state.start_finishing(Instant::now());
        }
        self.poll_finishing()
    }

    /// [`poll`](Self::poll), after a keepalive round if one is due at
    /// `now`. An engine calls this now and then (it looks at everything:
    /// a bell may have been missed, a handle that disconnected rings
    /// none).
    pub(super) fn tick(&mut self, now: Instant) -> Step {
        if self.state.keepalive_due(now) && self.keepalive().is_break() {
            self.state.start_finishing(now);
        }
        self.poll()
    }

    /// One round over what is ready while running; `Break` once running
    /// is over.
    fn poll_running(&mut self) -> ControlFlow<()> {
        use crossbeam_channel::TryRecvError::{Disconnected, Empty};
        loop {
            match self.returns.try_recv() {
                Ok(returned) => self.returned(returned),
                Err(Empty) => break,
                Err(Disconnected) => return self.broker_lost("the channel closed"),
            }
        }
        loop {
            match self.publisher.confirms.try_recv() {
                Ok(confirm) => self.confirmed(confirm)?,
                Err(Empty) => break,
                Err(Disconnected) => return self.broker_lost("the channel closed"),
            }
        }
        if self.ends.shared.written.filled().try_recv().is_ok() {
            self.take_written();
            self.publish_unsent(false)?;
        }
        loop {
            if self.state.done() {
                return ControlFlow::Continue(());
            }
            match self.ends.outbound.try_recv() {
                Ok(item) => self.outbound(item)?,
                Err(Empty) => break,
                Err(Disconnected) => return self.outbound(self.ending_of_last_handle()),
            }
        }
        loop {
            if self.state.done() {
                return ControlFlow::Continue(());
            }
            match self.ends.control.try_recv() {
                Ok(control) => self.control(control)?,
                Err(Empty) => break,
                Err(Disconnected) => return ControlFlow::Break(()),
            }
        }
        ControlFlow::Continue(())
    }

    /// One round over what is ready while finishing: wait until the
    /// broker has confirmed everything published, answering the flushes
    /// that come meanwhile; once the last handle is gone, for at most the
    /// linger time.
    fn poll_finishing(&mut self) -> Step {
        use crossbeam_channel::TryRecvError::{Disconnected, Empty};
        loop {
            // A held-back FIN goes once the data before it is confirmed,
            // and is waited for in turn.
            self.settle_waiting_fin();
            if StreamState::nothing_to_wait_for(self.publisher.all_confirmed(), self.failed()) {
                return self.finished();
            }
            match self.publisher.confirms.try_recv() {
                Ok(confirm) => {
                    self.confirmed_closing(confirm);
                    continue;
                }
                Err(Disconnected) => return self.finished(),
                Err(Empty) => {}
            }
            match self.returns.try_recv() {
                Ok(returned) => {
                    self.returned(returned);
                    continue;
                }
                Err(Disconnected) => return self.finished(),
                Err(Empty) => {}
            }
            if self.state.handles_left() {
                match self.ends.outbound.try_recv() {
                    Err(Empty) => {}
                    item => {
                        self.closing_outbound(item.ok());
                        continue;
                    }
                }
            }
            if self.state.out_of_time(Instant::now()) {
                self.out_of_time();
                return self.finished();
            }
            return Step::Running;
        }
    }

    /// Whether the stream failed.
    pub(super) fn failed(&self) -> bool {
        self.ends.shared.failure().is_some()
    }

    /// The last handle is gone without a word: what it said before it went
    /// (a reset), or a close.
    fn ending_of_last_handle(&self) -> Outbound {
        match self.ends.shared.ending() {
            Some(Ending::Reset(why)) => Outbound::Reset(why),
            _ => Outbound::Close,
        }
    }

    /// A confirm while the stream runs: a nack fails it, anything else
    /// answers the flushes it completes and lets waiting data go.
    fn confirmed(&mut self, confirm: amiquip::Confirm) -> ControlFlow<()> {
        self.take_confirm(confirm);
        if self.publisher.nacked {
            return self.refused_by_broker();
        }
        self.answer_flushes();
        self.publish_unsent(false)
    }

    /// A confirm while closing: a nack fails the stream.
    fn confirmed_closing(&mut self, confirm: amiquip::Confirm) {
        self.take_confirm(confirm);
        if self.publisher.nacked {
            let _ = self.refused_by_broker();
        }
    }

    /// What the handles ask while the stream finishes (closed, reset, or
    /// dropped: `None`, the last one is gone).
    fn closing_outbound(&mut self, item: Option<Outbound>) {
        match item {
            Some(Outbound::Flush(reply)) => {
                let seq = self.publisher.published;
                self.publisher.flushes.push_back((seq, reply));
                self.answer_flushes();
            }
            // Both directions are over: the FIN went (or the stream
            // failed, which the reply says).
            Some(Outbound::Fin(reply)) => {
                let _ = reply.send(match self.ends.shared.failure() {
                    Some(failure) => Err(failure.write_error()),
                    None => Ok(()),
                });
            }
            Some(Outbound::Push) => {}
            Some(Outbound::Close | Outbound::Reset(_)) | None => self.last_handle_gone(),
        }
    }

    /// Takes in a confirm. The broker returns an unroutable message before
    /// it confirms it: the returns waiting are taken in first, so a flush
    /// never answers `Ok` for a returned message.
    fn take_confirm(&mut self, confirm: amiquip::Confirm) {
        while let Ok(returned) = self.returns.try_recv() {
            self.returned(returned);
        }
        self.publisher.absorb(confirm);
    }

    /// Moves what was written into `unsent`, behind what waits there.
    fn take_written(&mut self) {
        let written = self.ends.shared.written.take();
        if self.unsent.is_empty() {
            self.unsent = written;
        } else {
            self.unsent.extend_from_slice(&written);
        }
    }

    fn outbound(&mut self, item: Outbound) -> ControlFlow<()> {
        // Everything written before this item goes first.
        self.take_written();
        match item {
            Outbound::Push => self.publish_unsent(false),
            Outbound::Fin(reply) => {
                // Like a TCP shutdown, this does not wait for the peer: a
                // held-back FIN leaves once the broker has the data.
                let result = match self.publish_unsent(true) {
                    ControlFlow::Continue(()) => self.fin_after_data(),
                    ControlFlow::Break(()) => Err(self.ends.shared.write_error()),
                };
                let _ = reply.send(result);
                ControlFlow::Continue(())
            }
            Outbound::Flush(reply) => {
                let _ = self.publish_unsent(true);
                let seq = self.publisher.published;
                self.publisher.flushes.push_back((seq, reply));
                self.answer_flushes();
                ControlFlow::Continue(())
            }
            Outbound::Close => {
                self.last_handle_gone();
                if let Some(Failure::Protocol(why)) = self.ends.shared.failure() {
                    // The reader found a violation; its abort may still
                    // be queued behind this close.
                    self.send_reset(&why);
                } else if self.state.close_sends_fin() && self.publish_unsent(true).is_continue() {
                    let _ = self.fin_after_data();
                }
                ControlFlow::Break(())
            }
            Outbound::Reset(why) => {
                self.last_handle_gone();
                self.unsent.clear();
                self.send_reset(&why);
                ControlFlow::Break(())
            }
        }
    }

    /// The user's last handle is gone: from now on finishing waits at
    /// most the linger time it set.
    fn last_handle_gone(&mut self) {
        let linger = match self.ends.shared.ending() {
            Some(Ending::Close { linger }) => Some(linger),
            _ => None,
        };
        self.state.last_handle_gone(linger, Instant::now());
    }

    /// Publishes one frame to the peer.
    fn publish_to_peer(
        &mut self,
        body: &[u8],
        properties: amiquip::AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        let peer = self.peer_queue.clone();
        self.publisher.publish(&peer, body, properties)?;
        self.state.sent(Instant::now());
        Ok(())
    }

    /// Publishes the unsent bytes that go now (see
    /// [`state::next_message`]; `all`: the partial rest too).
    fn publish_unsent(&mut self, all: bool) -> ControlFlow<()> {
        if self.failed() {
            self.unsent.clear();
            return ControlFlow::Continue(());
        }
        while let Some(n) = state::next_message(
            self.unsent.len(),
            self.message_limit,
            all,
            self.ends.shared.nodelay(),
            self.publisher.all_confirmed(),
        ) {
            let unsent = std::mem::take(&mut self.unsent);
            let properties =
                frame::data_properties(self.state.version(), self.state.next_sequence());
            let published = self.publish_to_peer(&unsent[..n], properties);
            self.unsent = unsent;
            if let Err(err) = published {
                self.unsent.clear();
                let peer = self.peer_queue.clone();
                return self.broker_lost(&format!("publishing to {peer:?}: {err}"));
            }
            self.state.data_sent();
            self.ends.shared.send_window().sent_message(n);
            if n == self.unsent.len() {
                self.unsent.clear();
            } else {
                self.unsent.drain(..n);
            }
        }
        ControlFlow::Continue(())
    }

    /// The FIN the user asked for, behind the data published: now, or
    /// held back (version 1, see [`StreamState::fin_after_data`]).
    fn fin_after_data(&mut self) -> io::Result<()> {
        let step = self
            .state
            .fin_after_data(self.publisher.all_confirmed(), self.failed());
        self.take_fin_step(step)
    }

    /// Sends the FIN unless it went already or the stream failed.
    pub(super) fn send_fin(&mut self) -> io::Result<()> {
        let step = self.state.fin_now(self.failed());
        self.take_fin_step(step)
    }

    fn take_fin_step(&mut self, step: FinStep) -> io::Result<()> {
        match step {
            FinStep::AlreadySent | FinStep::Hold => Ok(()),
            FinStep::Refuse => Err(self.ends.shared.write_error()),
            FinStep::Send => {
                let properties =
                    frame::fin_properties(self.state.version(), self.state.next_sequence());
                match self.publish_to_peer(&[], properties) {
                    Ok(()) => {
                        self.state.fin_published();
                        Ok(())
                    }
                    Err(err) => {
                        let text = format!("sending FIN to {:?}: {err}", self.peer_queue);
                        // The failure is recorded; the worker finishes
                        // when the channel's receivers disconnect.
                        let _ = self.broker_lost(&text);
                        Err(io::Error::new(io::ErrorKind::ConnectionAborted, text))
                    }
                }
            }
        }
    }

    /// Tells the peer that the stream is aborted (version 1 has no
    /// reset: see [`Worker::abort_without_reset`]).
    fn send_reset(&mut self, why: &str) {
        let broker_lost = matches!(self.ends.shared.failure(), Some(Failure::BrokerLost(_)));
        match self.state.reset_step(broker_lost) {
            ResetStep::Skip => {}
            ResetStep::Abort => self.abort_without_reset(why),
            ResetStep::Send => {
                debug!("stream {}: resetting: {why}", self.local_queue);
                if let Err(err) = self.publish_to_peer(why.as_bytes(), frame::reset_properties()) {
                    let _ = self.broker_lost(&format!("sending a reset: {err}"));
                }
            }
        }
    }

    fn control(&mut self, control: Control) -> ControlFlow<()> {
        match control {
            Control::Ack(delivery) => {
                // Version 3 consumes without acknowledgements.
                let Some(channel) = self.publisher.channel() else {
                    return ControlFlow::Continue(());
                };
                if !self.state.ack(delivery.delivery_tag()) {
                    return ControlFlow::Continue(());
                }
                if let Err(err) = (*delivery).ack_multiple(channel) {
                    return self.broker_lost(&format!("acknowledging data: {err}"));
                }
            }
            Control::FinReceived => self.state.fin_received(),
            Control::PeerGoneSeen => self.state.peer_gone_seen(),
            Control::Window(consumed) => {
                if !self.state.window_goes(self.failed()) {
                    return ControlFlow::Continue(());
                }
                let (properties, body) = frame::window_frame(consumed);
                if let Err(err) = self.publish_to_peer(&body, properties) {
                    return self.broker_lost(&format!("reporting the window: {err}"));
                }
            }
            Control::PeerReset => {
                // Everything before the reset has left the consumer, so the
                // reader keeps it; nothing after it counts.
                self.state.peer_reset();
                self.answer_flushes();
                return ControlFlow::Break(());
            }
            Control::Abort(why) => {
                warn!("stream {}: {why}", self.local_queue);
                self.unsent.clear();
                self.send_reset(&why);
                self.answer_flushes();
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn returned(&mut self, returned: Return) {
        debug!(
            "message to {:?} returned: {} {}",
            returned.routing_key, returned.reply_code, returned.reply_text
        );
        let ours_lost = state::returned_costs_data(
            returned.properties.type_().as_deref(),
            &returned.routing_key,
            &self.local_queue,
        );
        self.peer_left(
            &format!(
                "the peer's queue {:?} is gone ({})",
                returned.routing_key, returned.reply_text
            ),
            ours_lost,
        );
    }

    /// Marks the peer as gone (see [`StreamState::peer_left`]): the stream
    /// fails if it must, and a marker on our own queue, behind the data
    /// the peer sent before going, tells the reader where the stream
    /// ends. `ours_lost`: a message of ours did not reach it.
    pub(super) fn peer_left(&mut self, why: &str, ours_lost: bool) {
        let Some(left) = self.state.peer_left(ours_lost) else {
            return;
        };
        if left.fails {
            self.ends.shared.fail(Failure::PeerGone(why.to_string()));
        }
        self.answer_flushes();
        if !left.marks {
            return;
        }
        let own = self.local_queue.clone();
        let own_id = self.publisher.own_id().unwrap_or_default().to_string();
        let marker = frame::peer_gone_properties(&self.marker);
        if let Err(err) = self.publisher.publish_to(&own, &own_id, &[], marker) {
            let _ = self.broker_lost(&format!("marking the end of {own:?}: {err}"));
        }
    }

    /// The broker nacked a message: bytes a `write` accepted will not all
    /// arrive, so the stream fails here and the peer is reset (or, if the
    /// reset is refused too, finds our queue gone once we close).
    fn refused_by_broker(&mut self) -> ControlFlow<()> {
        let why = format!(
            "the broker refused a message to {:?} (nack): the stream is aborted",
            self.peer_queue
        );
        warn!("stream {}: {why}", self.local_queue);
        self.ends.shared.fail(Failure::Refused(why.clone()));
        self.unsent.clear();
        self.answer_flushes();
        self.send_reset(&why);
        ControlFlow::Break(())
    }

    pub(super) fn broker_lost(&mut self, why: &str) -> ControlFlow<()> {
        warn!("stream {}: lost the broker: {why}", self.local_queue);
        self.ends.shared.fail(Failure::BrokerLost(format!(
            "lost the broker connection: {why}"
        )));
        self.answer_flushes();
        ControlFlow::Break(())
    }

    /// The keepalive round, every keepalive interval while running:
    /// checks that the peer is still there and, from version 2, handles
    /// control frames nobody is reading.
    fn keepalive(&mut self) -> ControlFlow<()> {
        match self.state.version() {
            ProtocolVersion::V1 => self.probe_peer(),
            _ => {
                if let Some(pump) = self.inbox.try_take() {
                    pump.drain();
                }
                self.send_keepalive();
                ControlFlow::Continue(())
            }
        }
    }

    /// Version 2 and later: a keepalive frame when nothing else went to
    /// the peer for a while (see [`StreamState::keepalive_goes`]). The
    /// broker returns it if the peer's queue is gone (in version 3 a
    /// keepalive to a stream that is gone is answered with a reset).
    fn send_keepalive(&mut self) {
        if !self
            .state
            .keepalive_goes(Instant::now(), self.inbox.fin_seen(), self.failed())
        {
            return;
        }
        if let Err(err) = self.publish_to_peer(&[], frame::keepalive_properties()) {
            let _ = self.broker_lost(&format!("sending a keepalive: {err}"));
        }
    }

    fn answer_flushes(&mut self) {
        self.settle_waiting_fin();
        if let Some(failure) = self.ends.shared.failure() {
            for (_, reply) in self.publisher.flushes.drain(..) {
                let _ = reply.send(Err(failure.write_error()));
            }
            return;
        }
        while let Some((seq, _)) = self.publisher.flushes.front() {
            if *seq > self.publisher.confirmed {
                break;
            }
            let (_, reply) = self.publisher.flushes.pop_front().expect("front exists");
            let result = if self.publisher.nacked {
                Err(io::Error::other("the broker refused a message (nack)"))
            } else {
                Ok(())
            };
            let _ = reply.send(result);
        }
    }

    /// The linger ran out with data unconfirmed.
    fn out_of_time(&mut self) {
        warn!("stream {}: closing with unconfirmed data", self.local_queue);
        self.send_held_fin_anyway();
    }

    /// The end of finishing: flushes answered, the outcome recorded.
    fn finished(&mut self) -> Step {
        self.answer_flushes();
        for (_, reply) in self.publisher.flushes.drain(..) {
            let _ = reply.send(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the stream closed before the broker confirmed the data",
            )));
        }
        if StreamState::closed_cleanly(self.publisher.all_confirmed(), self.failed()) {
            self.ends.shared.set_closed_cleanly();
        }
        Step::Finished
    }

    /// Data that reached the stream after its last handle went (the peer
    /// still writing to a stream closed with nothing unread at the time)
    /// will never be read: the peer is reset, as TCP answers data for a
    /// closed socket, rather than left waiting for credit that never
    /// comes (see [`StreamState::late_data_resets`]; called once nothing
    /// more can arrive).
    pub(super) fn reset_if_data_came_after_close(&mut self) {
        if !self.state.late_data_resets(self.failed()) {
            return;
        }
        let Some(pump) = self.inbox.try_take() else {
            return;
        };
        pump.drain();
        let unread = pump.holds_data();
        drop(pump);
        if unread {
            self.send_reset("the stream was closed: data that came after is not read");
        }
    }
}

/// A stream whose handshake succeeded, before its worker's loop.
pub(super) struct Connected<T> {
    pub(super) connection: Arc<BrokerConnection>,
    pub(super) options: StreamOptions,
    pub(super) setup: Sender<SetupOutcome>,
    pub(super) ends: WorkerEnds,
    pub(super) agreed: Agreed,
    /// The queue the stream receives on.
    pub(super) local_queue: String,
    /// The stream's address for the user (version 3: the queue and the
    /// stream id).
    pub(super) local_name: String,
    pub(super) publisher: Publisher<T>,
    pub(super) returns: Receiver<Return>,
    pub(super) deliveries: Receiver<ConsumerMessage>,
    /// Version 3: the bytes waiting in `deliveries`.
    pub(super) held: Option<Arc<crate::transport::mux::Held>>,
}

impl<T: Transport> Connected<T> {
    /// Hands the stream to the user and runs its worker on this thread
    /// until it is over.
    pub(super) fn run(self) {
        if let Some((mut worker, name)) = self.into_worker() {
            worker.run();
            drop(worker);
            debug!("stream {name} closed");
        }
    }

    /// Hands the stream to the user; the worker to run it, and the
    /// stream's name for the log (`None` if the user no longer waits).
    pub(super) fn into_worker(self) -> Option<(Worker<T>, String)> {
        let Connected {
            connection,
            options,
            setup,
            ends,
            agreed,
            local_queue,
            local_name,
            mut publisher,
            returns,
            deliveries,
            held,
        } = self;
        let Agreed {
            peer_queue,
            version,
            peer_window,
            peer_stream,
            upgrade,
            peer_message_cost,
        } = agreed;
        let peer_name = match &peer_stream {
            Some(id) => format!("{peer_queue}#{id}"),
            None => peer_queue.clone(),
        };
        let peer_connection = peer_stream.is_some().then(|| peer_queue.clone());
        if let Some(id) = peer_stream {
            publisher.set_peer(id);
        }
        debug!("stream {local_name} connected to {peer_name}, protocol version {version}");
        if let Some(window) = peer_window {
            *ends.shared.send_window() =
                SendWindow::limited(window).with_message_cost(peer_message_cost.unwrap_or(0));
        }
        // Whatever held for a version-3 stream is weighed with each
        // message's cost, whether or not the peer said it counts it: one
        // that leaves the header out must not make the stream hold
        // hundreds of times its window in tiny messages.
        if let Some(held) = &held {
            held.count_messages_at(crate::session::credit::MESSAGE_COST);
        }
        let message_limit = message_limit(options.get_max_message_size(), peer_window);
        let marker = frame::new_marker();
        let inbox = Arc::new(Inbox::new(
            version,
            deliveries,
            Arc::clone(&ends.shared),
            ends.control_sender.clone(),
            marker.clone(),
            options.get_window() as u64,
            held,
        ));
        let handed_over = setup.send(Ok(Handshake {
            local_queue: local_name.clone(),
            peer_queue: peer_name,
            inbox: Arc::clone(&inbox),
            message_limit,
            upgrade,
            peer_connection,
        }));
        if handed_over.is_err() {
            return None;
        }
        let state = StreamState::new(
            version,
            options.get_keepalive_interval(),
            options.get_linger(),
            Instant::now(),
        );
        let worker = Worker {
            connection,
            marker,
            publisher,
            returns,
            ends,
            peer_queue,
            local_queue,
            inbox,
            message_limit,
            unsent: Vec::new(),
            state,
            probe: Probe::default(),
        };
        Some((worker, local_name))
    }
}
