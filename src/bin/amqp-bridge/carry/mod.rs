//! Carrying one connection through the broker, for both sides: the
//! broker link that reconnects, the stream as the bridge uses it (plain
//! or secured), copying both ways with ends passed on as they came,
//! resets, byte counting, deadlines, and the target request that
//! `socks` sends `serve --allow`.

pub mod abort;
pub mod address;
pub mod backoff;
pub mod broker_stream;
pub mod deadline;
pub mod keys_notice;
pub mod link;
pub mod metered;
pub mod splice;
pub mod target_request;
