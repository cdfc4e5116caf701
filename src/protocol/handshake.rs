//! The handshake: the SYN a client sends, the SYN-ACK a listener answers
//! with, and the negotiation of the protocol version they carry.
//!
//! Version 1 handshake messages have an empty body and a `reply_to`. A
//! side that speaks version 2 adds two headers; a version-1 peer ignores
//! them, and a version-2 side that gets none back speaks version 1.
//!
//! A version-3 SYN also names the client's stream id
//! ([`STREAM_ID_HEADER`]) and its `reply_to` is the client connection's
//! queue, not a queue of the stream's own: only a listener that speaks
//! version 3 can answer it, so a client sends one only to a listener it
//! knows speaks it (see [`UPGRADE_HEADER`]) or when pinned to version 3.

use super::check_peer_queue;
use crate::version::ProtocolVersion;
use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use std::fmt;

/// What one message costs a version-3 receiver beyond its body, in bytes
/// of its window: about what it holds for a delivery (properties, routing
/// and the delivery itself). Counted by both ends when both say so in the
/// handshake, so that a window of one-byte messages takes a few times the
/// window in memory and not some five hundred times.
///
/// The sender keeps its bytes in flight within the window, as without the
/// cost (a writer may fill the whole window before it reads), and its
/// bytes plus its messages' cost within twice the window. The receiver
/// counts each data message it has read to the end as this
/// much consumed on top of its bytes when it decides to report (its
/// reports still give body bytes); the sender counts each message it sent
/// as this much in flight until a report covers the message's last byte.
/// A reader that has read everything has therefore reported enough for
/// the next message, as without the cost.
pub(crate) const MESSAGE_COST: u64 = 512;

/// Header with the highest protocol version the sender speaks.
pub(crate) const VERSION_HEADER: &str = "x-amqp-stream-version";
/// Header with the sender's receive window in bytes.
pub(crate) const WINDOW_HEADER: &str = "x-amqp-stream-window";
/// Header of a version-3 SYN or SYN-ACK: the sender's stream id, which
/// the peer puts in the `correlation_id` of every frame it sends back.
pub(crate) const STREAM_ID_HEADER: &str = "x-amqp-stream-id";
/// Header of a version-2 SYN-ACK from a listener that also takes
/// version-3 requests: the version they would get (3).
pub(crate) const UPGRADE_HEADER: &str = "x-amqp-stream-upgrade";
/// Header of a version-3 SYN or SYN-ACK from a side that counts each
/// message as this many bytes of credit on top of its body (see
/// [`MESSAGE_COST`]): the peer may count its
/// own messages the same way against the sender's window.
pub(crate) const MESSAGE_COST_HEADER: &str = "x-amqp-stream-message-cost";
/// The largest message cost taken from a peer.
const MAX_MESSAGE_COST: u64 = 64 * 1024;
/// The longest stream id taken from a peer.
pub(crate) const MAX_STREAM_ID: usize = 128;

/// What a handshake message adds for version 3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extra<'a> {
    /// The sender's stream id (version 3).
    pub(crate) stream_id: Option<&'a str>,
    /// A version-2 answer's word that version-3 requests are welcome.
    pub(crate) upgrade: Option<u64>,
}

/// What a version-2 side says about itself in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offer {
    /// The highest version the sender speaks (2 for this crate).
    pub(crate) version: u64,
    /// How many bytes the sender accepts ahead of its reader.
    pub(crate) window: u64,
}

impl Offer {
    /// Our offer: the given version and receive window.
    pub(crate) fn ours(version: ProtocolVersion, window: usize) -> Offer {
        Offer {
            version: version.number(),
            window: window as u64,
        }
    }
}

