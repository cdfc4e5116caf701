//! What a stream's handles know of whatever carries the stream: a way to
//! have the stream's pending work done. The session never learns which
//! connection, engine or thread that is.

/// The thread or engine that runs a stream's worker, as the stream's
/// handles see it. A stream with a thread of its own (versions 1 and 2)
/// has no carrier: its thread waits on the stream's channels itself.
/// Version 3's engine is one ([`Bell`](crate::transport::worker::engine::Bell)).
pub(crate) trait Carrier: Send + Sync {
    /// After a handle's message to the worker: runs the stream's pending
    /// work in the caller's thread, or leaves it to the thread that holds
    /// the worker now.
    fn run_here(&self);

    /// After a message to the worker from a thread that must not run it
    /// (the demultiplexer's): wakes the carrier's own thread for the
    /// stream.
    fn ring(&self);
}
