//! The slow and stopped reader, for any protocol version: see
//! `tests/slow_reader.rs`.

use crate::common::data::{Digest, RandomSource, receive_digest};
use crate::common::summary::record;
use crate::common::{queue, queue_depth, resident_bytes, url};
use amqp_stream::{Connector, Listener, ProtocolVersion, Stream, StreamOptions};
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const CHUNK: usize = 64 * 1024;

/// How the reader behaves over time: reads at `rate` bytes per second
/// (0: not at all) for `lasting`.
struct Pace {
    rate: u64,
    lasting: Duration,
}

/// Slow, stopped, slow again: a minute in all.
const PACES: [Pace; 3] = [
    Pace {
        rate: 2 * MIB,
        lasting: Duration::from_secs(25),
    },
    Pace {
        rate: 0,
        lasting: Duration::from_secs(20),
    },
    Pace {
        rate: 2 * MIB,
        lasting: Duration::from_secs(15),
    },
];

/// A reader that follows [`PACES`], then reads at full speed.
struct PacedReader {
    stream: Stream,
    started: Instant,
    read: Arc<AtomicU64>,
}

impl PacedReader {
    /// How many bytes the paces allow by `elapsed`; `None` once they are
    /// over.
    fn allowed(elapsed: Duration) -> Option<u64> {
        let mut allowed = 0;
        let mut from = Duration::ZERO;
        for pace in &PACES {
            let within = elapsed.saturating_sub(from).min(pace.lasting);
            allowed += (pace.rate as f64 * within.as_secs_f64()) as u64;
            from += pace.lasting;
        }
        (elapsed < from).then_some(allowed)
    }
}

impl Read for PacedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let done = self.read.load(Ordering::SeqCst);
        let mut limit = buf.len();
        while let Some(allowed) = Self::allowed(self.started.elapsed()) {
            if allowed > done {
                limit = limit.min((allowed - done) as usize);
                break;
            }
            // Rate limiting, not synchronisation: wait for the pace.
            thread::sleep(Duration::from_millis(20));
        }
        let n = self.stream.read(&mut buf[..limit])?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

/// Writes random bytes as fast as the stream takes them until `stop`;
/// the digest of what was written.
fn write_until(mut stream: Stream, stop: &AtomicBool, written: &AtomicU64) -> Digest {
    let mut source = RandomSource::new(0x5100);
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0; CHUNK];
    let mut bytes = 0;
    while !stop.load(Ordering::SeqCst) {
        source.fill(&mut buf);
        hasher.write(&buf);
        stream.write_all(&buf).unwrap();
        bytes += CHUNK as u64;
        written.store(bytes, Ordering::SeqCst);
    }
    stream.shutdown(Shutdown::Write).unwrap();
    Digest {
        bytes,
        hash: hasher.finish(),
    }
}

/// The broker queue the reader's end of `stream` receives on: the
/// stream's own (versions 1 and 2) or its connection's (version 3, whose
/// local address is that queue and the stream's id after a `#`).
fn receiving_queue(stream: &Stream) -> String {
    let local = stream.local_addr().unwrap();
    let queue = local.queue();
    match stream.protocol_version() {
        ProtocolVersion::V3 => queue
            .split_once('#')
            .expect("a version-3 address names its stream after a '#'")
            .0
            .to_string(),
        _ => queue.to_string(),
    }
}