/// Properties of a SYN or SYN-ACK: `reply_to` names the queue the sender
/// receives on; an offer adds the version-2 headers.
pub(crate) fn handshake_properties(
    reply_to: &str,
    offer: Option<Offer>,
    extra: Extra<'_>,
) -> AmqpProperties {
    let properties = AmqpProperties::default().with_reply_to(reply_to.to_string());
    match offer {
        None => properties,
        Some(offer) => {
            let mut headers = FieldTable::new();
            headers.insert(VERSION_HEADER.to_string(), wire_integer(offer.version));
            headers.insert(WINDOW_HEADER.to_string(), wire_integer(offer.window));
            if let Some(id) = extra.stream_id {
                headers.insert(
                    STREAM_ID_HEADER.to_string(),
                    AmqpValue::LongString(id.to_string()),
                );
            }
            if let Some(version) = extra.upgrade {
                headers.insert(UPGRADE_HEADER.to_string(), wire_integer(version));
            }
            if offer.version >= 3 {
                headers.insert(MESSAGE_COST_HEADER.to_string(), wire_integer(MESSAGE_COST));
            }
            properties.with_headers(headers)
        }
    }
}

/// A SYN's AMQP `expiration`: the milliseconds left until `deadline`
/// (at least 1, as 0 would expire it before any consumer could take it).
pub(crate) fn expiration(deadline: std::time::Instant) -> String {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    left.as_millis().max(1).to_string()
}

/// The sender's stream id, if the message carries one; `Err` if it is
/// malformed.
pub(crate) fn read_stream_id(properties: &AmqpProperties) -> Result<Option<&str>, String> {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.get(STREAM_ID_HEADER))
    else {
        return Ok(None);
    };
    match value {
        AmqpValue::LongString(id) if !id.is_empty() && id.len() <= MAX_STREAM_ID => Ok(Some(id)),
        other => Err(format!(
            "{STREAM_ID_HEADER} must be a string of 1 to {MAX_STREAM_ID} bytes, not {other:?}"
        )),
    }
}

/// The version a version-2 answer says version-3 requests would get.
pub(crate) fn read_upgrade(properties: &AmqpProperties) -> Option<u64> {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.get(UPGRADE_HEADER))
        .and_then(as_u64)
}

/// The per-message cost a version-3 peer counts, if it says one (a
/// value out of range counts as none).
pub(crate) fn read_message_cost(properties: &AmqpProperties) -> Option<u64> {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.get(MESSAGE_COST_HEADER))
        .and_then(as_u64)
        .filter(|cost| (1..=MAX_MESSAGE_COST).contains(cost))
}

/// A u64 as the signed 64-bit integer RabbitMQ understands.
fn wire_integer(value: u64) -> AmqpValue {
    AmqpValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX))
}

/// Any AMQP integer that is not negative, as a u64.
fn as_u64(value: &AmqpValue) -> Option<u64> {
    match *value {
        AmqpValue::ShortShortUInt(v) => Some(v.into()),
        AmqpValue::ShortUInt(v) => Some(v.into()),
        AmqpValue::LongUInt(v) => Some(v.into()),
        AmqpValue::ShortShortInt(v) => u64::try_from(v).ok(),
        AmqpValue::ShortInt(v) => u64::try_from(v).ok(),
        AmqpValue::LongInt(v) => u64::try_from(v).ok(),
        AmqpValue::LongLongInt(v) => u64::try_from(v).ok(),
        AmqpValue::Timestamp(v) => Some(v),
        _ => None,
    }
}

/// The offer in a handshake message: `None` from a version-1 peer (no
/// version header), an error for headers that are there but malformed.
pub(crate) fn read_offer(properties: &AmqpProperties) -> Result<Option<Offer>, String> {
    let Some(headers) = properties.headers() else {
        return Ok(None);
    };
    let Some(version) = headers.get(VERSION_HEADER) else {
        return Ok(None);
    };
    let version = as_u64(version)
        .filter(|v| *v >= 1)
        .ok_or_else(|| format!("{VERSION_HEADER} must be a positive integer, not {version:?}"))?;
    if version == 1 {
        return Ok(None);
    }
    let window = headers
        .get(WINDOW_HEADER)
        .ok_or_else(|| format!("{WINDOW_HEADER} is missing"))?;
    let window = as_u64(window).filter(|w| *w >= 2).ok_or_else(|| {
        format!("{WINDOW_HEADER} must be an integer of at least 2, not {window:?}")
    })?;
    Ok(Some(Offer { version, window }))
}

