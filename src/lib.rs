//! Reliable, ordered byte streams over an AMQP 0-9-1 broker (RabbitMQ),
//! shaped like `std::net`.
//!
//! A [`Listener`] listens on a named queue the way a `TcpListener`
//! listens on a port; [`Stream::connect`] reaches it through the broker;
//! both ends then hold a [`Stream`] that implements `Read` and `Write`
//! and works with `io::copy`, `BufReader`, `try_clone` and `shutdown`
//! exactly as a `TcpStream` does. Everything is blocking and
//! thread-based: no async runtime.
//!
//! ```
//! use amqp_stream::{Listener, Stream};
//! use std::io::{Read, Write};
//! use std::net::Shutdown;
//!
//! # let url = std::env::var("AMQP_URL")
//! #     .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
//! # let url = url.as_str();
//! # let queue = format!("doc-echo-{}", std::process::id());
//! # let queue = queue.as_str();
//! // let url = "amqp://guest:guest@127.0.0.1:5672/%2f"; let queue = "echo";
//! let listener = Listener::bind(url, queue)?;
//! let server = std::thread::spawn(move || -> std::io::Result<()> {
//!     let (stream, _peer) = listener.accept()?;
//!     let mut reader = stream.try_clone()?;
//!     let mut writer = stream;
//!     std::io::copy(&mut reader, &mut writer)?; // echo until EOF
//!     writer.shutdown(Shutdown::Write)
//! });
//!
//! let mut stream = Stream::connect(url, queue)?;
//! stream.write_all(b"hello")?;
//! stream.shutdown(Shutdown::Write)?; // FIN: the server sees EOF
//! let mut reply = String::new();
//! stream.read_to_string(&mut reply)?;
//! assert_eq!(reply, "hello");
//! server.join().unwrap()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # How it maps onto AMQP (protocol version 1)
//!
//! Everything is published to the default exchange with the queue name as
//! routing key, `mandatory` set (so a message to a queue that does not
//! exist comes back instead of vanishing) and transient delivery.
//!
//! * **Listen.** The listener declares its queue `NAME` (transient,
//!   exclusive, auto-delete) and consumes it. The queue is exclusive, so a
//!   second listener on the name is refused: `AddrInUse`.
//! * **Connect.** The client declares its own receive queue `C` the same
//!   way, consumes it, and publishes an empty message with `reply_to = C`
//!   to `NAME`. If nothing listens, the broker returns it:
//!   `ConnectionRefused`, at once.
//! * **Accept.** The listener checks the request (empty body, a
//!   `reply_to`; anything else is rejected and logged), declares and
//!   consumes its queue `S` for this stream and answers `C` with an empty
//!   message whose `reply_to = S`. An answer with a body is a refusal (a
//!   closing listener sends one to the requests it still held).
//! * **Data.** Each side publishes to the other's queue; the bodies,
//!   concatenated in order, are the stream. One message carries at most
//!   [`StreamOptions::max_message_size`] bytes, and small writes that
//!   queue up behind each other leave as one message.
//! * **FIN.** An empty message ends the sender's direction; the reader
//!   gets `Ok(0)` after all earlier data. The other direction stays open.
//! * **Teardown.** A side that has sent and received FIN cancels its
//!   consumer, which deletes its queue.
//!
//! Version 1 cannot tell a dead peer from a quiet one, so each stream
//! checks every [keepalive interval](StreamOptions::keepalive_interval)
//! that the peer's queue still exists (a passive declare: the queue dies
//! with its owner's connection). A write to a vanished queue is returned
//! by the broker. Either way the stream's writes then fail with
//! `BrokenPipe`, and its reads deliver whatever the peer sent before
//! going and then fail with `ConnectionReset`: to keep that order, the
//! stream puts a marker message (AMQP `type`
//! `amqp-stream.local.peer-gone`) on its *own* queue, behind the peer's
//! last data. Losing the broker connection gives `ConnectionAborted`.
//!
//! Queue names chosen by this crate are `amqp-stream.<uuid v4>`: picked by
//! the client so they can be declared without waiting for the broker.
//! The messages are exactly those of the Go implementation of the same
//! protocol, and the two interoperate.
//!
//! # Guarantees
//!
//! * [`Write::flush`](std::io::Write::flush) returns once the broker has
//!   confirmed (publisher confirms) every message written before it, and
//!   fails if one was returned or refused.
//! * [`Stream::shutdown`] with `Shutdown::Write` returns once the FIN is
//!   handed to the broker connection.
//! * Dropping the last handle of a stream sends the FIN (if not sent) and
//!   waits, up to the [linger](StreamOptions::linger) time, until the
//!   broker has confirmed everything; then it deletes the stream's queue.
//!
//! # Logging
//!
//! The crate logs through the `log` facade (a rejected connection request
//! at `warn`, connection events at `info` and `debug`) and never installs
//! a logger. Broker URLs are logged, printed and put in errors without
//! their password.
//!
//! One caveat from below: amiquip logs the AMQP login, password included,
//! at `debug` under the target `amiquip::io_loop::handshake_state`. Keep
//! that target at `info` or above (the examples do, with
//! `filter_module("amiquip::io_loop::handshake_state", LevelFilter::Info)`).

#![deny(missing_docs)]

mod addr;
mod broker_url;
mod connection;
mod connector;
mod error;
mod listener;
mod options;
mod protocol;
mod stream;
mod worker;

pub use addr::Addr;
pub use broker_url::BrokerUrl;
pub use connector::Connector;
pub use error::Error;
pub use listener::{Incoming, Listener};
pub use options::StreamOptions;
pub use stream::Stream;
