//! Seeded randomness and position-dependent data for the stress test.
//!
//! Every byte of a stress stream is a function of the stream's salt and
//! of the byte's offset in it, so a reader can check any chunk on its own
//! and any reorder, duplicate, gap or cross-talk between streams shows at
//! the first byte it touches.

use std::time::Duration;

/// SplitMix64's finaliser: a good 64-bit mix of `z`.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small seeded generator (SplitMix64): the same seed gives the same
/// schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    /// Log-uniform in `lo..=hi` (`lo >= 1`): small and large sizes alike.
    pub fn size(&mut self, lo: u64, hi: u64) -> u64 {
        let (lo, hi) = (lo.max(1), hi.max(1));
        if lo >= hi {
            return lo;
        }
        let (a, b) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
        let x = a + (b - a) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
        (x.exp() as u64).clamp(lo, hi)
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

/// The byte at `offset` of the stream with `salt`.
pub fn pattern_byte(salt: u64, offset: u64) -> u8 {
    mix(salt ^ (offset >> 3)).to_le_bytes()[(offset & 7) as usize]
}

/// Fills `out` with the stream's bytes from `offset` on.
pub fn fill_pattern(salt: u64, offset: u64, out: &mut [u8]) {
    let mut word_index = u64::MAX;
    let mut word = [0u8; 8];
    for (i, byte) in out.iter_mut().enumerate() {
        let at = offset + i as u64;
        if at >> 3 != word_index {
            word_index = at >> 3;
            word = mix(salt ^ word_index).to_le_bytes();
        }
        *byte = word[(at & 7) as usize];
    }
}

/// Where `got`, read at stream `offset`, first differs from the stream.
pub fn first_mismatch(salt: u64, offset: u64, got: &[u8]) -> Option<usize> {
    let mut expected = vec![0; got.len()];
    fill_pattern(salt, offset, &mut expected);
    expected.iter().zip(got).position(|(e, g)| e != g)
}

/// The stream offset below `limit` whose bytes `got` are (up to its first
/// 16), if any: where misplaced bytes really came from.
pub fn locate(salt: u64, got: &[u8], limit: u64) -> Option<u64> {
    let probe = &got[..got.len().min(16)];
    if probe.is_empty() {
        return None;
    }
    (0..limit).find(|&at| {
        probe
            .iter()
            .enumerate()
            .all(|(i, &b)| pattern_byte(salt, at + i as u64) == b)
    })
}