/// Why a message on a listener's control queue is not a connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadRequest {
    /// The request carries a body; a SYN has none.
    HasBody(usize),
    /// The request names no queue to answer to.
    NoReplyTo,
    /// The queue the request names is not one a client can own.
    BadReplyTo(String),
    /// The version-2 headers are malformed.
    BadHeader(String),
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRequest::HasBody(len) => write!(
                f,
                "a connection request has an empty body, this one has {len} bytes"
            ),
            BadRequest::NoReplyTo => {
                f.write_str("a connection request needs reply_to naming the client's queue")
            }
            BadRequest::BadReplyTo(why) => write!(f, "bad connection request reply_to: {why}"),
            BadRequest::BadHeader(why) => write!(f, "bad connection request header: {why}"),
        }
    }
}

/// A checked connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    /// The client's queue, which the answer goes to.
    pub(crate) client_queue: &'a str,
    /// The client's version-2 offer, if it made one.
    pub(crate) offer: Option<Offer>,
    /// A version-3 request: the client's stream id.
    pub(crate) stream_id: Option<&'a str>,
    /// The per-message cost the client counts (version 3).
    pub(crate) message_cost: Option<u64>,
}

/// The queue named by `reply_to`, if any.
fn reply_to(properties: &AmqpProperties) -> Option<&str> {
    properties
        .reply_to()
        .as_deref()
        .filter(|queue| !queue.is_empty())
}

/// Checks a message from a control queue.
pub(crate) fn parse_request<'a>(
    body: &[u8],
    properties: &'a AmqpProperties,
) -> Result<Request<'a>, BadRequest> {
    if !body.is_empty() {
        return Err(BadRequest::HasBody(body.len()));
    }
    let client_queue = reply_to(properties).ok_or(BadRequest::NoReplyTo)?;
    check_peer_queue(client_queue).map_err(BadRequest::BadReplyTo)?;
    let offer = read_offer(properties).map_err(BadRequest::BadHeader)?;
    let stream_id = read_stream_id(properties).map_err(BadRequest::BadHeader)?;
    if stream_id.is_some() && offer.is_none_or(|offer| offer.version < 3) {
        return Err(BadRequest::BadHeader(format!(
            "{STREAM_ID_HEADER} belongs to a version-3 request; this one offers version {}",
            offer.map_or(1, |offer| offer.version)
        )));
    }
    Ok(Request {
        client_queue,
        offer,
        stream_id,
        message_cost: read_message_cost(properties),
    })
}

/// The listener's choice of version for a request, or why it refuses it.
/// A version-3 request (`v3`: it named a stream id) gets version 3 or a
/// refusal; any other gets at most version 2, which works over the
/// stream's own queue the request names.
pub(crate) fn server_version(
    offer: Option<Offer>,
    pin: Option<ProtocolVersion>,
    v3: bool,
) -> Result<ProtocolVersion, String> {
    if v3 {
        return match pin {
            None | Some(ProtocolVersion::V3) => Ok(ProtocolVersion::V3),
            Some(pinned) => Err(format!(
                "this listener speaks protocol version {pinned}; the client asked for version 3"
            )),
        };
    }
    let offered = match offer {
        Some(offer) => ProtocolVersion::at_most(offer.version)
            .unwrap_or(ProtocolVersion::V1)
            .min(ProtocolVersion::V2),
        None => ProtocolVersion::V1,
    };
    match pin {
        None => Ok(offered),
        Some(ProtocolVersion::V1) => Ok(ProtocolVersion::V1),
        Some(pinned) if offered >= pinned => Ok(pinned),
        Some(pinned) => Err(format!(
            "this listener requires protocol version {pinned}; the client speaks {offered}"
        )),
    }
}