/// A writer on protocol `version` (2: a stream of its own; 3: pinned on a
/// connector, so on its connection's queue) to a reader on a listener
/// that takes any version, which reads slowly, stops for 20 s and reads
/// slowly again: the writer stays within a window of the reader, the
/// broker holds at most a window for the reader, memory stays flat and
/// every byte arrives in order.
pub fn a_slow_then_stopped_reader_for_a_minute_keeps_queue_and_memory_flat(
    version: ProtocolVersion,
) {
    let window = StreamOptions::new().get_window() as u64;
    let q = queue(&format!("slow-reader-{version}"));
    let listener = Listener::bind(&url(), &q).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = thread::spawn({
        let (q, stop, written) = (q.clone(), Arc::clone(&stop), Arc::clone(&written));
        move || {
            let stream = match version {
                ProtocolVersion::V3 => {
                    let pinned = StreamOptions::new().protocol_version(Some(version));
                    Connector::open_with(&url(), pinned)
                        .unwrap()
                        .connect(&q)
                        .unwrap()
                }
                _ => Stream::connect(&url(), &q).unwrap(),
            };
            assert_eq!(stream.protocol_version(), version);
            write_until(stream, &stop, &written)
        }
    });
    let (stream, _) = listener.accept().unwrap();
    assert_eq!(stream.protocol_version(), version);
    let reader_queue = receiving_queue(&stream);
    let read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let reader = thread::spawn({
        let read = Arc::clone(&read);
        move || {
            let mut paced = PacedReader {
                stream,
                started,
                read,
            };
            receive_digest(&mut paced).unwrap()
        }
    });

    // Watch the paces: how far the writer runs ahead of the reader, what
    // the broker holds for the reader, and this process's memory (both
    // ends live here), from a warmed-up start.
    let warm = Duration::from_secs(5);
    let mut memory_warm = None;
    let (mut most_ahead, mut most_queued, mut most_memory) = (0, 0, 0);
    let mut paced_bytes = 0;
    // How often the broker listed the reader's queue: a misnamed queue
    // would show as always empty.
    let mut queue_seen = 0;
    while PacedReader::allowed(started.elapsed()).is_some() {
        paced_bytes = read.load(Ordering::SeqCst);
        let ahead = written.load(Ordering::SeqCst).saturating_sub(paced_bytes);
        most_ahead = most_ahead.max(ahead);
        if let Some((_, bytes)) = queue_depth(&reader_queue) {
            most_queued = most_queued.max(bytes);
            queue_seen += 1;
        }
        let memory = resident_bytes();
        if started.elapsed() >= warm {
            memory_warm.get_or_insert(memory);
            most_memory = most_memory.max(memory);
        }
        thread::sleep(Duration::from_millis(250));
    }
    let memory_warm = memory_warm.expect("the paces outlast the warm-up");
    let memory_growth = most_memory.saturating_sub(memory_warm);
    stop.store(true, Ordering::SeqCst);
    let sent = writer.join().unwrap();
    let received = reader.join().unwrap();
    eprintln!(
        "paced: {} MiB read in {:?}, {} MiB in all; writer at most {} KiB ahead, queue at most {} KiB \
         (window {} KiB); memory +{} KiB after warm-up",
        paced_bytes / MIB,
        started.elapsed(),
        received.bytes / MIB,
        most_ahead / KIB,
        most_queued / KIB,
        window / KIB,
        memory_growth / KIB
    );
    assert_eq!(sent, received, "every byte arrives, in order");
    assert!(
        queue_seen > 0,
        "the broker never listed the reader's queue {reader_queue:?}"
    );
    // The writer may be a window ahead (its own buffer, the broker and
    // the reader's prefetch together), plus a write in flight and one
    // being read.
    assert!(
        most_ahead <= window + 2 * CHUNK as u64,
        "the writer ran {most_ahead} bytes ahead of the reader (window {window})"
    );
    assert!(
        most_queued <= window + CHUNK as u64,
        "the broker held {most_queued} bytes for the reader (window {window})"
    );
    assert!(
        memory_growth < 32 * MIB,
        "memory grew {memory_growth} bytes while the reader lagged"
    );
    assert!(
        paced_bytes >= 70 * MIB,
        "the paces should move about 80 MiB, moved {paced_bytes}"
    );
    record(
        &format!("slow and stopped reader (version {version})"),
        &format!("{} MiB paced over 60 s", paced_bytes / MIB),
        "reader at 2 MiB/s, stopped 20 s, 2 MiB/s",
        &format!(
            "writer at most {} KiB ahead; queue at most {} KiB (window {} KiB); memory +{} KiB",
            most_ahead / KIB,
            most_queued / KIB,
            window / KIB,
            memory_growth / KIB
        ),
        received.bytes,
    );
}
