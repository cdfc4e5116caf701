//! The handshake as the worker runs it: publishing our SYN or SYN-ACK and
//! waiting for the answer (client) or the broker's confirm (listener).

use super::assignment::Agreed;
use super::publisher::{Publisher, Transport};
use super::role::Role;
use crate::error::Error;
use crate::options::StreamOptions;
use crate::protocol::handshake::{self, Extra, Offer};
use crate::transport::bounded_wait;
use crate::transport::connection::BrokerConnection;
use crate::version::ProtocolVersion;
use amiquip::{ConsumerMessage, Return};
use crossbeam_channel::{Receiver, after, never, select};
use log::debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publishes our handshake message: the SYN to the listener or the
/// SYN-ACK to the client. Returns the version-2 offer it carried.
pub(super) fn send_handshake(
    role: &Role,
    local_queue: &str,
    options: &StreamOptions,
    publisher: &mut Publisher<impl Transport>,
) -> Result<Option<Offer>, Error> {
    let window = options.get_window();
    let own = publisher.own_id().map(str::to_string);
    let (to, stream, offer, extra, doing) = match role {
        Role::Client { listener_queue, .. } => (
            listener_queue,
            own.clone(),
            handshake::client_offer(options.get_protocol_version(), window),
            Extra {
                stream_id: own.as_deref(),
                upgrade: None,
            },
            "connecting to",
        ),
        Role::Server {
            client_queue,
            version,
            client_stream,
            ..
        } => (
            client_queue,
            client_stream.clone(),
            handshake::server_offer(*version, window),
            Extra {
                stream_id: own.as_deref(),
                // A listener free to choose takes version-3 requests too.
                upgrade: (*version == ProtocolVersion::V2
                    && options.get_protocol_version().is_none())
                .then_some(3),
            },
            "answering",
        ),
    };
    let mut properties = handshake::handshake_properties(local_queue, offer, extra);
    if let Role::Client {
        deadline: Some(deadline),
        ..
    } = role
    {
        // A request whose client has given up expires in the listener's
        // queue instead of costing the listener a stream nobody takes
        // (a burst larger than the backlog leaves many).
        properties = properties.with_expiration(handshake::expiration(*deadline));
    }
    publisher
        .publish_to(to, stream.as_deref().unwrap_or_default(), &[], properties)
        .map_err(|e| Error::broker(format!("{doing} {to:?}"), e))?;
    Ok(offer)
}