/// A checked SYN-ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accept<'a> {
    /// The server's queue, which the client sends to from then on.
    pub(crate) server_queue: &'a str,
    /// The server's version-2 answer, if it gave one.
    pub(crate) offer: Option<Offer>,
    /// The server's stream id (version 3).
    pub(crate) stream_id: Option<&'a str>,
    /// A version-2 answer's word that version-3 requests are welcome.
    pub(crate) upgrade: Option<u64>,
    /// The per-message cost the listener's stream counts (version 3).
    pub(crate) message_cost: Option<u64>,
}

/// Checks the first message on a client's queue (the SYN-ACK).
pub(crate) fn parse_accept<'a>(
    body: &[u8],
    properties: &'a AmqpProperties,
) -> Result<Accept<'a>, String> {
    if !body.is_empty() {
        return Err(format!(
            "the listener's answer must have an empty body, it has {} bytes",
            body.len()
        ));
    }
    let server_queue =
        reply_to(properties).ok_or("the listener's answer names no queue in reply_to")?;
    check_peer_queue(server_queue).map_err(|why| format!("the listener's answer: {why}"))?;
    let offer = read_offer(properties).map_err(|why| format!("the listener's answer: {why}"))?;
    let stream_id =
        read_stream_id(properties).map_err(|why| format!("the listener's answer: {why}"))?;
    Ok(Accept {
        server_queue,
        offer,
        stream_id,
        upgrade: read_upgrade(properties),
        message_cost: read_message_cost(properties),
    })
}

/// A SYN-ACK that names no stream, on a connection's queue: how a
/// listener that knows nothing of version 3 answers a version-3 SYN. It
/// answers the SYN's `reply_to`, which for version 3 is the client's
/// connection queue, and nothing in the answer says which stream's SYN
/// it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Untied<'a> {
    /// The queue of the stream the listener set up for the SYN.
    pub(crate) server_queue: &'a str,
    /// The version that stream speaks: 1 (a Go listener) or 2 (one of
    /// this crate's built before version 3, which took the SYN for a
    /// version-2 one).
    pub(crate) version: ProtocolVersion,
}

/// The answer that names no stream in a message on a connection's queue
/// without `correlation_id`, if it is one: an empty body, a `reply_to`
/// naming a queue named as a version-1 or version-2 stream's is
/// ([`is_stream_queue_name`](super::is_stream_queue_name): such a
/// listener names no other, so anything else is forged and is not
/// taken for a refusal), no frame type, and either no header of
/// ours (version 1) or a version-2 offer without a stream id or upgrade
/// (version 2 from a listener built before version 3). `None` for
/// anything else (a frame, a refusal, a version-3 answer, a version-1 FIN
/// without `reply_to`).
pub(crate) fn untied_answer<'a>(body: &[u8], properties: &'a AmqpProperties) -> Option<Untied<'a>> {
    if !body.is_empty() || properties.type_().is_some() {
        return None;
    }
    let has = |name: &str| {
        properties
            .headers()
            .as_ref()
            .is_some_and(|headers| headers.contains_key(name))
    };
    let version = if [
        VERSION_HEADER,
        WINDOW_HEADER,
        STREAM_ID_HEADER,
        UPGRADE_HEADER,
        MESSAGE_COST_HEADER,
    ]
    .iter()
    .all(|name| !has(name))
    {
        ProtocolVersion::V1
    } else if has(STREAM_ID_HEADER) || has(UPGRADE_HEADER) || has(MESSAGE_COST_HEADER) {
        return None;
    } else {
        match read_offer(properties) {
            Ok(Some(offer)) if offer.version == 2 => ProtocolVersion::V2,
            _ => return None,
        }
    };
    let server_queue = reply_to(properties)
        .filter(|queue| check_peer_queue(queue).is_ok() && super::is_stream_queue_name(queue))?;
    Some(Untied {
        server_queue,
        version,
    })
}

