//! Which end of the handshake a worker plays, and when a client waiting
//! for it gives up.

use crate::error::Error;
use crate::protocol::handshake::Offer;
use crate::version::ProtocolVersion;
use std::time::{Duration, Instant};

/// Which end of the handshake the worker plays.
pub(crate) enum Role {
    /// Connect to a listener's control queue.
    Client {
        /// The listener's queue.
        listener_queue: String,
        /// When to give up waiting for the answer.
        deadline: Option<Instant>,
        /// The timeout, for the error message.
        timeout: Option<Duration>,
        /// Send a version-3 SYN (the listener is known to take one).
        v3: bool,
        /// The connection queue the listener last answered a version-3
        /// SYN from: while it is there, an answer that names no stream is
        /// not believed (see `handshake::await_handshake`).
        listener_connection: Option<String>,
    },
    /// Answer a connection request.
    Server {
        /// The client's queue, from the request's `reply_to`.
        client_queue: String,
        /// The version the listener chose for it.
        version: ProtocolVersion,
        /// The client's version-2 offer, if it made one.
        offer: Option<Offer>,
        /// The client's stream id (version 3).
        client_stream: Option<String>,
        /// The per-message cost the client counts (version 3).
        client_message_cost: Option<u64>,
    },
}

impl Role {
    /// When a client gives up, as its caller waits for the handshake
    /// (none for a listener's end: its handshake timeout is counted in
    /// [`await_handshake`]).
    pub(super) fn give_up(&self) -> Option<GiveUp> {
        match self {
            Role::Client {
                listener_queue,
                deadline: Some(at),
                timeout,
                ..
            } => Some(GiveUp {
                at: *at,
                what: format!("connecting to {listener_queue:?}"),
                after: timeout.unwrap_or_default(),
            }),
            _ => None,
        }
    }

    /// Whether the stream speaks version 3 (no queue of its own).
    pub(super) fn is_v3(&self) -> bool {
        match self {
            Role::Client { v3, .. } => *v3,
            Role::Server { version, .. } => *version >= ProtocolVersion::V3,
        }
    }
}

/// When and how a client waiting for its handshake gives up.
pub(super) struct GiveUp {
    pub(super) at: Instant,
    /// What timed out, for the error.
    pub(super) what: String,
    /// The timeout, for the error.
    pub(super) after: Duration,
}

impl GiveUp {
    pub(super) fn error(&self) -> Error {
        Error::TimedOut {
            what: self.what.clone(),
            after: self.after,
        }
    }
}
