//! Reliable, ordered byte streams through a RabbitMQ broker (AMQP 0-9-1),
//! shaped like `std::net`.
//!
//! A [`Listener`] listens on a named queue the way a `TcpListener`
//! listens on a port; [`Stream::connect`] reaches it through the broker;
//! both ends then hold a [`Stream`] that implements `Read` and `Write`
//! and works with `io::copy`, `BufReader`, `try_clone` and `shutdown` as
//! a `TcpStream` does ([the differences](Stream#differences-from-tcpstream)
//! are listed). Everything is blocking and thread-based: no async runtime.
//! Use it when two programs can both reach a broker but not each other.
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
//! # The API
//!
//! | item | like | what it is |
//! | --- | --- | --- |
//! | [`Stream`] | `TcpStream` | one end of a stream: `connect`, `Read`/`Write` (also on `&Stream`), `shutdown`, `try_clone`, `peek`, timeouts, linger, `flush` = the broker has it |
//! | [`Listener`] | `TcpListener` | `bind` a queue name, `accept`, `incoming`; optionally [shared](StreamOptions::shared) by several processes or [reconnecting](StreamOptions::reconnect) after a broker restart |
//! | [`Connector`] | ureq's `Agent` | one broker connection for many streams and listeners: setup in about a millisecond from the second stream on |
//! | [`StreamOptions`] | | message size, window, keepalive, handshake timeout, linger, protocol version… taken by value |
//! | [`Addr`], [`BrokerUrl`] | `SocketAddr` | where a stream goes: broker URL and queue; never print the password |
//! | [`Error`] | | inside every `io::Error` the crate returns, with the kind TCP would give |
//!
//! Errors are `io::Error`s, and their kinds mean what they mean for TCP:
//!
//! | kind | when |
//! | --- | --- |
//! | `HostUnreachable` | the broker cannot be reached (not running, not at that address) |
//! | `ConnectionRefused` | the broker is there, but nothing listens on the queue |
//! | `AddrInUse` | another listener holds the queue |
//! | `PermissionDenied` | the broker refused the user name, password or virtual host |
//! | `InvalidInput` | a malformed URL, queue name or option |
//! | `InvalidData` | a failed TLS handshake; a peer that broke the protocol |
//! | `TimedOut` | a connect or handshake took longer than its timeout |
//! | `WouldBlock` | a read or write timeout passed (as on Unix) |
//! | `BrokenPipe`, `ConnectionReset` | the peer went away, or reset the stream |
//! | `ConnectionAborted` | the broker connection was lost |
//! | `Unsupported` | `amqps://` in a build without the `tls` feature |
//!
//! # Cargo features
//!
//! None is on by default: a dependency on the crate is the library alone.
//!
//! | feature | adds | needs |
//! | --- | --- | --- |
//! | `tls` | `amqps://` URLs, with RabbitMQ's TLS URI parameters (`cacertfile`, `certfile`, `keyfile`, `verify`, `server_name_indication`; see [`TlsSettings`]) | the system's OpenSSL (Debian: `libssl-dev`, `pkg-config`) |
//! | `noise` | [`secure`]: end-to-end authentication and encryption over a stream or any other connection (Noise protocol, pre-shared key or key pairs) | nothing more (`snow`, with `ring`'s ciphers) |
//! | `bridge` | the `amqp-bridge` command-line tool (`cargo install amqp-stream --features bridge`); turns on `noise` | nothing more (`clap`, `env_logger`, `toml`, `signal-hook`, …) |
//!
//! # Protocol
//!
//! Streams negotiate one of three protocol versions when they connect
//! (version 1 is what the Go implementation speaks; versions 2 and 3 add
//! flow control, sequence numbers, keepalive and reset, and version 3
//! shares one queue among all streams of a connection). The [`wire`]
//! module describes each message by message.
//!
//! # Guarantees
//!
//! * Every byte a `write` returned `Ok` for reaches the peer's reader, in
//!   order, before any FIN; otherwise the stream fails on both ends (an
//!   error on the peer's `read`, never a clean end of the stream after
//!   part of the data).
//! * [`Write::flush`](std::io::Write::flush) publishes any gathered small
//!   writes and returns once the broker has confirmed (publisher confirms)
//!   every byte written before it. A message the broker refuses (a nack,
//!   for example from a full queue that rejects publishes) or returns
//!   fails the whole stream: that `flush` and every later call fail, and
//!   the peer is reset (or, when even that is refused, finds this end
//!   gone). On a stream closed cleanly in both directions with everything
//!   confirmed, `flush` returns `Ok`, as it does on a `TcpStream`.
//! * [`Stream::shutdown`] with `Shutdown::Write` returns once the FIN is
//!   handed to the broker connection, behind every byte any thread's
//!   `write` got `Ok` for; a write blocked in another thread (on the
//!   peer's window or a full write buffer) wakes with `BrokenPipe`.
//! * Dropping the last handle of a stream sends the FIN (if not sent) and
//!   waits, up to the [linger](StreamOptions::linger) time, until the
//!   broker has confirmed everything; then it deletes the stream's queue.
//!   With received data unread, or with [`Stream::set_linger`] zero, it
//!   aborts the stream instead (version 2: a reset; version 1: no FIN, the
//!   queue goes), as closing a TCP socket does.
//! * With version 2, a writer never gets more than the peer's
//!   [window](StreamOptions::window) ahead of the peer's reader: memory
//!   and broker queues stay bounded whatever the reader's pace.
//!
//! # Clusters
//!
//! Every function that takes a broker URL (and the bridge's `--url`,
//! `AMQP_URL`) also takes the nodes of one RabbitMQ cluster as a
//! comma-separated list of full URLs, the form of RabbitMQ's PerfTest
//! `--uris` and Shovel URI lists:
//! `amqp://app:pw@node1:5672/%2f,amqp://app:pw@node2:5672/%2f`. Each
//! address has its own host, port, credentials and TLS; all name the same
//! virtual host. A connection goes to the first node that answers, in a
//! random order so that clients spread over the nodes, within the connect
//! timeout as a whole; when none does, the error names each failure (see
//! [`BrokerUrls`]). Ends on different nodes reach each other through the
//! cluster; [`Addr`]s name the node an end's connection is on.
//!
//! A stream's queues (and a listener's) are exclusive to its connection,
//! so they live on that connection's node and go with it: when a node
//! stops, the streams and listeners connected through it fail as on any
//! lost connection (a [reconnecting](StreamOptions::reconnect) listener
//! binds again through another node, the node it lost tried last), and
//! the ends connected through other nodes see their peer gone.
//!
//! # End-to-end encryption
//!
//! The broker (and whoever runs it) can read and change every byte of a
//! stream. With the `noise` feature, [`secure`] adds a layer over a
//! stream (or any other connection): both ends hold a key (a pre-shared
//! key, or key pairs with the server's public key pinned), and the broker
//! carries only authenticated ciphertext.
//!
//! # Logging
//!
//! The crate logs through the `log` facade (a rejected connection request
//! at `warn`, connection events at `info` and `debug`) and never installs
//! a logger. Broker URLs are logged, printed and put in errors without
//! their password.
//!
//! amiquip, underneath, logs every method of the AMQP login at `debug`
//! (target `amiquip::io_loop::handshake_state`), the one carrying the
//! password among them. The crate never gives amiquip the password: it
//! logs in with a mask of it (as many `*` as the password has bytes), and
//! the crate's own socket puts the password in place of the mask on its
//! way to the broker. So amiquip's record shows the user name and the
//! mask, and the crate touches no logging state of the process (such as
//! `log::set_max_level`): the levels and filters are the application's.

// The front page links `secure`, there only with `noise` (as on docs.rs).
#![cfg_attr(not(feature = "noise"), allow(rustdoc::broken_intra_doc_links))]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The front doors (`std::net`'s shapes) and what users configure.
mod addr;
mod connector;
mod error;
mod listener;
mod lock;
mod options;
mod stream;
mod version;
pub mod wire;
// The wire's frames and handshakes, as pure functions.
mod protocol;
// A stream's own state, whatever carries it: no I/O.
mod session;
// What carries streams: broker connections, the demultiplexer, workers.
#[cfg(feature = "noise")]
#[cfg_attr(docsrs, doc(cfg(feature = "noise")))]
pub mod secure;
mod transport;

pub use addr::Addr;
pub use connector::Connector;
pub use error::Error;
pub use listener::{Incoming, Listener};
pub use options::StreamOptions;
pub use stream::Stream;
pub use transport::connection::tls_settings::TlsSettings;
pub use transport::connection::url::BrokerUrl;
pub use transport::connection::urls::BrokerUrls;
pub use version::ProtocolVersion;

/// The README's code blocks, run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