/// The client's version, given what it offered and what the listener
/// answered; an error when the answer does not fit the offer or the pin.
pub(crate) fn client_version(
    offered: Option<Offer>,
    answer: &Accept<'_>,
    pin: Option<ProtocolVersion>,
    v3: bool,
) -> Result<ProtocolVersion, String> {
    let answer_offer = answer.offer;
    if v3 {
        return match (answer_offer, answer.stream_id) {
            (Some(offer), Some(_)) if offer.version == 3 => Ok(ProtocolVersion::V3),
            (offer, _) => Err(format!(
                "the listener answered a version-3 request with protocol version {} \
                 and {} stream id",
                offer.map_or(1, |offer| offer.version),
                if answer.stream_id.is_some() {
                    "a"
                } else {
                    "no"
                }
            )),
        };
    }
    let version = match (offered, answer_offer) {
        (_, None) => ProtocolVersion::V1,
        (None, Some(answer)) => {
            return Err(format!(
                "the listener answered with protocol version {} to a version-1 request",
                answer.version
            ));
        }
        (Some(offered), Some(answer)) if answer.version > offered.version.min(2) => {
            return Err(format!(
                "the listener answered with protocol version {}, above the offered {}",
                answer.version,
                offered.version.min(2)
            ));
        }
        (Some(_), Some(answer)) => {
            ProtocolVersion::at_most(answer.version).unwrap_or(ProtocolVersion::V1)
        }
    };
    match pin {
        Some(pinned) if pinned != version => Err(format!(
            "protocol version {pinned} is required; the listener speaks {version}"
        )),
        _ => Ok(version),
    }
}

/// What the client offers: nothing when pinned to version 1.
pub(crate) fn client_offer(pin: Option<ProtocolVersion>, window: usize) -> Option<Offer> {
    match pin.unwrap_or(ProtocolVersion::LATEST) {
        ProtocolVersion::V1 => None,
        version => Some(Offer::ours(version, window)),
    }
}

