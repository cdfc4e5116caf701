//! What a worker is given to set up one stream, and what it hands back
//! once the handshake is over.

use super::commands::{Control, Outbound};
use super::inbox::Inbox;
use super::role::Role;
use crate::error::Error;
use crate::options::StreamOptions;
use crate::session::shared::Shared;
use crate::version::ProtocolVersion;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;

/// Everything a worker thread needs to set up one particular stream.
pub(crate) struct Assignment {
    pub(super) role: Role,
    pub(super) options: StreamOptions,
    pub(super) setup: Sender<SetupOutcome>,
    pub(super) ends: WorkerEnds,
}

impl Assignment {
    /// Whether the caller gave up waiting for this stream (its
    /// [`Pending`] is gone): nothing more is to be sent for it.
    pub(super) fn abandoned(&self) -> bool {
        matches!(
            self.ends.outbound.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }
}

/// The worker's ends of the channels to the user's side.
pub(super) struct WorkerEnds {
    pub(super) outbound: Receiver<Outbound>,
    pub(super) control: Receiver<Control>,
    /// For the inbox, which the worker makes once the version is known.
    pub(super) control_sender: Sender<Control>,
    pub(super) shared: Arc<Shared>,
    /// Dropped when the thread ends, which wakes a blocked reader.
    pub(super) _alive: Sender<()>,
}

/// What the handshake hands back to the thread that asked for the stream.
pub(crate) struct Handshake {
    pub(super) local_queue: String,
    pub(super) peer_queue: String,
    pub(super) inbox: Arc<Inbox>,
    pub(super) message_limit: usize,
    pub(super) upgrade: bool,
    pub(super) peer_connection: Option<String>,
}

/// What the handshake settled.
pub(super) struct Agreed {
    pub(super) peer_queue: String,
    pub(super) version: ProtocolVersion,
    /// The peer's receive window (version 2).
    pub(super) peer_window: Option<u64>,
    /// The peer's stream id (version 3).
    pub(super) peer_stream: Option<String>,
    /// The listener said it takes version-3 requests.
    pub(super) upgrade: bool,
    /// Version 3: the per-message cost the peer counts, if it does (see
    /// [`MESSAGE_COST`](crate::session::credit::MESSAGE_COST)).
    pub(super) peer_message_cost: Option<u64>,
}

/// What a worker reports when its handshake is over.
pub(crate) type SetupOutcome = Result<Handshake, Error>;
