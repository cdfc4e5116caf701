//! What each tunnel counts, and its rendering in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! Written by hand rather than with a metrics crate: a handful of
//! counters per tunnel, a set of tunnels that a reload changes (a crate's
//! registry would need every series unregistered by hand), and a text
//! format whose only subtle part, escaping label values, is tested below.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of the handshake latency histogram's buckets, in seconds.
const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The counters of one tunnel.
pub struct TunnelMetrics {
    kind: String,
    name: String,
    open: AtomicU64,
    total: AtomicU64,
    to_broker: Arc<AtomicU64>,
    from_broker: Arc<AtomicU64>,
    refused: Mutex<BTreeMap<String, u64>>,
    failed: Mutex<BTreeMap<String, u64>>,
    reconnects: Arc<AtomicU64>,
    handshakes: Mutex<Histogram>,
}

/// Observations in [`HANDSHAKE_BUCKETS`] (not cumulative), their sum and
/// count.
#[derive(Default)]
struct Histogram {
    buckets: [u64; HANDSHAKE_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl TunnelMetrics {
    /// All zero, for the tunnel `name` of `kind` (`serve`, `forward`, ...).
    pub fn new(kind: &str, name: &str) -> Arc<TunnelMetrics> {
        Arc::new(TunnelMetrics {
            kind: kind.to_string(),
            name: name.to_string(),
            open: AtomicU64::new(0),
            total: AtomicU64::new(0),
            to_broker: Arc::default(),
            from_broker: Arc::default(),
            refused: Mutex::default(),
            failed: Mutex::default(),
            reconnects: Arc::default(),
            handshakes: Mutex::default(),
        })
    }

    /// The tunnel's kind (`serve`, `forward`, ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The tunnel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `kind "name"`, for the logs.
    pub fn label(&self) -> String {
        format!("{} {:?}", self.kind, self.name)
    }

    /// A connection opened.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The counters of bytes read from the local TCP side (towards the
    /// broker) and written to it (from the broker).
    pub fn byte_counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (Arc::clone(&self.to_broker), Arc::clone(&self.from_broker))
    }

    /// The counter the tunnel's broker link adds its reconnections to.
    pub fn reconnect_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reconnects)
    }

    /// A connection turned away before any of its bytes went through.
    pub fn refused(&self, reason: &str) {
        count(&self.refused, reason);
    }

    /// A connection that ended abortively after its bytes began to flow.
    pub fn failed(&self, reason: &str) {
        count(&self.failed, reason);
    }

    /// How long a connection took to be set up end to end.
    pub fn handshake(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let mut histogram = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = HANDSHAKE_BUCKETS.iter().position(|&le| seconds <= le) {
            histogram.buckets[bucket] += 1;
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }
}

fn count(counts: &Mutex<BTreeMap<String, u64>>, reason: &str) {
    *counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(reason.to_string())
        .or_default() += 1;
}

/// The reason label for an I/O error: its kind in snake case
/// (`ConnectionRefused` is `connection_refused`).
pub fn reason(err: &io::Error) -> String {
    let mut out = String::new();
    for (i, c) in format!("{:?}", err.kind()).chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        }
    }
    out
}

/// Renders the metrics of `tunnels` in the Prometheus text format.
pub fn render(tunnels: &[Arc<TunnelMetrics>]) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "amqp_bridge_open_connections",
        "gauge",
        "Connections open now.",
        tunnels,
        |t, emit| emit(&[], t.open() as f64),
    );
    family(
        &mut out,
        "amqp_bridge_connections_total",
        "counter",
        "Connections accepted.",
        tunnels,
        |t, emit| emit(&[], t.total.load(Ordering::Relaxed) as f64),
    );
    family(
        &mut out,
        "amqp_bridge_bytes_total",
        "counter",
        "Bytes carried: read from the local TCP side towards the broker (to_broker), \
         written to it from the broker (from_broker).",
        tunnels,
        |t, emit| {
            emit(
                &[("direction", "to_broker")],
                t.to_broker.load(Ordering::Relaxed) as f64,
            );
            emit(
                &[("direction", "from_broker")],
                t.from_broker.load(Ordering::Relaxed) as f64,
            );
        },
    );
    for (name, help, counts) in [
        (
            "amqp_bridge_refused_connections_total",
            "Connections turned away before any byte went through, by reason.",
            (|t: &TunnelMetrics| &t.refused) as fn(&TunnelMetrics) -> &Mutex<_>,
        ),
        (
            "amqp_bridge_failed_connections_total",
            "Connections that ended abortively while carrying bytes, by reason.",
            |t: &TunnelMetrics| &t.failed,
        ),
    ] {
        family(&mut out, name, "counter", help, tunnels, |t, emit| {
            let counts = counts(t).lock().unwrap_or_else(PoisonError::into_inner);
            for (reason, n) in counts.iter() {
                emit(&[("reason", reason)], *n as f64);
            }
        });
    }
    family(
        &mut out,
        "amqp_bridge_broker_reconnects_total",
        "counter",
        "Times the tunnel's broker connection was lost and opened again.",
        tunnels,
        |t, emit| emit(&[], t.reconnects.load(Ordering::Relaxed) as f64),
    );
    histogram_family(&mut out, tunnels);
    out
}

