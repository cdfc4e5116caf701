//! The handshake as the worker runs it: publishing our SYN or SYN-ACK and
//! waiting for the answer (client) or the broker's confirm (listener).

use super::publisher::Publisher;
use super::{Agreed, Role};
use crate::error::Error;
use crate::options::StreamOptions;
use crate::protocol::handshake::{self, Offer};
use amiquip::{ConsumerMessage, Return};
use crossbeam_channel::{Receiver, after, never, select};
use log::debug;

/// Publishes our handshake message: the SYN to the listener or the
/// SYN-ACK to the client. Returns the version-2 offer it carried.
pub(super) fn send_handshake(
    role: &Role,
    local_queue: &str,
    options: &StreamOptions,
    publisher: &mut Publisher<'_>,
) -> Result<Option<Offer>, Error> {
    let window = options.get_window();
    let (to, offer, doing) = match role {
        Role::Client { listener_queue, .. } => (
            listener_queue,
            handshake::client_offer(options.get_protocol_version(), window),
            "connecting to",
        ),
        Role::Server {
            client_queue,
            version,
            ..
        } => (
            client_queue,
            handshake::server_offer(*version, window),
            "answering",
        ),
    };
    publisher
        .publish(to, &[], handshake::handshake_properties(local_queue, offer))
        .map_err(|e| Error::broker(format!("{doing} {to:?}"), e))?;
    Ok(offer)
}

/// Waits for the handshake to complete: the client for the SYN-ACK, the
/// listener for the broker's confirm of its SYN-ACK; either gives up after
/// the handshake timeout.
pub(super) fn await_handshake(
    role: &Role,
    sent: Option<Offer>,
    options: &StreamOptions,
    consumer: &amiquip::Consumer<'_>,
    publisher: &mut Publisher<'_>,
    returns: &Receiver<Return>,
) -> Result<Agreed, Error> {
    match role {
        Role::Client {
            listener_queue,
            deadline,
            timeout,
        } => {
            let timer = deadline.map(crossbeam_channel::at).unwrap_or_else(never);
            let answer = select! {
                recv(returns) -> _ => return Err(Error::ConnectionRefused { queue: listener_queue.clone() }),
                recv(consumer.receiver()) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => delivery,
                    Ok(other) => return Err(consumer_ended(listener_queue, other)),
                    Err(_) => return Err(Error::broker(
                        format!("connecting to {listener_queue:?}"),
                        amiquip::Error::EventLoopDropped,
                    )),
                },
                recv(timer) -> _ => return Err(Error::TimedOut {
                    what: format!("connecting to {listener_queue:?}"),
                    after: timeout.unwrap_or_default(),
                }),
            };
            let agreed = handshake::parse_accept(&answer.body, &answer.properties)
                .map_err(|reason| refused(listener_queue, &answer.body, reason))
                .and_then(|accept| {
                    let version = handshake::client_version(
                        sent,
                        accept.offer,
                        options.get_protocol_version(),
                    )
                    .map_err(|reason| Error::Protocol {
                        queue: listener_queue.clone(),
                        reason,
                    })?;
                    Ok(Agreed {
                        peer_queue: accept.server_queue.to_string(),
                        version,
                        peer_window: accept.offer.map(|offer| offer.window),
                    })
                });
            let _ = consumer.ack(answer);
            agreed
        }
        Role::Server {
            client_queue,
            version,
            offer,
        } => {
            let seq = publisher.published;
            // The broker may hold the answer back (a resource alarm blocks
            // publishing): give up after the handshake timeout.
            let timeout = options.get_handshake_timeout();
            let timer = timeout.map(after).unwrap_or_else(never);
            loop {
                select! {
                    recv(returns) -> _ => return Err(Error::ConnectionRefused { queue: client_queue.clone() }),
                    recv(timer) -> _ => return Err(Error::TimedOut {
                        what: format!("answering {client_queue:?}"),
                        after: timeout.unwrap_or_default(),
                    }),
                    recv(publisher.confirms) -> confirm => {
                        let confirm = confirm.map_err(|_| Error::broker(
                            format!("answering {client_queue:?}"),
                            amiquip::Error::EventLoopDropped,
                        ))?;
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
                            });
                        }
                    },
                }
            }
        }
    }
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

/// The error for a consumer that ended during the handshake.
fn consumer_ended(queue: &str, message: ConsumerMessage) -> Error {
    let context = format!("connecting to {queue:?}");
    match message {
        ConsumerMessage::ServerClosedChannel(err)
        | ConsumerMessage::ServerClosedConnection(err) => Error::broker(context, err),
        _ => Error::broker(context, amiquip::Error::ClientClosedChannel),
    }
}
