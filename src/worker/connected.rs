//! A worker's life once its stream is connected: what the user writes,
//! what the reader reports, the broker's confirms and returns, and a
//! keepalive tick; then closing.
//!
//! One driver runs it: [`Worker::poll`] handles whatever waits for the
//! worker without blocking, [`Worker::tick`] runs the keepalive too when
//! it is due. An engine calls them for the version-3 streams of a
//! connection (see [`engine`](super::engine)); a stream with a thread of
//! its own (versions 1 and 2) calls them from [`Worker::run`], blocking
//! in between until an input is ready or a deadline comes.

use super::WorkerEnds;
use super::publisher::{Publisher, Transport};
use crate::connection::BrokerConnection;
use crate::inbox::Inbox;
use crate::options::StreamOptions;
use crate::protocol::frame;
use crate::shared::{Ending, Failure};
use crate::version::ProtocolVersion;
use amiquip::{Channel, Return};
use crossbeam_channel::{Receiver, Select};
use log::{debug, warn};
use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Control, Outbound};

/// The worker's state after the handshake.
pub(super) struct Worker<T> {
    pub(super) connection: Arc<BrokerConnection>,
    pub(super) options: StreamOptions,
    /// How long closing waits for confirms: the options' linger, or the
    /// stream's own (`Stream::set_linger`) once its last handle is gone.
    pub(super) linger: Duration,
    /// The secret of our "peer gone" marker.
    pub(super) marker: String,
    /// The last handle is gone (closed or reset): closing waits no longer
    /// than the linger time.
    pub(super) closing: bool,
    pub(super) publisher: Publisher<T>,
    pub(super) returns: Receiver<Return>,
    pub(super) ends: WorkerEnds,
    pub(super) peer_queue: String,
    pub(super) local_queue: String,
    pub(super) version: ProtocolVersion,
    pub(super) inbox: Arc<Inbox>,
    /// The largest message to publish.
    pub(super) message_limit: usize,
    /// The sequence number of the last data or FIN frame sent.
    pub(super) sequence: u64,
    /// The delivery tag acknowledged last (acks cover all before it).
    pub(super) acked: u64,
    /// When something was last published to the peer.
    pub(super) last_sent: Instant,
    pub(super) probe_channel: Option<Channel>,
    pub(super) fin_sent: bool,
    /// Version 1: a FIN held back until the broker has confirmed every
    /// message before it. Version 1 has no sequence numbers: a data
    /// message refused after the FIN went out would leave the peer a clean
    /// EOF after a gap. Held back, a refusal fails the stream and no FIN
    /// is ever sent.
    pub(super) fin_waiting: bool,
    pub(super) fin_received: bool,
    pub(super) peer_gone: bool,
    pub(super) reader_done: bool,
    /// Written bytes not yet published: a partial message waits here while
    /// earlier data awaits its confirm, gathering the writes behind it
    /// (Nagle's algorithm, with the broker's confirm as the ACK).
    pub(super) unsent: Vec<u8>,
    /// Closing, waiting for the broker's confirms.
    pub(super) finishing: Option<Finishing>,
    /// When the next keepalive tick is due.
    pub(super) next_keepalive: Instant,
}

/// A worker closing: waiting for the broker's confirms.
pub(super) struct Finishing {
    /// Give up waiting for confirms then (once the last handle is gone).
    deadline: Option<Instant>,
    /// The user's handles may still ask for flushes.
    handles_left: bool,
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
        if let Some(channel) = self.probe_channel.take() {
            let _ = channel.close();
        }
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
        let deadline = match &self.finishing {
            None => {
                select.recv(self.ends.shared.written.filled());
                select.recv(&self.ends.outbound);
                select.recv(&self.ends.control);
                Some(self.next_keepalive)
            }
            Some(finishing) => {
                if finishing.handles_left {
                    select.recv(&self.ends.outbound);
                }
                finishing.deadline
            }
        };
        match deadline {
            Some(deadline) => {
                let _ = select.ready_deadline(deadline);
            }
            None => {
                select.ready();
            }
        }
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

