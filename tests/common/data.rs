//! Reproducible random data produced and checked as it streams, so that
//! gigabytes need no memory: a seeded source and a running digest; and a
//! counting pattern for tests that look at where a stream went wrong.

use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read, Write};

/// An endless reproducible stream of pseudo-random bytes (xorshift64*).
pub struct RandomSource {
    state: u64,
}

impl RandomSource {
    /// Distinct seeds below 2^63 give distinct streams.
    pub fn new(seed: u64) -> RandomSource {
        RandomSource {
            state: (seed << 1) | 1,
        }
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let word = self.next_word().to_le_bytes();
            tail.copy_from_slice(&word[..tail.len()]);
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A byte count and a 64-bit SipHash of everything that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub bytes: u64,
    pub hash: u64,
}

/// Writes `total` bytes from `seed` in `chunk`-sized writes; the digest
/// of what was written.
pub fn send_random(
    out: &mut impl Write,
    seed: u64,
    total: u64,
    chunk: usize,
) -> io::Result<Digest> {
    let mut source = RandomSource::new(seed);
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0; chunk];
    let mut sent = 0;
    while sent < total {
        let n = chunk.min((total - sent) as usize);
        source.fill(&mut buf[..n]);
        hasher.write(&buf[..n]);
        out.write_all(&buf[..n])?;
        sent += n as u64;
    }
    Ok(Digest {
        bytes: sent,
        hash: hasher.finish(),
    })
}

/// Reads to EOF; the digest of what arrived.
pub fn receive_digest(input: &mut impl Read) -> io::Result<Digest> {
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0; 256 * 1024];
    let mut bytes = 0;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(Digest {
                bytes,
                hash: hasher.finish(),
            });
        }
        hasher.write(&buf[..n]);
        bytes += n as u64;
    }
}

/// Sends `seed`'s bytes on a clone of `stream` (then shuts its write half)
/// while reading what the peer sends; returns (sent, received).
pub fn full_duplex(stream: amqp_stream::Stream, seed: u64, total: u64) -> (Digest, Digest) {
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let sent = send_random(&mut writer, seed, total, 64 * 1024).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        sent
    });
    let mut reader = stream;
    let received = receive_digest(&mut reader).unwrap();
    (sending.join().unwrap(), received)
}

/// Byte `i` of a counting pattern: any loss, repeat or reorder of a
/// stream carrying it shows as a wrong byte at a known place. The bytes
/// from offset `from`, `len` of them.
pub fn pattern(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64).map(|i| (i % 251) as u8).collect()
}

/// Checks that `got` is the [`pattern`] from 0.
pub fn assert_pattern(got: &[u8], what: &str) {
    if let Some(at) = got
        .iter()
        .enumerate()
        .position(|(i, b)| *b != (i as u64 % 251) as u8)
    {
        panic!("{what}: wrong byte at {at} of {}", got.len());
    }
}

/// Reads `stream` to the end: what arrived before the end, and how it
/// ended.
pub fn read_all(mut stream: impl Read) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => return (got, Err(err)),
        }
    }
}