/// Waits for the handshake to complete: the client for the SYN-ACK, the
/// listener for the broker's confirm of its SYN-ACK; either gives up after
/// the handshake timeout.
///
/// A SYN published just as the listener's queue is deleted can be routed
/// and then lost with the queue, with no return: so a client still
/// waiting after a keepalive interval checks that the queue exists, and
/// is refused at once when it does not. The check is a broker round trip
/// with no deadline of its own (for ever on a link that stalled): it runs
/// on a helper thread, and the wait goes on meanwhile, deadline included.
///
/// Feeds that end (the returns, the deliveries) mean the connection was
/// lost: `ConnectionAborted`, never a refusal, which would say that
/// nothing listens.
pub(super) fn await_handshake(
    connection: &Arc<BrokerConnection>,
    role: &Role,
    sent: Option<Offer>,
    options: &StreamOptions,
    inbound: Inbound<'_, '_>,
    publisher: &mut Publisher<impl Transport>,
) -> Result<Agreed, Error> {
    let Inbound {
        deliveries,
        consumer,
        returns,
        believed_untied,
    } = inbound;
    match role {
        Role::Client {
            listener_queue,
            deadline,
            timeout,
            v3,
            listener_connection,
        } => {
            let timer = deadline.map(crossbeam_channel::at).unwrap_or_else(never);
            // Checked after a keepalive interval, then less often, up to
            // every few intervals (each check is an error line in the
            // broker's log), on a thread of its own so that the deadline
            // holds on a stalled link; the check under way, if one is,
            // answers whether the listener's queue is gone.
            let interval = options.get_keepalive_interval();
            let mut check_delay = interval;
            let mut check = after(check_delay);
            let mut checking: Option<Receiver<bool>> = None;
            let nothing = never();
            let no_listener = || Error::ConnectionRefused {
                queue: listener_queue.clone(),
            };
            let connection_lost = || lost(&format!("connecting to {listener_queue:?}"));
            // An answer that names no stream, not believed (yet), and when
            // to ask again whether it stands.
            let mut doubted = None;
            let mut recheck = never();
            let answer = loop {
                select! {
                recv(check) -> _ => if checking.is_none() {
                    let (connection, queue) = (Arc::clone(connection), listener_queue.clone());
                    checking = Some(bounded_wait::spawn("amqp-stream-check", move || {
                        queue_is_gone(&connection, &queue, interval)
                    }));
                },
                recv(checking.as_ref().unwrap_or(&nothing)) -> gone => {
                    checking = None;
                    if gone == Ok(true) {
                        return Err(no_listener());
                    }
                    check_delay = (check_delay * 2).min(interval * MAX_CHECK_INTERVALS);
                    check = after(check_delay);
                },
                recv(recheck) -> _ => {
                    if !vouched_for(connection, listener_connection, interval, *deadline)
                        && let Some(answer) = doubted.take()
                    {
                        break answer;
                    }
                    recheck = after(interval);
                },
                recv(returns) -> returned => return Err(match returned {
                    Ok(_) => no_listener(),
                    Err(_) => connection_lost(),
                }),
                recv(deliveries) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => {
                        let untied = *v3 && delivery.properties.correlation_id().is_none();
                        if untied
                            && vouched_for(connection, listener_connection, interval, *deadline)
                        {
                            debug!(
                                "connecting to {listener_queue:?}: an answer that names no \
                                 stream while the version-3 listener's connection queue {:?} \
                                 is there: not believed",
                                listener_connection.as_deref().unwrap_or_default()
                            );
                            doubted = Some(delivery);
                            recheck = after(interval);
                            continue;
                        }
                        break delivery;
                    }
                    Ok(other) => return Err(consumer_ended(listener_queue, other)),
                    Err(_) => return Err(connection_lost()),
                },
                recv(timer) -> _ => return Err(Error::TimedOut {
                    what: format!("connecting to {listener_queue:?}"),
                    after: timeout.unwrap_or_default(),
                }),
                }
            };
            if *v3
                && answer.properties.correlation_id().is_none()
                && let (Some(believed), Some(untied)) = (
                    believed_untied,
                    handshake::untied_answer(&answer.body, &answer.properties),
                )
            {
                believed(untied.server_queue);
            }
            let agreed = handshake::parse_accept(&answer.body, &answer.properties)
                .map_err(|reason| refused(listener_queue, &answer.body, reason))
                .and_then(|accept| {
                    let version = handshake::client_version(
                        sent,
                        &accept,
                        options.get_protocol_version(),
                        *v3,
                    )
                    .map_err(|reason| Error::Protocol {
                        queue: listener_queue.clone(),
                        reason,
                    })?;
                    Ok(Agreed {
                        peer_queue: accept.server_queue.to_string(),
                        version,
                        peer_window: accept.offer.map(|offer| offer.window),
                        peer_stream: accept.stream_id.map(str::to_string),
                        upgrade: accept.upgrade.is_some_and(|v| v >= 3),
                        peer_message_cost: accept
                            .message_cost
                            .filter(|_| version >= ProtocolVersion::V3),
                    })
                });
            if let Some(consumer) = consumer {
                let _ = consumer.ack(answer);
            }
            agreed
        }
        Role::Server {
            client_queue,
            version,
            offer,
            client_stream,
            client_message_cost,
        } => {
            let seq = publisher.published;
            // The broker may hold the answer back (a resource alarm blocks
            // publishing): give up after the handshake timeout.
            let timeout = options.get_handshake_timeout();
            let timer = timeout.map(after).unwrap_or_else(never);
            loop {
                select! {
                    recv(returns) -> returned => return Err(match returned {
                        Ok(_) => Error::ConnectionRefused { queue: client_queue.clone() },
                        Err(_) => lost(&format!("answering {client_queue:?}")),
                    }),
                    recv(timer) -> _ => return Err(Error::TimedOut {
                        what: format!("answering {client_queue:?}"),
                        after: timeout.unwrap_or_default(),
                    }),
                    recv(publisher.confirms) -> confirm => {
                        let confirm = confirm.map_err(|_| lost(&format!("answering {client_queue:?}")))?;
                        publisher.absorb(confirm);
                        if publisher.nacked {
                            return Err(Error::Protocol {
                                queue: client_queue.clone(),
                                reason: "the broker refused the handshake answer".to_string(),
                            });
                        }
                        // A returned message is returned before it is confirmed.
                        if publisher.confirmed >= seq && returns.is_empty() {
                            return Ok(Agreed {
                                peer_queue: client_queue.clone(),
                                version: *version,
                                peer_window: sent.and(offer.map(|offer| offer.window)),
                                peer_stream: client_stream.clone(),
                                upgrade: false,
                                peer_message_cost: client_message_cost
                                    .filter(|_| *version >= ProtocolVersion::V3),
                            });
                        }
                    },
                }
            }
        }
    }
}