/// What the listener answers with for the chosen version: the headers
/// only for version 2 and up (a version-3 answer adds its stream id, a
/// version-2 one from a listener that takes version 3 says so: see
/// [`Extra`]).
pub(crate) fn server_offer(version: ProtocolVersion, window: usize) -> Option<Offer> {
    (version >= ProtocolVersion::V2).then(|| Offer::ours(version, window))
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_3_offers_say_what_a_message_costs() {
        use crate::version::ProtocolVersion::{V2, V3};
        let v3 = handshake_properties("q", Some(Offer::ours(V3, 100)), Extra::default());
        assert_eq!(super::read_message_cost(&v3), Some(MESSAGE_COST));
        assert_eq!(parse_request(b"", &v3).unwrap().message_cost, Some(512));
        assert_eq!(parse_accept(b"", &v3).unwrap().message_cost, Some(512));
        let v2 = handshake_properties("q", Some(Offer::ours(V2, 100)), Extra::default());
        assert_eq!(super::read_message_cost(&v2), None);
        // Out of range: none.
        let mut headers = v3.headers().clone().unwrap();
        headers.insert(
            MESSAGE_COST_HEADER.to_string(),
            AmqpValue::LongLongInt(1 << 40),
        );
        assert_eq!(
            super::read_message_cost(&v3.clone().with_headers(headers)),
            None
        );
    }

    #[test]
    fn a_syn_expires_when_its_client_gives_up() {
        let in_5_s = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let ms: u64 = super::expiration(in_5_s).parse().unwrap();
        assert!((4_000..=5_000).contains(&ms), "{ms}");
        let past = std::time::Instant::now() - std::time::Duration::from_secs(1);
        assert_eq!(super::expiration(past), "1");
    }

    use super::*;
    use ProtocolVersion::{V1, V2, V3};

    const OFFER: Offer = Offer {
        version: 2,
        window: 1 << 20,
    };

    #[test]
    fn an_untied_answer_is_an_empty_syn_ack_naming_no_stream() {
        fn queue(props: &AmqpProperties) -> Option<&str> {
            untied_answer(b"", props).map(|u| u.server_queue)
        }
        let version = |props: &AmqpProperties| untied_answer(b"", props).map(|u| u.version);
        // Named as the broker names a Go listener's stream queue.
        const S: &str = "amq.gen-abc";
        let v1 = handshake_properties(S, None, Extra::default());
        assert_eq!(queue(&v1), Some(S));
        assert_eq!(version(&v1), Some(V1));
        // A refusal, a FIN without reply_to, a frame: not an answer.
        assert_eq!(untied_answer(b"no", &v1), None);
        assert_eq!(queue(&AmqpProperties::default()), None);
        let empty = AmqpProperties::default().with_reply_to(String::new());
        assert_eq!(queue(&empty), None);
        let reserved = AmqpProperties::default().with_reply_to("amq.rabbitmq.reply-to.a".into());
        assert_eq!(queue(&reserved), None);
        // No older listener's stream is named so: a forgery.
        for not_a_stream in ["ssh", "amqp-stream.conn.0", "amqp-stream.x"] {
            let forged = AmqpProperties::default().with_reply_to(not_a_stream.into());
            assert_eq!(queue(&forged), None, "{not_a_stream}");
        }
        let ours = AmqpProperties::default().with_reply_to(super::super::new_queue_name());
        assert!(queue(&ours).is_some());
        let typed = v1
            .clone()
            .with_type_(crate::protocol::frame::FIN.to_string());
        assert_eq!(queue(&typed), None);
        // A version-2 answer from a listener built before version 3.
        let v2 = handshake_properties(S, Some(OFFER), Extra::default());
        assert_eq!(queue(&v2), Some(S));
        assert_eq!(version(&v2), Some(V2));
        // Answers of version 2 with an upgrade, or 3 (stream id): ours,
        // which name their stream.
        let upgrade = Extra {
            stream_id: None,
            upgrade: Some(3),
        };
        assert_eq!(queue(&handshake_properties(S, Some(OFFER), upgrade)), None);
        let v3 = Offer {
            version: 3,
            ..OFFER
        };
        let extra = Extra {
            stream_id: Some("id"),
            upgrade: None,
        };
        assert_eq!(queue(&handshake_properties(S, Some(v3), extra)), None);
        assert_eq!(
            queue(&handshake_properties(S, Some(v3), Extra::default())),
            None
        );
        // Foreign headers do not hide an answer.
        let mut headers = FieldTable::new();
        headers.insert("x-other".to_string(), AmqpValue::Boolean(true));
        let foreign = v1.with_headers(headers);
        assert_eq!(queue(&foreign), Some(S));
    }

    #[test]
    fn offer_round_trips_through_headers() {
        let props = handshake_properties("q", Some(OFFER), Extra::default());
        assert_eq!(read_offer(&props), Ok(Some(OFFER)));
        assert_eq!(
            read_offer(&handshake_properties("q", None, Extra::default())),
            Ok(None)
        );
    }

    #[test]
    fn version_one_request_parses_without_an_offer() {
        let props = handshake_properties("client-q", None, Extra::default());
        let request = parse_request(b"", &props).unwrap();
        assert_eq!(request.client_queue, "client-q");
        assert_eq!(request.offer, None);
    }

    #[test]
    fn request_must_be_empty_with_reply_to() {
        let props = handshake_properties("client-q", Some(OFFER), Extra::default());
        assert_eq!(parse_request(b"x", &props), Err(BadRequest::HasBody(1)));
        assert_eq!(
            parse_request(b"", &AmqpProperties::default()),
            Err(BadRequest::NoReplyTo)
        );
        let empty = handshake_properties("", None, Extra::default());
        assert_eq!(parse_request(b"", &empty), Err(BadRequest::NoReplyTo));
        let reserved = handshake_properties("amq.rabbitmq.reply-to.a.b", None, Extra::default());
        assert!(matches!(
            parse_request(b"", &reserved),
            Err(BadRequest::BadReplyTo(why)) if why.contains("amq.rabbitmq.reply-to.a.b")
        ));
        let go_client = handshake_properties("amq.gen-abc", None, Extra::default());
        assert!(parse_request(b"", &go_client).is_ok());
        assert!(BadRequest::HasBody(3).to_string().contains("3 bytes"));
    }

    #[test]
    fn malformed_headers_are_bad_requests() {
        let with = |pairs: Vec<(&str, AmqpValue)>| {
            let mut headers = FieldTable::new();
            for (k, v) in pairs {
                headers.insert(k.to_string(), v);
            }
            handshake_properties("q", None, Extra::default()).with_headers(headers)
        };
        let text = with(vec![(VERSION_HEADER, AmqpValue::LongString("two".into()))]);
        assert!(matches!(
            parse_request(b"", &text),
            Err(BadRequest::BadHeader(_))
        ));
        let no_window = with(vec![(VERSION_HEADER, AmqpValue::LongLongInt(2))]);
        assert!(read_offer(&no_window).unwrap_err().contains("missing"));
        let tiny = with(vec![
            (VERSION_HEADER, AmqpValue::ShortShortUInt(2)),
            (WINDOW_HEADER, AmqpValue::LongInt(1)),
        ]);
        assert!(read_offer(&tiny).is_err());
        let negative = with(vec![(VERSION_HEADER, AmqpValue::LongLongInt(-2))]);
        assert!(read_offer(&negative).is_err());
        // Any integer type will do; version 1 in a header is version 1.
        let small = with(vec![
            (VERSION_HEADER, AmqpValue::ShortShortUInt(2)),
            (WINDOW_HEADER, AmqpValue::LongUInt(4096)),
        ]);
        assert_eq!(
            read_offer(&small),
            Ok(Some(Offer {
                version: 2,
                window: 4096
            }))
        );
        let one = with(vec![(VERSION_HEADER, AmqpValue::LongInt(1))]);
        assert_eq!(read_offer(&one), Ok(None));
    }

    #[test]
    fn listener_negotiates_down_and_honours_its_pin() {
        assert_eq!(server_version(Some(OFFER), None, false), Ok(V2));
        assert_eq!(server_version(None, None, false), Ok(V1));
        assert_eq!(server_version(Some(OFFER), Some(V1), false), Ok(V1));
        assert_eq!(server_version(Some(OFFER), Some(V2), false), Ok(V2));
        assert!(
            server_version(None, Some(V2), false)
                .unwrap_err()
                .contains("requires")
        );
        // A later client offering 3 gets the highest we speak.
        let three = Offer {
            version: 3,
            window: 10,
        };
        assert_eq!(server_version(Some(three), None, false), Ok(V2));
        assert_eq!(server_offer(V1, 100), None);
        assert_eq!(server_offer(V2, 100), Some(Offer::ours(V2, 100)));
    }

    /// A SYN-ACK with this offer and extras, parsed.
    fn answer(offer: Option<Offer>, extra: Extra<'_>) -> AmqpProperties {
        handshake_properties("server-q", offer, extra)
    }

    #[test]
    fn client_falls_back_and_checks_the_answer() {
        let version = |offered, props: &AmqpProperties, pin, v3| {
            let accept = parse_accept(b"", props).unwrap();
            client_version(offered, &accept, pin, v3)
        };
        let none = answer(None, Extra::default());
        let two = answer(Some(OFFER), Extra::default());
        assert_eq!(client_offer(Some(V1), 100), None);
        assert_eq!(client_offer(None, 100), Some(Offer::ours(V3, 100)));
        assert_eq!(version(Some(OFFER), &none, None, false), Ok(V1));
        assert_eq!(version(Some(OFFER), &two, None, false), Ok(V2));
        assert_eq!(version(None, &none, Some(V1), false), Ok(V1));
        assert!(version(None, &two, Some(V1), false).is_err());
        assert!(
            version(Some(OFFER), &none, Some(V2), false)
                .unwrap_err()
                .contains("required")
        );
        let three = Offer {
            version: 3,
            window: 10,
        };
        // Version 3 only for a version-3 request, with a stream id.
        let v3_answer = answer(
            Some(three),
            Extra {
                stream_id: Some("s1"),
                upgrade: None,
            },
        );
        assert!(version(Some(three), &v3_answer, None, false).is_err());
        assert_eq!(version(Some(three), &v3_answer, None, true), Ok(V3));
        assert!(version(Some(three), &two, None, true).is_err());
        assert!(
            version(
                Some(three),
                &answer(Some(three), Extra::default()),
                None,
                true
            )
            .is_err()
        );
    }

    #[test]
    fn version_3_requests_name_a_stream_and_get_3_or_a_refusal() {
        let three = Offer {
            version: 3,
            window: 10,
        };
        let extra = Extra {
            stream_id: Some("abc"),
            upgrade: None,
        };
        let props = handshake_properties("conn-q", Some(three), extra);
        let request = parse_request(b"", &props).unwrap();
        assert_eq!(request.stream_id, Some("abc"));
        assert_eq!(server_version(request.offer, None, true), Ok(V3));
        assert_eq!(server_version(request.offer, Some(V3), true), Ok(V3));
        assert!(server_version(request.offer, Some(V2), true).is_err());
        // A version-2 request never gets 3, and a listener pinned to 3
        // refuses it.
        assert_eq!(server_version(Some(three), None, false), Ok(V2));
        assert!(server_version(Some(three), Some(V3), false).is_err());
        // A stream id with an offer below 3, or a bad one, is malformed.
        let low = handshake_properties("q", Some(OFFER), extra);
        assert!(matches!(
            parse_request(b"", &low),
            Err(BadRequest::BadHeader(_))
        ));
        let long = "x".repeat(MAX_STREAM_ID + 1);
        let extra = Extra {
            stream_id: Some(&long),
            upgrade: None,
        };
        let props = handshake_properties("q", Some(three), extra);
        assert!(parse_request(b"", &props).is_err());
    }

    #[test]
    fn a_version_2_answer_can_say_version_3_is_welcome() {
        let extra = Extra {
            stream_id: None,
            upgrade: Some(3),
        };
        let accept_props = answer(Some(OFFER), extra);
        let accept = parse_accept(b"", &accept_props).unwrap();
        assert_eq!(accept.upgrade, Some(3));
        assert_eq!(accept.stream_id, None);
        let plain = answer(Some(OFFER), Extra::default());
        assert_eq!(parse_accept(b"", &plain).unwrap().upgrade, None);
    }

    #[test]
    fn accept_must_be_empty_with_reply_to() {
        let props = handshake_properties("server-q", Some(OFFER), Extra::default());
        let accept = parse_accept(b"", &props).unwrap();
        assert_eq!(accept.server_queue, "server-q");
        assert_eq!(accept.offer, Some(OFFER));
        assert!(
            parse_accept(b"hello", &props)
                .unwrap_err()
                .contains("5 bytes")
        );
        assert!(parse_accept(b"", &AmqpProperties::default()).is_err());
        let reserved =
            handshake_properties("amq.rabbitmq.reply-to.x", Some(OFFER), Extra::default());
        assert!(
            parse_accept(b"", &reserved)
                .unwrap_err()
                .contains("amq.rabbitmq.reply-to.x")
        );
        let go_listener = handshake_properties("amq.gen-abc", None, Extra::default());
        assert_eq!(
            parse_accept(b"", &go_listener).unwrap().server_queue,
            "amq.gen-abc"
        );
    }
}