/// Writes one metric family: its `HELP` and `TYPE` lines, then the series
/// `series` emits for each tunnel (with extra labels).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    tunnels: &[Arc<TunnelMetrics>],
    series: impl Fn(&TunnelMetrics, &mut dyn FnMut(&[(&str, &str)], f64)),
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for tunnel in tunnels {
        series(tunnel, &mut |extra, value| {
            sample(out, name, tunnel, extra, value)
        });
    }
}

fn histogram_family(out: &mut String, tunnels: &[Arc<TunnelMetrics>]) {
    let name = "amqp_bridge_handshake_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to set a connection up end to end: the stream's handshake \
         through the broker (forward, http) or the connection to the target (serve)."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for tunnel in tunnels {
        let histogram = tunnel
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut cumulative = 0;
        for (le, n) in HANDSHAKE_BUCKETS.iter().zip(histogram.buckets) {
            cumulative += n;
            let le = le.to_string();
            sample(
                out,
                &format!("{name}_bucket"),
                tunnel,
                &[("le", &le)],
                cumulative as f64,
            );
        }
        let count = histogram.count as f64;
        sample(
            out,
            &format!("{name}_bucket"),
            tunnel,
            &[("le", "+Inf")],
            count,
        );
        sample(out, &format!("{name}_sum"), tunnel, &[], histogram.sum);
        sample(out, &format!("{name}_count"), tunnel, &[], count);
    }
}

fn sample(
    out: &mut String,
    name: &str,
    tunnel: &TunnelMetrics,
    extra: &[(&str, &str)],
    value: f64,
) {
    let _ = write!(
        out,
        "{name}{{kind=\"{}\",tunnel=\"{}\"",
        escape(&tunnel.kind),
        escape(&tunnel.name)
    );
    for (label, value) in extra {
        let _ = write!(out, ",{label}=\"{}\"", escape(value));
    }
    let _ = writeln!(out, "}} {value}");
}

/// A label value as the text format wants it: backslash, double quote
/// and line feed escaped.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_answers_count_under_the_reasons_of_their_io_errors() {
        use crate::carry::target_request::Reply;
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
            io::ErrorKind::TimedOut,
        ] {
            let err = io::Error::from(kind);
            assert_eq!(Reply::for_connect_error(&err).reason(), reason(&err));
        }
        assert_eq!(Reply::NotAllowed.reason(), "not_allowed");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("two\nlines"), "two\\nlines");
        let tunnel = TunnelMetrics::new("serve", "db \"main\"\n");
        let text = render(&[tunnel]);
        assert!(
            text.contains(
                "amqp_bridge_open_connections{kind=\"serve\",tunnel=\"db \\\"main\\\"\\n\"} 0\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn counts_show_up_in_the_exposition() {
        let tunnel = TunnelMetrics::new("forward", "web");
        tunnel.opened();
        tunnel.opened();
        tunnel.closed();
        let (to_broker, from_broker) = tunnel.byte_counters();
        to_broker.fetch_add(1000, Ordering::Relaxed);
        from_broker.fetch_add(7, Ordering::Relaxed);
        tunnel.refused(&reason(&io::ErrorKind::ConnectionRefused.into()));
        tunnel.failed("connection_reset");
        tunnel.reconnect_counter().fetch_add(3, Ordering::Relaxed);
        tunnel.handshake(Duration::from_millis(3));
        tunnel.handshake(Duration::from_secs(20));
        let text = render(&[tunnel]);
        let labels = "kind=\"forward\",tunnel=\"web\"";
        for line in [
            format!("amqp_bridge_open_connections{{{labels}}} 1"),
            format!("amqp_bridge_connections_total{{{labels}}} 2"),
            format!("amqp_bridge_bytes_total{{{labels},direction=\"to_broker\"}} 1000"),
            format!("amqp_bridge_bytes_total{{{labels},direction=\"from_broker\"}} 7"),
            format!(
                "amqp_bridge_refused_connections_total{{{labels},reason=\"connection_refused\"}} 1"
            ),
            format!(
                "amqp_bridge_failed_connections_total{{{labels},reason=\"connection_reset\"}} 1"
            ),
            format!("amqp_bridge_broker_reconnects_total{{{labels}}} 3"),
            format!("amqp_bridge_handshake_seconds_bucket{{{labels},le=\"0.001\"}} 0"),
            format!("amqp_bridge_handshake_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("amqp_bridge_handshake_seconds_bucket{{{labels},le=\"10\"}} 1"),
            format!("amqp_bridge_handshake_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("amqp_bridge_handshake_seconds_count{{{labels}}} 2"),
            "# TYPE amqp_bridge_handshake_seconds histogram".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