/// What the handshake receives: the stream's deliveries (with the
/// consumer to acknowledge them on, versions 1 and 2) and its returns.
pub(super) struct Inbound<'a, 'c> {
    pub(super) deliveries: &'a Receiver<ConsumerMessage>,
    pub(super) consumer: Option<&'a amiquip::Consumer<'c>>,
    pub(super) returns: &'a Receiver<Return>,
    /// Told the queue an answer naming no stream named, when a version-3
    /// client takes it as its refusal (see `Mux::untied_answer_believed`).
    pub(super) believed_untied: Option<&'a dyn Fn(&str)>,
}

/// The error for a listener's answer that is not a valid SYN-ACK: a
/// listener refuses by answering with a body that says why.
fn refused(queue: &str, body: &[u8], reason: String) -> Error {
    if body.is_empty() {
        Error::Protocol {
            queue: queue.to_string(),
            reason,
        }
    } else {
        let said = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        debug!("listener {queue:?} refused the connection: {said}");
        Error::ConnectionRefused {
            queue: queue.to_string(),
        }
    }
}

/// The error for a connection lost while `doing` something (one of the
/// handshake's feeds ended): `ConnectionAborted`.
fn lost(doing: &str) -> Error {
    Error::broker(doing, amiquip::Error::EventLoopDropped)
}

/// The error for a consumer that ended during the handshake.
fn consumer_ended(queue: &str, message: ConsumerMessage) -> Error {
    let context = format!("connecting to {queue:?}");
    match message {
        ConsumerMessage::ServerClosedChannel(err)
        | ConsumerMessage::ServerClosedConnection(err) => Error::broker(context, err),
        _ => Error::broker(context, amiquip::Error::ClientClosedChannel),
    }
}

/// The longest wait between two checks that a listener's queue exists,
/// while a client waits for its answer, in keepalive intervals: a
/// listener that dies mid-handshake is noticed within about this many.
const MAX_CHECK_INTERVALS: u32 = 4;

/// Whether `queue` no longer exists: the answer of the connection's
/// latest check of it if younger than `period` (see
/// [`QueueChecks`](crate::transport::connection::queue_check::QueueChecks)), else a passive
/// declare's.
fn queue_is_gone(connection: &BrokerConnection, queue: &str, period: Duration) -> bool {
    connection
        .queue_checks()
        .is_gone(queue, period, || declare_finds_gone(connection, queue))
}

/// Whether a version-3 connect that gets an answer naming no stream (as a
/// version-1 listener, or one built before version 3, answers) must not
/// believe it. Anyone who can publish to the connection's queue can send
/// such an answer, and nothing ties it to our SYN (a version-3 answer
/// names our stream id, which only the listener learned). So when the
/// connection has had a version-3 answer from this listener, from
/// `listener_connection`, and that queue is still there, the listener
/// that answered then is (most likely) the one we asked: its own answer
/// is on its way, and the connect waits for it. Once that queue is gone
/// (the listener restarted, as an older one say), the answer stands.
///
/// The check is a broker round trip: with a `deadline` it runs on a
/// helper thread and counts as "there" (the answer stays doubted) once
/// the deadline has passed, so that the connect's own timer ends it on a
/// stalled link.
fn vouched_for(
    connection: &Arc<BrokerConnection>,
    listener_connection: &Option<String>,
    period: Duration,
    deadline: Option<Instant>,
) -> bool {
    let Some(queue) = listener_connection.clone() else {
        return false;
    };
    let connection = Arc::clone(connection);
    let there = bounded_wait::until(deadline, "amqp-stream-check", move || {
        Ok(!queue_is_gone(&connection, &queue, period))
    });
    !matches!(there, Some(Ok(false)))
}

/// Whether `queue` no longer exists, by a passive declare on a channel of
/// its own (a failed one closes its channel). Anything but "not found"
/// (the queue is there, exclusive to its listener's connection, or the
/// check itself failed) counts as there: the other paths report those.
fn declare_finds_gone(connection: &BrokerConnection, queue: &str) -> bool {
    let Ok(channel) = connection.open_channel("checking a listener's queue") else {
        return false;
    };
    match channel.queue_declare_passive(queue) {
        Ok(_) => {
            let _ = channel.close();
            false
        }
        Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => true,
        Err(_) => false,
    }
}
