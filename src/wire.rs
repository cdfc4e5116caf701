//! The wire protocol, versions 1 to 3, message by message.
//!
//! This module holds no code: it is the specification of what a stream
//! sends through the broker, for whoever writes another implementation,
//! debugs with `rabbitmqctl` or a packet capture, or wants to know what a
//! stream costs the broker. Streams negotiate the version when they
//! connect; nothing here needs choosing by hand.
//!
//! | version | speaks with | used when |
//! | --- | --- | --- |
//! | 1 | the Go implementation, and any version | a Go peer is on the other end (negotiated automatically) |
//! | 2 | amqp-stream | one stream per [`Stream::connect`], or a peer built before version 3 |
//! | 3 | amqp-stream | a [`Connector`]'s streams to a listener, from the second on: setup in about 1 ms, no broker queue, channel or thread per stream ([`StreamOptions::protocol_version`] pins one) |
//!
//! Version 1 is the original protocol, compatible with the Go
//! implementation. Version 2 adds credit flow control (a writer stays
//! within the reader's receive window, so neither the broker's queue nor
//! memory grows with a slow reader), sequence numbers (a lost or repeated
//! message is an `InvalidData` error), keepalive frames and reset on
//! abortive close. Version 3 keeps version 2's frames but gives a stream
//! no broker queue, channel or acknowledgements of its own.
//!
//! # Version 1: how a stream maps onto AMQP
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
//!   `ConnectionRefused`, at once. With a
//!   [handshake timeout](StreamOptions::handshake_timeout) (the default),
//!   the request's AMQP `expiration` is the time left until it, in
//!   milliseconds: a request whose client has given up expires in the
//!   queue instead of being answered (listeners need not look at it).
//! * **Accept.** The listener checks the request (empty body, a
//!   `reply_to`; anything else is rejected and logged), declares and
//!   consumes its queue `S` for this stream and answers `C` with an empty
//!   message whose `reply_to = S`. An answer with a body is a refusal (a
//!   closing listener sends one to the requests it still held).
//! * **Data.** Each side publishes to the other's queue; the bodies,
//!   concatenated in order, are the stream. One message carries at most
//!   [`StreamOptions::max_message_size`] bytes. Small writes are gathered:
//!   a partial message waits while earlier data awaits the broker's
//!   confirm and the writes behind it join it (Nagle's algorithm with the
//!   confirm as the ACK; [`Stream::set_nodelay`] turns it off). A write
//!   with nothing unconfirmed before it leaves at once.
//! * **FIN.** An empty message ends the sender's direction; the reader
//!   gets `Ok(0)` after all earlier data. The other direction stays open.
//! * **Teardown.** A side that has sent and received FIN cancels its
//!   consumer, which deletes its queue.
//!
//! Version 1 cannot tell a dead peer from a quiet one, so each version-1
//! stream checks every [keepalive interval](StreamOptions::keepalive_interval)
//! that the peer's queue still exists (a passive declare: the queue dies
//! with its owner's connection; RabbitMQ logs each such check of a queue
//! exclusive to another connection as a channel error, see
//! [`StreamOptions::keepalive_interval`]). A write to a vanished queue is returned
//! by the broker. Either way the stream's writes then fail with
//! `BrokenPipe`, and its reads deliver whatever the peer sent before
//! going and then fail with `ConnectionReset`: to keep that order, the
//! stream puts a marker message (AMQP `type`
//! `amqp-stream.local.peer-gone`, with a secret of the stream's own in
//! `message_id` so that nobody else can forge one) on its *own* queue,
//! behind the peer's last data. Losing the broker connection gives
//! `ConnectionAborted`.
//!
//! Version 1 has no reset. An abortive close (dropping a stream that holds
//! unread data, or [`Stream::set_linger`] zero) therefore sends *no* FIN:
//! the stream's queue goes away with its consumer, and the peer finds it
//! gone (`ConnectionReset` after the data that arrived). A FIN is only
//! ever sent after every byte written before it.
//!
//! Queue names chosen by this crate are `amqp-stream.<uuid v4>`: picked by
//! the client so they can be declared without waiting for the broker.
//! A queue named by a peer (a `reply_to`) must be one a peer can own:
//! 1 to 255 bytes, and not starting with `amq.` unless it is one of the
//! `amq.gen-…` names the broker gives a queue declared without a name
//! (as the Go implementation's are). RabbitMQ closes the whole connection
//! that publishes to some reserved names (`amq.rabbitmq.reply-to.a.b`,
//! error 541), so a request naming another is rejected as malformed
//! (and logged), an answer naming one fails the connect with
//! `InvalidData`, and nothing is ever published there.
//! The messages are exactly those of the Go implementation of the same
//! protocol, and the two interoperate.
//!
//! # Version 2
//!
//! Version 2 adds flow control, sequence numbers, keepalive and reset. It
//! is negotiated in the handshake and never sent to a version-1 peer
//! ([`Stream::protocol_version`] tells which one a stream speaks;
//! [`StreamOptions::protocol_version`] pins one).
//!
//! * **Negotiation.** The SYN carries two headers (AMQP 64-bit signed
//!   integers): `x-amqp-stream-version` (the highest version the client
//!   speaks, `2`) and `x-amqp-stream-window` (its receive window in
//!   bytes). A listener that speaks version 2 answers with the same two
//!   headers (its version and window) in the SYN-ACK; a SYN-ACK without
//!   them means version 1. A version-1 listener ignores unknown headers,
//!   so the fallback needs no extra round trip; a SYN without them gets a
//!   version-1 answer. A refusal is, as in version 1, a SYN-ACK with a
//!   body saying why (a listener pinned to version 2 refuses version-1
//!   clients so).
//! * **Frames.** Every message is named by its AMQP `type`:
//!
//!   | `type`      | `message_id`    | body                                     |
//!   |-------------|-----------------|------------------------------------------|
//!   | `data`      | sequence number | stream bytes, never empty                |
//!   | `fin`       | sequence number | empty: the sender's direction ends       |
//!   | `window`    | —               | 8 bytes, big-endian: bytes consumed      |
//!   | `keepalive` | —               | empty                                    |
//!   | `reset`     | —               | why, UTF-8 (may be empty)                |
//!
//!   Data and FIN frames are numbered in decimal from 1 per direction. A
//!   gap or a repeat, a frame without type or number, or an unknown type
//!   fails the stream with `InvalidData` (after the data before it) and
//!   resets it: corruption is never silent. So does a frame of the type
//!   reserved for the local "peer gone" marker without the stream's
//!   secret.
//! * **Credit flow control.** A sender may have at most the peer's window
//!   of bytes written but not consumed by the peer's application. The
//!   receiver reports its cumulative consumed count in a `window` frame
//!   each time half its window has been consumed since the last report,
//!   and senders cut messages to at most half the peer's window, so a
//!   reader that has read everything has always reported enough credit.
//!   A writer out of credit blocks in `write` (or fails with `WouldBlock`
//!   after its write timeout). The receiver enforces its window: a peer
//!   that sends more than a window beyond the consumption the reader has
//!   reported breaks the protocol (`InvalidData`, reset), so a peer that
//!   ignores credit cannot grow the receiver's memory. Acknowledgements go out before each report,
//!   so the broker never holds more than a window per direction.
//!   Window frames share the queue with data: while the application is not
//!   reading, a writer waiting for credit (or the stream's worker, once a
//!   keepalive interval) takes deliveries in and keeps the data, in order,
//!   for the next read.
//! * **Keepalive.** A stream that has sent nothing for a keepalive
//!   interval sends a `keepalive` frame (mandatory, like everything); the
//!   broker returns it if the peer's queue is gone, which is handled as in
//!   version 1. No side channel and no passive declare.
//! * **Reset.** Dropping the last handle of a stream that holds received
//!   data nobody read aborts the stream, as closing a TCP socket with
//!   unread data does: a `reset` frame goes instead of the FIN. The peer's
//!   reads deliver what arrived before it and then fail with
//!   `ConnectionReset`, at once; its writes fail with `ConnectionReset`,
//!   including one blocked waiting for credit. A stream that detects a
//!   protocol violation resets too, saying what it was.
//!
//! # Version 3
//!
//! Version 3 keeps version 2's frames, credit, sequence numbers, keepalive
//! and reset, and changes where the bytes go: a stream end has no broker
//! queue, channel or consumer of its own.
//!
//! * **Addresses.** Each AMQP connection that carries version-3 streams
//!   declares one queue, `amqp-stream.conn.<uuid>` (exclusive,
//!   auto-delete, non-durable), consumed in no-ack mode by one thread, and
//!   opens one publishing channel with confirms. A stream end is that
//!   queue plus a *stream id* it picks (32 hex digits, unique; at most 128
//!   bytes are taken from a peer). Every frame to a stream names it in
//!   `correlation_id`, the sending stream in `app_id` and the sender's
//!   connection queue in `reply_to`; the receiving connection hands it to
//!   the stream it names. A handshake, data, FIN or keepalive for an id it
//!   does not hold (a stream that closed, or a client that gave up before
//!   the SYN-ACK came) is answered with a reset to its sender, whose
//!   frames would otherwise vanish into a queue that outlives the stream,
//!   as TCP answers a segment for a closed socket; anything else for such
//!   an id is dropped. Anyone who can publish to a connection's queue can
//!   send such a frame, so it is answered only when its `reply_to` is
//!   named like a connection's queue (`amqp-stream.conn.` and a UUID),
//!   and a connection sends at most 100 such answers a second to
//!   strangers (as many at once after a quiet second): past
//!   that, the frame is dropped (its sender's next keepalive is answered
//!   later). A frame for a stream id the connection held in the last ten
//!   minutes (the last 16,384 of them) comes from a peer that was told
//!   that id, and is answered from a budget of its own (1,000 a second,
//!   and at most once every 50 ms for each id), so that neither a flood
//!   of frames for made-up ids nor one former peer's flood for its own
//!   id hides a gone stream from its peer. A stream stops sending keepalives once the
//!   peer's FIN has arrived. Publishes are mandatory as in
//!   version 2: a frame to a connection that is gone comes back, which is
//!   how a keepalive finds a dead peer. [`Stream::peer_addr`] and
//!   [`Stream::local_addr`] show `QUEUE#ID`.
//! * **Negotiation.** A version-3 SYN is a version-2 SYN (empty body,
//!   `x-amqp-stream-version: 3`, `x-amqp-stream-window`) whose `reply_to`
//!   is the client connection's queue and which adds the header
//!   `x-amqp-stream-id` (the client's stream id, an AMQP long string). A
//!   listener that speaks version 3 answers with a version-3 SYN-ACK:
//!   `reply_to` its own connection's queue, `x-amqp-stream-version: 3`, its
//!   window and its own `x-amqp-stream-id`, sent with `correlation_id` set
//!   to the client's id. A refusal is a SYN-ACK with a body saying why, with
//!   the client's id in `correlation_id`. Only a version-3 listener can
//!   answer a version-3 SYN (an older one would answer to a queue the
//!   client's stream cannot be told apart on), so a client sends one only
//!   when pinned to version 3, or to a listener that said it takes them: a
//!   listener free to choose answers a version-2 SYN that offered 3 with
//!   version 2 and the header `x-amqp-stream-upgrade: 3`, which the
//!   client's connection remembers for that listener's queue. The first
//!   stream from a `Connector` to a listener is therefore version 2, the
//!   next ones version 3. A listener pinned to version 3 refuses version-2
//!   SYNs; one pinned below 3 refuses version-3 SYNs. Refused, a client
//!   that was not pinned forgets version 3 for that queue and asks again
//!   as version 2. A version-1 (Go) listener that took the queue over
//!   answers a version-3 SYN to the connection's queue with a plain
//!   version-1 SYN-ACK (empty body, `reply_to`, nothing else), and a
//!   listener of this crate built before version 3 takes it for a
//!   version-2 SYN and answers with a version-2 SYN-ACK (the version and
//!   window headers, no stream id, no `correlation_id`). Either names no
//!   stream: it counts as a refusal for every stream of the connection
//!   still waiting for an answer to a version-3 SYN it was not pinned to
//!   (nothing tells which one it answers), and the stream that listener
//!   set up for it is ended three seconds later: a version-1 FIN, or a
//!   version-2 reset. That end is sent only for an answer a stream of the
//!   connection vouches for: a stream that took an answer as its refusal
//!   claims that answer, or, when another stream already claimed it, the
//!   first unclaimed such answer that came after it or comes within a
//!   minute (the one to its own SYN); a stream that does not believe the
//!   answer (below) vouches for nothing, and one whose own version-3
//!   answer comes within those three seconds lets go of what it claimed
//!   (it was a stranger's) and expects nothing more. Each end is one of
//!   our own streams' (no stranger's message adds one), and is sent only
//!   to a queue named like
//!   a version-1 or version-2 stream's (`amq.gen-…`, or `amqp-stream.`
//!   and a UUID): never to a listener's queue, where the FIN's empty body
//!   would be a version-1 SYN, nor to any other queue a stranger names.
//!   (Name a listener `amqp-stream.` and a UUID and it could get one.)
//!   A stream pinned to version 3 gets no answer from such a listener and
//!   times out. Anyone who can publish to the connection's queue (its
//!   name is in every stream's `peer_addr`) can send such an answer too,
//!   and nothing ties it to a SYN: a version-3 answer is tied to its SYN
//!   by the client's stream id in `correlation_id`, which only the
//!   listener learned, but a version-1 listener echoes nothing. So a
//!   connection remembers, for each listener queue, the connection queue
//!   that listener's last version-3 answer came from; while that queue
//!   still exists (a passive declare when the answer comes, and again
//!   each keepalive interval), a waiting stream does not believe an
//!   answer naming no stream and waits for its own. Once it is gone (the
//!   listener restarted, as an older one say), the answer counts as
//!   above. (A connection that has had no version-3 answer from the
//!   listener yet believes it; a version-3 listener that closed while its
//!   connection stays open, followed on its queue by an older one, costs
//!   one connect its handshake timeout. A version-3 listener that answers
//!   more than three seconds after a stranger's forged answer was taken
//!   lets that stranger's chosen queue get one end.) An answer naming a
//!   queue no older listener's stream has (one not named like a
//!   version-1 or version-2 stream's) is forged: no connect takes it.
//!   What a stream lets go goes to a stream that took the same answer and
//!   expects one more, if one does. One gap is left: when connects wait
//!   on an older listener, a stranger's stream-shaped answers that arrive
//!   before or between that listener's answers can take their places (as
//!   many as the stranger sends), so that the stranger's chosen queues
//!   get the FINs (or resets) and the listener's streams for our SYNs stay
//!   open, as for clients that went away. Nothing ties a version-1 answer to its
//!   SYN, so nothing tells the two apart; and that stranger could have
//!   published the same FIN or reset to that queue itself, since versions
//!   1 and 2 take control frames from anyone who can publish to a
//!   stream's queue.
//! * **Delivery.** Nothing is acknowledged: the connection's queue is
//!   consumed in no-ack mode and each stream's credit window bounds what
//!   the broker and the receiver hold for it (a peer that sends beyond it
//!   is `InvalidData` and reset, as in version 2; the connection's
//!   consumer counts what each stream has not taken yet, and past three
//!   times the window drops the peer's frames and aborts the stream there, so
//!   even a stream nobody reads holds no more). Publisher confirms are
//!   kept per stream, so `flush` still means "the broker has it".
//! * **Message cost.** A delivery costs the receiver a few hundred bytes
//!   whatever its body, so a window counted in body bytes alone lets a
//!   peer that writes one byte per message fill hundreds of times the
//!   window's memory. So a version-3 SYN and SYN-ACK carry
//!   `x-amqp-stream-message-cost: 512`: the sender's receiver counts each
//!   data message it has read to the end as that many bytes more when it
//!   decides to send a window report (reports still give the body bytes
//!   consumed), and asks the peer to do the same. A sender whose peer
//!   said so counts each message it has sent as that many bytes in
//!   flight, on top of its body, until a report covers its last byte, and
//!   keeps its bytes within the window and its bytes with that cost within
//!   twice the window (so a writer may still fill the window before it
//!   reads). A receiver counts it in what the peer may have handed it
//!   unread whether or not the peer said so: a peer without the header
//!   (built before it; none was released) sends as before, counting body
//!   bytes only, and a stream that does not read while such a peer writes
//!   a window of messages of a few bytes each fails (`InvalidData`, the
//!   peer ignored flow control) rather than hold them all. A side that
//!   counts the cost only reports sooner, which every version takes.
//! * **Setup and close.** Setup is the SYN and the SYN-ACK; close is the
//!   FIN (or reset). Nothing is declared or deleted per stream.
//!
//! * **Threads.** Per AMQP connection that carries version-3 streams: one
//!   thread consumes the connection's queue and hands frames, confirms and
//!   returns to the streams they name (the demultiplexer), and one engine
//!   thread runs keepalives, closing deadlines and whatever the broker
//!   sends back. A `write`, `flush`, `shutdown` or drop is carried out by
//!   the calling thread itself, which publishes on the connection's
//!   publishing channel; so is the window report a `read` sends.
//! * **Toward resumption.** A stream's id is its own, not its
//!   connection's, every data frame carries a sequence number and every
//!   window report the total of bytes consumed: two ends whose connections
//!   were lost could find each other again by id and resend from the
//!   peer's last report. Not built: an end does not keep the bytes the
//!   peer has not reported consumed (that would hold up to one window per
//!   stream), and no frame re-attaches a stream to a new connection; a
//!   lost connection fails its streams, as for versions 1 and 2.
//!
//! Measured on one two-core machine against raw amiquip in the same run
//! (`cargo run --release --example bench -- --protocol 3`): setup 1.3-1.4
//! ms median (0.24x-0.27x a raw reply queue per request; version 2:
//! 2.4 ms, 0.82x), 1,000 concurrent 64 KiB echoes in 0.64x-0.75x the raw
//! baseline's wall time (version 2: 2.25x); 10,000 streams on one `Connector` and one
//! `Listener`, each echoing 16 KiB, with 4 library threads, 5 broker
//! channels and 3 queues in all and about 40 KiB resident per stream.

#[allow(unused_imports)] // for the links above
use crate::{Connector, Stream, StreamOptions};
