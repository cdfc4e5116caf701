//! What carries streams: the broker connection and its addresses
//! ([`connection`]), version 3's demultiplexer shared by every stream on a
//! connection ([`mux`]), and the workers that run streams' handshakes and
//! I/O ([`worker`]). It drives sessions (see [`crate::session`]); they
//! never import it.

pub(crate) mod bounded_wait;
pub(crate) mod connection;
pub(crate) mod mux;
pub(crate) mod worker;
