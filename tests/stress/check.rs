//! The checks of a stress schedule, once both ends are done.

use super::*;

/// Why `end` may have failed its peer's reads: its errors (not timeouts,
/// not writes refused after its own shutdown), whether its close was
/// abortive (it left data unread) and whether it died.
pub(crate) fn failure_evidence(end: &EndState, peer: &EndState) -> Vec<String> {
    let mut why: Vec<String> = end
        .errors
        .iter()
        .filter(|e| {
            !(e.kind == io::ErrorKind::BrokenPipe && e.after_own_shutdown && e.op == "write")
        })
        .map(|e| {
            format!(
                "{} failed at {:.3}s: {:?} {}",
                e.op,
                e.t.as_secs_f64(),
                e.kind,
                e.text
            )
        })
        .collect();
    if end.abortive {
        why.push("closed abortively (linger 0)".to_string());
    }
    if end.died.is_some() {
        why.push("died (its broker connection was cut)".to_string());
    }
    if let Some((_, read)) = end.dropped
        && read < peer.accepted
    {
        why.push(format!(
            "closed with possibly unread data (read {read} of {} accepted from the peer)",
            peer.accepted
        ));
    }
    why
}

pub(crate) fn check_direction(from: &End, to: &End, violations: &mut Vec<Violation>) {
    let (f, t) = (lock(&from.state), lock(&to.state));
    let accepted = f.accepted;
    let got = t.read_total;
    let dir = format!("{} -> {}", from.name, to.name);
    if got > accepted {
        violations.push(Violation {
            category: "excess",
            text: format!("{dir}: read {got} bytes, but writes accepted only {accepted}"),
        });
    }
    let evidence = failure_evidence(&f, &t);
    let Some((outcome, ended)) = t.reader.clone() else {
        violations.push(Violation {
            category: "test-panic",
            text: format!("{dir}: the reader never finished"),
        });
        return;
    };
    match &outcome {
        ReadEnd::Eof if got < accepted => {
            let shut = f
                .write_shut_called
                .map(|s| format!("{:.3}s", from.at(s).as_secs_f64()))
                .unwrap_or_else(|| "never".into());
            let dropped = f
                .dropped
                .map(|(d, _)| format!("{:.3}s", from.at(d).as_secs_f64()))
                .unwrap_or_else(|| "never".into());
            let lost_write = f.accepted_writes.describe(got).unwrap_or_default();
            violations.push(Violation {
                category: "clean-eof-after-prefix",
                text: format!(
                    "{dir}: CLEAN EOF after {got} of {accepted} accepted bytes ({} lost); the first lost byte came from {lost_write}; writer's shutdown(Write) called at {shut}, dropped at {dropped}; writer's own evidence of failure: {evidence:?}",
                    accepted - got
                ),
            });
        }
        // A reader whose own end died fails for that reason.
        ReadEnd::Error(kind, text) if evidence.is_empty() && t.died.is_none() => {
            violations.push(Violation {
                category: "spurious-error",
                text: format!(
                    "{dir}: the reader failed ({kind:?} {text}) after {got} of {accepted} bytes, though the writer saw no error and closed cleanly"
                ),
            });
        }
        ReadEnd::GaveUp | ReadEnd::LocalShutdown => {
            let closed = [f.write_shut_ok, f.dropped.map(|(d, _)| d)]
                .into_iter()
                .flatten()
                .min();
            if let Some(closed) = closed
                && ended > closed + END_GRACE
                && t.died.is_none()
            {
                violations.push(Violation {
                    category: "no-end",
                    text: format!(
                        "{dir}: the writer closed its direction at {:.3}s ({accepted} bytes), but the reader saw neither EOF nor an error by {:.3}s ({outcome:?}, {got} bytes read)",
                        from.at(closed).as_secs_f64(),
                        to.at(ended).as_secs_f64()
                    ),
                });
            }
        }
        _ => {}
    }
    // A healthy stream: the peer read everything and the FIN, saw no
    // error and closed cleanly; the writer had no trouble either.
    let healthy = matches!(outcome, ReadEnd::Eof)
        && got == accepted
        && t.errors.is_empty()
        && evidence
            .iter()
            .all(|e| e.starts_with("flush") || e.starts_with("shutdown"))
        && failure_evidence(&t, &f).is_empty();
    if healthy {
        for e in f.flushes_failed.iter() {
            violations.push(Violation {
                category: "flush-failed-on-healthy-stream",
                text: format!(
                    "{dir}: flush at {:.3}s failed ({:?} {}) {} though the peer read all {accepted} bytes and a clean EOF",
                    e.t.as_secs_f64(), e.kind, e.text,
                    if e.after_own_shutdown { "after this end's shutdown(Write)" } else { "before shutdown" }
                ),
            });
        }
        for e in f.shutdowns_failed.iter() {
            violations.push(Violation {
                category: "shutdown-failed-on-healthy-stream",
                text: format!(
                    "{dir}: shutdown at {:.3}s failed ({:?} {}) though the peer read all {accepted} bytes and a clean EOF",
                    e.t.as_secs_f64(), e.kind, e.text
                ),
            });
        }
    }
}