    /// What the handles ask while the stream closes; `true` once the last
    /// one is gone (closed, reset, or dropped: `None`).
    fn closing_outbound(&mut self, item: Option<Outbound>) -> bool {
        match item {
            Some(Outbound::Flush(reply)) => {
                let seq = self.publisher.published;
                self.publisher.flushes.push_back((seq, reply));
                self.answer_flushes();
                false
            }
            // Both directions are over: the FIN went (or the stream
            // failed, which the reply says).
            Some(Outbound::Fin(reply)) => {
                let _ = reply.send(match self.ends.shared.failure() {
                    Some(failure) => Err(failure.write_error()),
                    None => Ok(()),
                });
                false
            }
            Some(Outbound::Push) => false,
            Some(Outbound::Close | Outbound::Reset(_)) | None => {
                self.last_handle_gone();
                true
            }
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

    /// The stream is over in both directions, or the peer is gone and
    /// the reader knows.
    fn done(&self) -> bool {
        (self.fin_sent && self.fin_received) || (self.peer_gone && self.reader_done)
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
                } else if !self.fin_sent
                    && !self.fin_waiting
                    && self.publish_unsent(true).is_continue()
                {
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

    /// The user's last handle is gone: from now on closing waits at most
    /// the linger time it set.
    fn last_handle_gone(&mut self) {
        self.closing = true;
        if let Some(Ending::Close { linger }) = self.ends.shared.ending() {
            self.linger = linger;
        }
    }

    /// Publishes one frame to the peer.
    fn publish_to_peer(
        &mut self,
        body: &[u8],
        properties: amiquip::AmqpProperties,
    ) -> Result<(), amiquip::Error> {
        let peer = self.peer_queue.clone();
        self.publisher.publish(&peer, body, properties)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Publishes the unsent bytes: full messages always; the partial rest
    /// only when `all` is set, `nodelay` is on, or nothing published is
    /// still waiting for its confirm (whose arrival calls this again).
    fn publish_unsent(&mut self, all: bool) -> ControlFlow<()> {
        if self.ends.shared.failure().is_some() {
            self.unsent.clear();
            return ControlFlow::Continue(());
        }
        let max = self.message_limit;
        while !self.unsent.is_empty() {
            let full = self.unsent.len() >= max;
            if !(full || all || self.ends.shared.nodelay() || self.publisher.all_confirmed()) {
                break;
            }
            let n = self.unsent.len().min(max);
            let unsent = std::mem::take(&mut self.unsent);
            let properties = frame::data_properties(self.version, self.sequence + 1);
            let published = self.publish_to_peer(&unsent[..n], properties);
            self.unsent = unsent;
            if let Err(err) = published {
                self.unsent.clear();
                let peer = self.peer_queue.clone();
                return self.broker_lost(&format!("publishing to {peer:?}: {err}"));
            }
            self.sequence += 1;
            if n == self.unsent.len() {
                self.unsent.clear();
            } else {
                self.unsent.drain(..n);
            }
        }
        ControlFlow::Continue(())
    }

    /// Sends the FIN now (version 2, whose sequence numbers expose any
    /// refused message before it, or nothing unconfirmed) or holds it until
    /// everything before it is confirmed (version 1).
    fn fin_after_data(&mut self) -> io::Result<()> {
        if self.version == ProtocolVersion::V1 && !self.publisher.all_confirmed() {
            if let Some(failure) = self.ends.shared.failure() {
                return Err(failure.write_error());
            }
            self.fin_waiting = true;
            return Ok(());
        }
        self.send_fin()
    }

    /// Sends a held-back FIN once everything before it is confirmed; a
    /// failed stream never sends it.
    fn settle_waiting_fin(&mut self) {
        if !self.fin_waiting || !self.publisher.all_confirmed() {
            return;
        }
        self.fin_waiting = false;
        if self.ends.shared.failure().is_none() {
            let _ = self.send_fin();
        }
    }

    fn send_fin(&mut self) -> io::Result<()> {
        if self.fin_sent {
            return Ok(());
        }
        if let Some(failure) = self.ends.shared.failure() {
            return Err(failure.write_error());
        }
        let properties = frame::fin_properties(self.version, self.sequence + 1);
        match self.publish_to_peer(&[], properties) {
            Ok(()) => {
                self.sequence += 1;
                self.fin_sent = true;
                Ok(())
            }
            Err(err) => {
                let text = format!("sending FIN to {:?}: {err}", self.peer_queue);
                // The failure is recorded; the loop ends when the channel's
                // receivers disconnect.
                let _ = self.broker_lost(&text);
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, text))
            }
        }
    }

    /// Tells a version-2 peer that the stream is aborted (version 1 has no
    /// reset: the peer sees the FIN of a close instead).
    fn send_reset(&mut self, why: &str) {
        if self.peer_gone
            || self
                .ends
                .shared
                .failure()
                .is_some_and(|f| matches!(f, Failure::BrokerLost(_)))
        {
            return;
        }
        if self.version == ProtocolVersion::V1 {
            // No reset in version 1, and never a FIN in its place: that
            // would be a clean end after whatever was dropped. The peer
            // finds our queue gone (deleted with our consumer) and fails.
            debug!("stream {}: aborting: {why}", self.local_queue);
            return;
        }
        debug!("stream {}: resetting: {why}", self.local_queue);
        if let Err(err) = self.publish_to_peer(why.as_bytes(), frame::reset_properties()) {
            let _ = self.broker_lost(&format!("sending a reset: {err}"));
        }
    }

    fn control(&mut self, control: Control) -> ControlFlow<()> {
        match control {
            Control::Ack(delivery) => {
                // Acks are cumulative: one for a later delivery covered it.
                // Version 3 consumes without acknowledgements.
                let Some(channel) = self.publisher.channel() else {
                    return ControlFlow::Continue(());
                };
                if delivery.delivery_tag() > self.acked {
                    self.acked = delivery.delivery_tag();
                    if let Err(err) = (*delivery).ack_multiple(channel) {
                        return self.broker_lost(&format!("acknowledging data: {err}"));
                    }
                }
            }
            Control::FinReceived => {
                self.fin_received = true;
                self.reader_done = true;
            }
            Control::PeerGoneSeen => self.reader_done = true,
            Control::Window(consumed) => {
                if self.peer_gone || self.ends.shared.failure().is_some() {
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
                self.peer_gone = true;
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
        // A keepalive or window report lost with the peer's queue costs no
        // byte of the stream; data, a FIN or a reset does.
        let control = matches!(
            returned.properties.type_().as_deref(),
            Some(frame::KEEPALIVE | frame::WINDOW)
        ) || returned.routing_key == self.local_queue;
        self.peer_left(
            &format!(
                "the peer's queue {:?} is gone ({})",
                returned.routing_key, returned.reply_text
            ),
            !control,
        );
    }

    /// Marks the peer as gone. Data it sent before going stays readable:
    /// a marker on our own queue, behind that data, tells the reader where
    /// the stream ends. `ours_lost`: a message of ours did not reach it.
    ///
    /// A peer that goes after our FIN was sent, with nothing of ours lost,
    /// may simply have closed (its queue goes with its consumer): our
    /// direction is complete, so only reading can fail (if its FIN never
    /// came), and `flush` still reports the broker's confirms.
    fn peer_left(&mut self, why: &str, ours_lost: bool) {
        if self.peer_gone {
            return;
        }
        self.peer_gone = true;
        if ours_lost || !self.fin_sent {
            self.ends.shared.fail(Failure::PeerGone(why.to_string()));
        }
        self.answer_flushes();
        if self.fin_received {
            self.reader_done = true;
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

    fn broker_lost(&mut self, why: &str) -> ControlFlow<()> {
        warn!("stream {}: lost the broker: {why}", self.local_queue);
        self.ends.shared.fail(Failure::BrokerLost(format!(
            "lost the broker connection: {why}"
        )));
        self.answer_flushes();
        ControlFlow::Break(())
    }

    /// Runs every keepalive interval: checks that the peer is still there
    /// and, in version 2, handles control frames nobody is reading.
    fn keepalive(&mut self) -> ControlFlow<()> {
        match self.version {
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

    /// Version 2: a keepalive frame when nothing else went to the peer for
    /// an interval. The broker returns it if the peer's queue is gone.
    fn send_keepalive(&mut self) {
        // The peer's FIN waiting for our reader is enough: the peer sends
        // nothing more and may be gone, cleanly (in version 3 a keepalive
        // to a stream that is gone is answered with a reset).
        if self.peer_gone
            || self.fin_received
            || self.inbox.fin_seen()
            || self.ends.shared.failure().is_some()
        {
            return;
        }
        // The ticker fires every interval: allow for its jitter.
        if self.last_sent.elapsed() < self.options.get_keepalive_interval() / 2 {
            return;
        }
        if let Err(err) = self.publish_to_peer(&[], frame::keepalive_properties()) {
            let _ = self.broker_lost(&format!("sending a keepalive: {err}"));
        }
    }

    /// Version 1: checks that the peer's queue still exists.
    fn probe_peer(&mut self) -> ControlFlow<()> {
        if self.peer_gone || self.fin_received {
            return ControlFlow::Continue(());
        }
        let channel = match self.probe_channel.take() {
            Some(channel) => channel,
            None => match self.connection.open_channel("checking the peer") {
                Ok(channel) => channel,
                Err(err) => return self.broker_lost(&err.to_string()),
            },
        };
        match channel.queue_declare_passive(self.peer_queue.clone()) {
            Ok(_) => self.probe_channel = Some(channel),
            // Exclusive to the peer's connection: it exists. The broker
            // closed the channel, a new one is opened next time.
            Err(amiquip::Error::ServerClosedChannel { code: 405, .. }) => {}
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {
                let why = format!("the peer's queue {:?} is gone", self.peer_queue);
                self.peer_left(&why, false);
            }
            Err(err) => return self.broker_lost(&format!("checking the peer: {err}")),
        }
        ControlFlow::Continue(())
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

    /// Handles everything waiting for the worker, without blocking: while
    /// running, what the user wrote and asked for, what the reader
    /// reported, the broker's confirms and returns; while finishing (both
    /// directions over, the last handle gone, or a failure), the confirms
    /// it waits for and the flushes the handles still ask for.
    pub(super) fn poll(&mut self) -> Step {
        if self.finishing.is_some() {
            return self.poll_finishing();
        }
        if self.poll_running().is_break() || self.done() {
            self.finishing = Some(Finishing {
                deadline: self.closing.then(|| Instant::now() + self.linger),
                handles_left: !self.closing,
            });
            return self.poll_finishing();
        }
        Step::Running
    }

    /// [`poll`](Self::poll), after a keepalive when one is due. An engine
    /// calls this now and then (a look at everything: a bell may have been
    /// missed, a handle that disconnected rings none).
    pub(super) fn tick(&mut self, now: Instant) -> Step {
        if self.finishing.is_none() && now >= self.next_keepalive {
            self.next_keepalive = now + self.options.get_keepalive_interval();
            if self.keepalive().is_break() {
                self.finishing = Some(Finishing {
                    deadline: self.closing.then(|| now + self.linger),
                    handles_left: !self.closing,
                });
            }
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
            if self.done() {
                return ControlFlow::Continue(());
            }
            match self.ends.outbound.try_recv() {
                Ok(item) => self.outbound(item)?,
                Err(Empty) => break,
                Err(Disconnected) => return self.outbound(self.ending_of_last_handle()),
            }
        }
        loop {
            if self.done() {
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
            if self.publisher.all_confirmed() || self.ends.shared.failure().is_some() {
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
            let handles_left = self.finishing.as_ref().is_some_and(|f| f.handles_left);
            if handles_left {
                match self.ends.outbound.try_recv() {
                    Err(Empty) => {}
                    item => {
                        if self.closing_outbound(item.ok()) {
                            self.finishing = Some(Finishing {
                                deadline: Some(Instant::now() + self.linger),
                                handles_left: false,
                            });
                        }
                        continue;
                    }
                }
            }
            let deadline = self.finishing.as_ref().and_then(|f| f.deadline);
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                self.out_of_time();
                return self.finished();
            }
            return Step::Running;
        }
    }

    /// The linger ran out with data unconfirmed.
    fn out_of_time(&mut self) {
        warn!("stream {}: closing with unconfirmed data", self.local_queue);
        // A held-back FIN goes now, behind the data, as it would have
        // without holding it back: dropping it would turn a clean close
        // into a reset only because the broker confirmed slowly.
        if self.fin_waiting && self.ends.shared.failure().is_none() {
            self.fin_waiting = false;
            let _ = self.send_fin();
        }
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
        if self.publisher.all_confirmed() && self.ends.shared.failure().is_none() {
            self.ends.shared.set_closed_cleanly();
        }
        Step::Finished
    }

    /// Data that reached the stream after its last handle went (the peer
    /// still writing to a stream closed with nothing unread at the time)
    /// will never be read: the peer is reset, as TCP answers data for a
    /// closed socket, rather than left waiting for credit that never
    /// comes. (Versions 2 and 3; called once nothing more can arrive.)
    pub(super) fn reset_if_data_came_after_close(&mut self) {
        if !self.closing
            || self.version < ProtocolVersion::V2
            || self.peer_gone
            || self.ends.shared.failure().is_some()
        {
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
