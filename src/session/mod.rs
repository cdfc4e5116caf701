//! A stream's session: what a stream is, whatever carries it. The state
//! machine that makes every decision ([`state`]), the send window and
//! its credit ([`credit`]), the bytes written and not yet taken
//! ([`write_buffer`]), and the state a stream's handles and its worker
//! share ([`shared`]). Nothing here imports the transport: the session
//! knows what carries it only as a [`Carrier`](carrier::Carrier). Every
//! part is tested without a broker.

pub(crate) mod carrier;
pub(crate) mod credit;
pub(crate) mod shared;
pub(crate) mod state;
pub(crate) mod write_buffer;
