//! What a stream's handles send its worker: writes' ends, flushes and
//! closes in stream order ([`Outbound`]), and what the reading side has
//! seen, out of it ([`Control`]).

use amiquip::Delivery;
use crossbeam_channel::Sender;
use std::io;

/// What the user's side sends the worker, in stream order.
pub(crate) enum Outbound {
    /// Publish the FIN; answer once it is published.
    Fin(Sender<io::Result<()>>),
    /// Answer once everything before this is confirmed by the broker.
    Flush(Sender<io::Result<()>>),
    /// Publish what small writes are waiting (after `set_nodelay(true)`).
    Push,
    /// The last handle is gone: finish and clean up.
    Close,
    /// The last handle is gone with data unread: reset the stream (version
    /// 2; version 1 closes) and clean up.
    Reset(String),
}

/// What the receiving side tells the worker, out of stream order.
pub(crate) enum Control {
    /// Acknowledge this delivery and every one before it.
    Ack(Box<Delivery>),
    /// The reader has taken the peer's FIN.
    FinReceived,
    /// The reader has taken the peer-gone marker.
    PeerGoneSeen,
    /// Report to the peer that our reader has consumed this many bytes.
    Window(u64),
    /// The peer reset the stream.
    PeerReset,
    /// The peer broke the protocol: reset the stream, saying why.
    Abort(String),
}
